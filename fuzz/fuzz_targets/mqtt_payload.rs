//! Fuzz target: `decode_payload` on an arbitrary topic and payload, in every format, with and
//! without the sensor id from a topic segment. Every element of a JSON array and every
//! non-blank line of a line format becomes a reading or a counted rejection; the counters add
//! up; each reading satisfies the schema (`eddy_fuzz::check_parsed`).
#![no_main]

use std::sync::Arc;

use eddy_fuzz::{check_parsed, parser, NOW_MS};
use eddy_sensors::{
    decode_payload, Format, LineDecoder, ParsedLine, PayloadRules, SensorRegistry, SourceStats, TsPrecision,
};
use libfuzzer_sys::fuzz_target;

/// The input, laid out plainly so that seeds are easy to write: `[rules byte]TOPIC\0PAYLOAD`.
/// The rules byte: bits 0 and 1 the format (0 JSON, 1 CSV, else line protocol), bit 2 set:
/// the sensor id comes from topic segment (bits 3 and 4).
struct Input<'a> {
    rules: u8,
    topic: std::borrow::Cow<'a, str>,
    payload: &'a [u8],
}

impl<'a> Input<'a> {
    fn split(data: &'a [u8]) -> Input<'a> {
        let (rules, rest) = data.split_first().map_or((0, &[][..]), |(first, rest)| (*first, rest));
        let (topic, payload) = match rest.iter().position(|byte| *byte == 0) {
            Some(nul_idx) => (&rest[..nul_idx], &rest[nul_idx + 1..]),
            None => (&b"sensors/t-1"[..], rest),
        };
        Input { rules, topic: String::from_utf8_lossy(topic), payload }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::split(data);
    let format = match input.rules & 0b11 {
        0 => Format::Json,
        1 => Format::Csv,
        _ => Format::Influx(TsPrecision::Milliseconds),
    };
    let sensor_from_topic = (input.rules & 0b100 != 0).then_some(usize::from((input.rules >> 3) & 0b11));
    let rules = PayloadRules { format, sensor_from_topic, max_payload_bytes: 2048 };
    let parser = parser(format, 512);
    let stats = Arc::new(SourceStats::new("fuzz"));
    let mut decoder = LineDecoder::new(parser.clone(), Arc::new(SensorRegistry::new(8)), stats.clone());
    let mut readings = Vec::new();
    let mut rejections = Vec::new();
    decode_payload(
        &mut decoder,
        rules,
        &input.topic,
        input.payload,
        NOW_MS,
        &mut readings,
        &mut |rejection| rejections.push(rejection),
    );

    let snapshot = stats.snapshot();
    let n_readings = u64::try_from(readings.len()).expect("fits");
    let n_rejections = u64::try_from(rejections.len()).expect("fits");
    assert_eq!(snapshot.accepted, n_readings, "every reading is counted as accepted");
    assert_eq!(snapshot.rejected_total(), n_rejections, "every rejection is counted");
    assert_eq!(snapshot.received, n_readings + n_rejections, "received = accepted + rejected");

    let topic_sensor = sensor_from_topic.and_then(|segment| input.topic.split('/').nth(segment));
    for reading in &readings {
        let parsed = ParsedLine {
            sensor: reading.sensor.to_string(),
            ts_ms: reading.ts_ms,
            values: reading.values.clone(),
            tags: reading.tags.clone(),
        };
        check_parsed(&parser, &parsed);
        if let (Format::Json, Some(sensor)) = (format, topic_sensor) {
            assert_eq!(&*reading.sensor, sensor, "the sensor id must come from the topic");
        }
    }

    if input.payload.len() > rules.max_payload_bytes
        || (sensor_from_topic.is_some() && topic_sensor.is_none())
    {
        assert_eq!((readings.len(), rejections.len()), (0, 1), "one rejection for the whole message");
        return;
    }
    // How many items the payload holds: the elements of a JSON array, one JSON value, or the
    // non-blank lines (at least one) of a line format.
    let n_items = match format {
        Format::Json if input.payload.trim_ascii_start().starts_with(b"[") => {
            // Not an array: one `bad_syntax` rejection for the message.
            serde_json_len(input.payload).unwrap_or(1)
        }
        Format::Json => 1,
        _ => {
            let n_lines = input
                .payload
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .count();
            n_lines.max(1)
        }
    };
    assert_eq!(readings.len() + rejections.len(), n_items, "each item is a reading or a rejection");
});

/// The number of elements of a JSON array, `None` if `payload` is not one.
fn serde_json_len(payload: &[u8]) -> Option<usize> {
    serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(payload).ok().map(|elements| elements.len())
}
