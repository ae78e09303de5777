//! Fuzz target: arbitrary bytes as one JSON line through `LineParser::parse` and a
//! `LineDecoder`; accepted readings must satisfy the schema and limits (`eddy_fuzz::check_line`).
#![no_main]

use eddy_sensors::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    eddy_fuzz::fuzz_format(Format::Json, line);
});
