//! Configuration errors as they may be shown: they name the key, line and column, never a
//! value, since the value may be a password written in the wrong place.
//!
//! `toml` quotes the offending source line under its parse errors, and serde (through `toml`
//! and the `config` crate) quotes a string of the wrong type (`invalid type: string
//! "hunter2", expected u64`); both are taken out here.

/// `message` without the source snippet of a TOML parse error (`TOML parse error at line 3,
/// column 12` and the quoted line become `line 3, column 12: …`) and with every quoted string
/// value replaced by `a string`.
pub(crate) fn without_values(message: &str) -> String {
    hide_strings(&without_snippet(message))
}

/// The position and the explanation of a `toml` parse error, without the line it quotes.
fn without_snippet(message: &str) -> String {
    const HEADER: &str = "TOML parse error at ";
    let Some(start) = message.find(HEADER) else { return message.to_owned() };
    let (before, rest) = message.split_at(start);
    let mut lines = rest.lines();
    let position = lines.next().unwrap_or_default().trim_start_matches(HEADER).to_owned();
    // The snippet: `  |`, `3 | the line`, `  |   ^^^`; the explanation follows.
    let explanation: Vec<&str> = lines
        .filter(|line| {
            let trimmed = line.trim_start();
            let numbered = trimmed
                .split_once(" |")
                .is_some_and(|(number, _)| number.bytes().all(|b| b.is_ascii_digit()));
            !(trimmed.starts_with('|') || numbered || trimmed.is_empty())
        })
        .map(str::trim)
        .collect();
    format!("{before}{position}: {}", explanation.join("; "))
}

/// Replaces each `string "…"` (serde's and `config`'s way of quoting an unexpected string,
/// with Rust escapes) by `a string`.
fn hide_strings(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut shown = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(QUOTED) {
        shown.push_str(&rest[..start]);
        shown.push_str("a string");
        let after = &rest[start + QUOTED.len()..];
        let mut escaped = false;
        let mut end = after.len();
        for (idx, ch) in after.char_indices() {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = idx + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    shown.push_str(rest);
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_keeps_its_position_and_explanation_only() {
        let message = "/etc/eddy.toml: TOML parse error at line 3, column 12\n  |\n3 | password = \"hunter2\n  |            ^\ninvalid basic string\n in /etc/eddy.toml";
        assert_eq!(
            without_values(message),
            "/etc/eddy.toml: line 3, column 12: invalid basic string; in /etc/eddy.toml"
        );
    }

    #[test]
    fn a_quoted_string_value_is_hidden() {
        for (message, shown) in [
            (r#"invalid type: string "hunter2", expected u64"#, "invalid type: a string, expected u64"),
            (
                r#"invalid value: string "a\"b\\", expected x; string "c""#,
                "invalid value: a string, expected x; a string",
            ),
            (r#"cut string "abc"#, "cut a string"),
            ("unknown field `pasword`", "unknown field `pasword`"),
        ] {
            assert_eq!(without_values(message), shown, "{message}");
        }
    }
}
