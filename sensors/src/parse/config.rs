//! The `format` and `precision` keys every line-reading source has, into a [`Format`].

use eddy_common::{invalid, KeyError};

use crate::parse::{Format, TsPrecision};

/// `format` (default `json`) and `precision` (only with `influx`, default `ns`) of the source
/// at `key`.
pub(crate) fn format_from_keys(
    key: &str,
    format: Option<&str>,
    precision: Option<&str>,
) -> Result<Format, KeyError> {
    let format = match format.unwrap_or("json") {
        "json" => Format::Json,
        "csv" => Format::Csv,
        "influx" => Format::Influx(match precision.unwrap_or("ns") {
            "ns" => TsPrecision::Nanoseconds,
            "us" => TsPrecision::Microseconds,
            "ms" => TsPrecision::Milliseconds,
            "s" => TsPrecision::Seconds,
            other => {
                return Err(invalid(
                    format!("{key}.precision"),
                    format!("`{other}` is not one of: ns, us, ms, s"),
                ))
            }
        }),
        other => {
            return Err(invalid(
                format!("{key}.format"),
                format!("`{other}` is not one of: json, csv, influx"),
            ))
        }
    };
    if precision.is_some() && !matches!(format, Format::Influx(_)) {
        return Err(invalid(format!("{key}.precision"), "applies only to format = \"influx\""));
    }
    Ok(format)
}
