#!/usr/bin/env bash
# bench-scaling.sh - how throughput and peak RSS grow with the work (issue #18, BENCHMARKS.md
# "Cost as the work grows"): the ingest_tcp bench (durable, acked, as fast as possible) at 100,
# 1,000, 10,000 and 100,000 sensors with 2 windows, and at 1, 2, 4 and 8 windows with 1,000
# sensors, EDDY_BENCH_ROUNDS times each (default 2, interleaved). Writes
# $CARGO_TARGET_DIR/bench-scaling/scaling.csv and docs/bench/scaling.svg (scripts/plot-scaling.py).
#
#   scripts/bench-scaling.sh            # ~6 min on 2 cores
#   EDDY_BENCH_COUNT=1000000 EDDY_BENCH_ROUNDS=3 scripts/bench-scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
out="${CARGO_TARGET_DIR:-target}/bench-scaling"
mkdir -p "$out"
csv="$out/scaling.csv"
rm -f "$csv"
cargo build --release -p eddy
rounds=${EDDY_BENCH_ROUNDS:-2}
export EDDY_BENCH_COUNT=${EDDY_BENCH_COUNT:-2000000} EDDY_BENCH_CSV="$csv"
point() { # point SENSORS WINDOWS
  echo "== $1 sensors, $2 windows"
  EDDY_BENCH_SENSORS=$1 EDDY_BENCH_WINDOWS=$2 cargo bench -q -p eddy-tests --bench ingest_tcp 2>&1 | grep '^ingest_tcp:'
}
for _ in $(seq "$rounds"); do
  for sensors in 100 1000 10000 100000; do point "$sensors" 2; done
  for windows in 1 4 8; do point 1000 "$windows"; done
done
mkdir -p docs/bench
python3 scripts/plot-scaling.py "$csv" docs/bench/scaling.svg
echo "== $csv"
cat "$csv"
