//! Decodes an MQTT message into readings: one reading, a JSON array of readings, or (CSV and
//! line protocol) one reading per line; the sensor id may come from a topic segment.

use serde_json::value::RawValue;

use crate::parse::{Format, LineDecoder};
use crate::reading::Reading;
use crate::reject::{RejectReason, Rejection};

/// How payloads of one source are read.
#[derive(Debug, Clone, Copy)]
pub struct PayloadRules {
    /// The format of the readings in a payload.
    pub format: Format,
    /// The topic segment (0-based) holding the sensor id, if the sensor id comes from it.
    pub sensor_from_topic: Option<usize>,
    /// A longer payload is one `message_too_large` rejection.
    pub max_payload_bytes: usize,
}

/// Decodes `payload` of a message on `topic`: accepted readings go to `readings`, each
/// rejection (already counted by the decoder) to `rejected`.
///
/// Public for the fuzz targets (`fuzz/`); the MQTT source calls it on every message.
pub fn decode_payload(
    decoder: &mut LineDecoder,
    rules: PayloadRules,
    topic: &str,
    payload: &[u8],
    now_ms: i64,
    readings: &mut Vec<Reading>,
    rejected: &mut impl FnMut(Rejection),
) {
    if payload.len() > rules.max_payload_bytes {
        decoder.reject_unparsed(RejectReason::MessageTooLarge);
        rejected(Rejection::new(
            RejectReason::MessageTooLarge,
            format!("payload of {} bytes, the limit is {}", payload.len(), rules.max_payload_bytes),
        ));
        return;
    }
    let sensor = match rules.sensor_from_topic {
        None => None,
        Some(segment_idx) => match topic.split('/').nth(segment_idx) {
            Some(segment) => Some(segment),
            None => {
                decoder.reject_unparsed(RejectReason::MissingSensor);
                rejected(Rejection::new(
                    RejectReason::MissingSensor,
                    format!("topic `{topic}` has no segment {segment_idx} for the sensor id"),
                ));
                return;
            }
        },
    };
    let mut decode_one =
        |decoder: &mut LineDecoder, line: &[u8]| match decoder.decode_for_sensor(line, sensor, now_ms) {
            Ok(reading) => readings.push(reading),
            Err(rejection) => rejected(rejection),
        };
    match rules.format {
        Format::Json if payload.trim_ascii_start().starts_with(b"[") => {
            match serde_json::from_slice::<Vec<&RawValue>>(payload) {
                Ok(elements) => {
                    for element in elements {
                        decode_one(decoder, element.get().as_bytes());
                    }
                }
                Err(error) => {
                    decoder.reject_unparsed(RejectReason::BadSyntax);
                    rejected(Rejection::new(RejectReason::BadSyntax, format!("JSON array: {error}")));
                }
            }
        }
        // One JSON value, which may span lines.
        Format::Json => decode_one(decoder, payload),
        Format::Csv | Format::Influx(_) => {
            let mut n_lines = 0;
            for line in payload.split(|byte| *byte == b'\n') {
                if line.iter().all(|byte| byte.is_ascii_whitespace()) {
                    continue;
                }
                n_lines += 1;
                decode_one(decoder, line);
            }
            if n_lines == 0 {
                decode_one(decoder, payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::parse::{Limits, LineParser, TsPrecision};
    use crate::registry::SensorRegistry;
    use crate::schema::Schema;
    use crate::stats::SourceStats;

    /// Decodes `payload` on `topic`: (sensor, ts) of the readings, reasons of the rejections.
    fn check(
        format: Format,
        sensor_from_topic: Option<usize>,
        topic: &str,
        payload: &[u8],
        expected_readings: &[(&str, i64)],
        expected_rejections: &[RejectReason],
    ) {
        let parser = Arc::new(LineParser::new(format, Arc::new(Schema::thermostat()), Limits::default()));
        let stats = Arc::new(SourceStats::new("mqtt-0"));
        let mut decoder = LineDecoder::new(parser, Arc::new(SensorRegistry::new(100)), stats.clone());
        let rules = PayloadRules { format, sensor_from_topic, max_payload_bytes: 1024 };
        let mut readings = Vec::new();
        let mut rejections = Vec::new();
        let now_ms = 1_700_000_100_000;
        decode_payload(&mut decoder, rules, topic, payload, now_ms, &mut readings, &mut |rejection| {
            rejections.push(rejection.reason)
        });
        let got: Vec<(&str, i64)> =
            readings.iter().map(|reading| (&*reading.sensor, reading.ts_ms)).collect();
        assert_eq!(got, expected_readings);
        assert_eq!(rejections, expected_rejections);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.received, snapshot.accepted + snapshot.rejected_total());
        assert_eq!(snapshot.accepted, u64::try_from(readings.len()).unwrap());
    }

    #[test]
    fn payload_holds_one_reading_or_an_array_of_readings() {
        let one = br#"{"sensor":"t-1","ts":1700000000000,"temp_c":20.5}"#;
        check(Format::Json, None, "a/b", one, &[("t-1", 1_700_000_000_000)], &[]);
        let pretty = b"{\n  \"sensor\": \"t-1\",\n  \"ts\": 1700000000000,\n  \"temp_c\": 20.5\n}\n";
        check(Format::Json, None, "a/b", pretty, &[("t-1", 1_700_000_000_000)], &[]);
        let array = br#" [{"sensor":"t-1","ts":1700000000000,"temp_c":20.5},
                          {"sensor":"t-2","ts":1700000000001,"temp_c":999},
                          {"sensor":"t-3","ts":1700000000002,"temp_c":21}]"#;
        check(
            Format::Json,
            None,
            "a/b",
            array,
            &[("t-1", 1_700_000_000_000), ("t-3", 1_700_000_000_002)],
            &[RejectReason::OutOfRange],
        );
        check(Format::Json, None, "a/b", b"[{\"sensor\":", &[], &[RejectReason::BadSyntax]);
        check(Format::Json, None, "a/b", b"\xff", &[], &[RejectReason::BadUtf8]);
        check(Format::Json, None, "a/b", &[b' '; 2000], &[], &[RejectReason::MessageTooLarge]);
    }

    #[test]
    fn sensor_id_comes_from_the_topic_segment_when_configured() {
        let payload = br#"{"sensor":"ignored","ts":1700000000000,"temp_c":20.5}"#;
        check(Format::Json, Some(1), "sensors/t-9/reading", payload, &[("t-9", 1_700_000_000_000)], &[]);
        let without_sensor = br#"[{"ts":1700000000000,"temp_c":20.5},{"ts":1700000000001,"temp_c":20.6}]"#;
        check(
            Format::Json,
            Some(1),
            "sensors/t-9/reading",
            without_sensor,
            &[("t-9", 1_700_000_000_000), ("t-9", 1_700_000_000_001)],
            &[],
        );
        check(Format::Json, Some(5), "sensors/t-9", payload, &[], &[RejectReason::MissingSensor]);
        check(Format::Json, Some(1), "sensors//reading", payload, &[], &[RejectReason::BadSensor]);
    }

    #[test]
    fn line_formats_take_one_reading_per_line() {
        let influx = b"thermostat,sensor=t-1 temp_c=21.5 1700000000000\nthermostat,sensor=t-2 temp_c=x 1\n";
        check(
            Format::Influx(TsPrecision::Milliseconds),
            None,
            "x",
            influx,
            &[("t-1", 1_700_000_000_000)],
            &[RejectReason::BadSyntax],
        );
        check(Format::Csv, None, "x", b"t-1,1700000000000,21.5\r\n", &[("t-1", 1_700_000_000_000)], &[]);
    }
}
