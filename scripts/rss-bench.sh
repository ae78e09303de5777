#!/usr/bin/env bash
# RSS of a running eddy, idle and at a gateway load: 1000 thermostats at 10 readings/s each
# (10,000 readings/s) through a TCP source with durable acks, a sliding window and a file sink.
#
#   scripts/rss-bench.sh [path/to/eddy]      (default target/release/eddy)
#   knobs: RSS_IDLE_SECS (30), RSS_LOAD_SECS (60), RSS_SENSORS (1000), RSS_RATE (10)
#
# Prints VmRSS every 5 s, idle then under load, VmHWM at the end, and the simulator's report.
set -euo pipefail
cd "$(dirname "$0")/.."
eddy=$(realpath "${1:-target/release/eddy}")
[ -x "$eddy" ] || { echo "rss-bench: build it first: cargo build --release -p eddy" >&2; exit 1; }
idle=${RSS_IDLE_SECS:-30} load=${RSS_LOAD_SECS:-60} sensors=${RSS_SENSORS:-1000} rate=${RSS_RATE:-10}
dir=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/eddy.toml" <<TOML
device_id = "bench"
data_dir = "$dir/data"
[api]
listen = "127.0.0.1:17879"
[[sources]]
kind = "tcp"
listen = "127.0.0.1:17878"
ack = true
[[windows]]
name = "temp_10s"
length = "10s"
slide = "5s"
lateness = "5s"
aggregates = ["count", "mean", "min", "max", "stddev"]
[[sinks]]
kind = "file"
path = "$dir/results.jsonl"
TOML
EDDY_LOG=warn "$eddy" run --config "$dir/eddy.toml" 2>"$dir/eddy.log" &
pid=$!
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
sleep 1
echo "binary: $eddy ($(stat -c %s "$eddy") bytes)"
printf 'idle VmRSS (MiB) every 5 s:'
for _ in $(seq 5 5 "$idle"); do sleep 5; printf ' %s' "$(rss)"; done; echo
"$eddy" simulate --tcp 127.0.0.1:17878 --sensors "$sensors" --rate "$rate" --ack \
  --count $((sensors * rate * load)) >"$dir/simulate.out" 2>&1 &
sim=$!
printf 'load (%d sensors x %d/s) VmRSS (MiB) every 5 s:' "$sensors" "$rate"
cpu0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
while kill -0 "$sim" 2>/dev/null; do sleep 5; printf ' %s' "$(rss)"; done; echo
cpu1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
wait "$sim" || true
cat "$dir/simulate.out"
echo "eddy CPU during the load: $(( (cpu1 - cpu0) / $(getconf CLK_TCK) )) s over ${load} s"
awk '/^VmHWM/ { printf "VmHWM (peak RSS): %.1f MiB\n", $2 / 1024 }' "/proc/$pid/status"
"$eddy" status --addr 127.0.0.1:17879 || true
