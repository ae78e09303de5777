//! Benchmark: JSON line parsing on one core, thermostat lines as `eddy simulate` writes them,
//! through `LineParser::parse` (the hand-written fast path for the common line) and through
//! serde_json alone (`parse_json_by_serde`, what every line took before), alternating.
//!
//! `cargo bench -p eddy-sensors --bench parse`
//! Environment: `EDDY_BENCH_LINES` (lines per run, default 2,000,000), `EDDY_BENCH_RUNS`
//! (default 3), `EDDY_BENCH_ONLY` (`fast` or `serde`: that path alone, e.g. under valgrind).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use eddy_sensors::{Format, Limits, LineParser, Schema};

const NOW_MS: i64 = 1_700_000_100_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo test` runs benches without `--bench`: keep that quick.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let n_lines = env_usize("EDDY_BENCH_LINES", if quick { 10_000 } else { 2_000_000 });
    let runs = env_usize("EDDY_BENCH_RUNS", if quick { 1 } else { 3 });
    // `fast` or `serde` runs that one alone (for valgrind's counts of one path).
    let only = std::env::var("EDDY_BENCH_ONLY").ok();
    let parser = LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default());
    let modes = ["heat", "cool", "off", "auto"];
    let lines: Vec<String> = (0..1000u32)
        .map(|idx| {
            format!(
                "{{\"sensor\":\"t-{idx:03}\",\"ts\":{},\"temp_c\":{:.2},\"humidity\":{:.1},\"setpoint_c\":{:.1},\"mode\":\"{}\"}}",
                1_700_000_000_000u64 + u64::from(idx) * 37,
                18.0 + f64::from(idx % 700) / 100.0,
                30.0 + f64::from(idx % 400) / 10.0,
                20.0 + f64::from(idx % 10) / 2.0,
                modes[idx as usize % modes.len()],
            )
        })
        .collect();
    for run in 1..=runs {
        for (name, fast) in [("fast path", true), ("serde_json", false)] {
            if only.as_deref().is_some_and(|only| only != if fast { "fast" } else { "serde" }) {
                continue;
            }
            let started = Instant::now();
            let mut accepted = 0usize;
            for line in lines.iter().cycle().take(n_lines) {
                let parsed = if fast {
                    parser.parse(black_box(line.as_bytes()), NOW_MS)
                } else {
                    parser.parse_json_by_serde(black_box(line.as_bytes()), NOW_MS)
                };
                accepted += usize::from(black_box(parsed).is_ok());
            }
            let elapsed = started.elapsed();
            assert_eq!(accepted, n_lines, "every line is accepted");
            println!(
                "parse: run {run}, {name}: {n_lines} lines in {:.3} s, {:.0} ns per line, {:.2} M lines/s",
                elapsed.as_secs_f64(),
                elapsed.as_nanos() as f64 / n_lines as f64,
                n_lines as f64 / elapsed.as_secs_f64() / 1e6
            );
        }
    }
}
