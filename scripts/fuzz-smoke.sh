#!/usr/bin/env bash
# A short run of every fuzz target (fuzz/, cargo-fuzz on the nightly toolchain): each for
# FUZZ_SECONDS (default 20) from the committed corpus, one libFuzzer process at a time.
# Fails on any crash, panic, timeout or leak, and fails (does not skip) when the nightly
# toolchain cannot be had. New inputs go to a temporary directory: the committed corpus is
# only read. scripts/test-all.sh calls this; the long runs are in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
targets=(parse_json parse_csv parse_influx tcp_framing session_lines mqtt_payload config_loader)

if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo not found. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi
# libFuzzer needs the nightly toolchain (-Z sanitizer flags).
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "== installing the nightly toolchain (rustup)"
  if ! rustup toolchain install nightly --profile minimal </dev/null; then
    echo "fuzz-smoke: the nightly Rust toolchain is not installed and could not be installed;" >&2
    echo "fuzz-smoke: the fuzz targets need it (rustup toolchain install nightly). Failing, not skipping." >&2
    exit 1
  fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install)"
  if ! cargo install cargo-fuzz --locked </dev/null; then
    echo "fuzz-smoke: could not install cargo-fuzz (cargo install cargo-fuzz --locked). Failing, not skipping." >&2
    exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "== cargo fuzz build (all targets)"
(cd fuzz && cargo +nightly fuzz build </dev/null)
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "$work/$target"
  # The first directory receives new inputs; the committed corpus is read only.
  if ! (cd fuzz && cargo +nightly fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        </dev/null >"$work/$target.log" 2>&1); then
    tail -n 60 "$work/$target.log" >&2
    echo "fuzz-smoke: $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$work/$target.log" | tail -n 1 || true
done
echo "fuzz-smoke: ${#targets[@]} targets, ${seconds}s each, no crash ($(($(date +%s) - start))s in all)"
