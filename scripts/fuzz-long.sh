#!/usr/bin/env bash
# The long fuzz runs of BENCHMARKS.md ("Fuzzing"): each target given (default: all, most
# important first) for FUZZ_SECONDS (default 600), one after another, one libFuzzer process
# at a time. Each run starts from the committed corpus copied to $FUZZ_WORK/corpus/<target>
# and logs to $FUZZ_WORK/<target>.log; a summary line per target goes to
# $FUZZ_WORK/summary.txt (executions, exec/s, cov, ft, corpus units, crashes). Shrinking the
# grown corpus back into fuzz/corpus is a separate step (`cargo fuzz cmin`, BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-600}
work=${FUZZ_WORK:-/tmp/eddy-fuzz-long}
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(parse_json parse_csv parse_influx tcp_framing session_lines mqtt_payload config_loader)
fi
mkdir -p "$work/corpus"
for target in "${targets[@]}"; do
  mkdir -p "$work/corpus/$target"
  cp -n fuzz/corpus/"$target"/* "$work/corpus/$target/" 2>/dev/null
  log="$work/$target.log"
  echo "$(date -u +%FT%TZ) start $target ${seconds}s" >>"$work/summary.txt"
  (cd fuzz && cargo +nightly fuzz run "$target" "$work/corpus/$target" -- \
     -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
     </dev/null >"$log" 2>&1)
  status=$?
  execs=$(grep -oE '^stat::number_of_executed_units: +[0-9]+' "$log" | grep -oE '[0-9]+$')
  rate=$(grep -oE '^stat::average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$')
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
  units=$(find "$work/corpus/$target" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$target" -type f 2>/dev/null | wc -l)
  echo "$(date -u +%FT%TZ) $target exit=$status seconds=$seconds execs=$execs exec_per_s=$rate cov=$cov ft=$ft corpus_units=$units artifacts=$crashes" \
    >>"$work/summary.txt"
done
