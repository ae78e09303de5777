#!/usr/bin/env bash
# bench-side-by-side.sh - one bench, this build beside an earlier one, alternating (issue #18:
# "each measured by a bench you ship, in one run beside the previous build").
#
#   scripts/bench-side-by-side.sh BASE BENCH [ROUNDS]
#     BASE   a git revision (built once into $CARGO_TARGET_DIR/side-by-side/BASE-HASH/eddy) or
#            the path of an eddy binary
#     BENCH  a bench of eddy-tests (ingest_tcp, latency, mqtt_windows, recovery, ...)
#     ROUNDS rounds of base then this build (default 3)
#   e.g. scripts/bench-side-by-side.sh 5ee9cdf ingest_tcp 3
# The bench's own EDDY_BENCH_* knobs pass through. Each run's output lines are prefixed with
# `base` or `this`.
set -euo pipefail
cd "$(dirname "$0")/.."
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
[ $# -ge 2 ] || { sed -n 2,13p "$0" >&2; exit 2; }
base=$1 bench=$2 rounds=${3:-3}
target="${CARGO_TARGET_DIR:-$PWD/target}"
case $target in /*) ;; *) target="$PWD/$target" ;; esac
if [ -f "$base" ]; then
  base_bin=$(realpath "$base")
else
  rev=$(git rev-parse --short "$base^{commit}")
  base_bin="$target/side-by-side/$rev/eddy"
  if [ ! -x "$base_bin" ]; then
    tree="$target/side-by-side/$rev-src"
    rm -rf "$tree"
    mkdir -p "$tree"
    git archive "$rev" | tar -x -C "$tree"
    echo "== building eddy at $rev (release) in $tree"
    (cd "$tree" && CARGO_TARGET_DIR="$target/side-by-side/target" cargo build --release --locked -p eddy)
    mkdir -p "$(dirname "$base_bin")"
    cp "$target/side-by-side/target/release/eddy" "$base_bin"
  fi
fi
cargo build --release -p eddy
this_bin="$target/release/eddy"
# The bench binary itself is built once; EDDY_BIN picks the eddy it drives.
cargo bench --no-run -p eddy-tests --bench "$bench"
for round in $(seq "$rounds"); do
  for which in base this; do
    bin=$base_bin
    [ "$which" = this ] && bin=$this_bin
    echo "== round $round: $which ($bin)"
    EDDY_BIN=$bin cargo bench -q -p eddy-tests --bench "$bench" 2>&1 | grep -v '^$' | sed "s/^/$which /"
  done
done
