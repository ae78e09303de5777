#!/usr/bin/env bash
# The Spark chain check (issue #16): two eddy gateways (one SIGKILLed and restarted) → file
# sinks with rotation → a landing directory of closed files → the PySpark fleet view
# (examples/spark/fleet_view.py) → compared with the same view computed from eddy's records
# (examples/spark/fleet_check.py). About 2 min on two cores; see BENCHMARKS.md.
#
# Needs Java 17+ and python3 with venv; pyspark is installed into $EDDY_SPARK_VENV
# (default ~/.cache/eddy-spark-venv) when missing, without asking. Uses the eddy binary
# $EDDY_BIN, else $CARGO_TARGET_DIR/release/eddy (built when missing).
# Usage: scripts/spark-chain.sh [--workdir DIR] [--feed-seconds N] [--summary-json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${EDDY_SPARK_VENV:-$HOME/.cache/eddy-spark-venv}
if ! command -v java >/dev/null 2>&1; then
  echo "spark-chain: java not found: install a JDK 17 or newer (apt-get install openjdk-17-jre-headless)." >&2
  exit 1
fi
if ! "$venv/bin/python" -c 'import pyspark' >/dev/null 2>&1; then
  echo "== spark-chain: installing pyspark into $venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet pyspark; } </dev/null; then
    echo "spark-chain: could not install pyspark into $venv (python3 -m venv, pip install pyspark)." >&2
    exit 1
  fi
fi

eddy=${EDDY_BIN:-${CARGO_TARGET_DIR:-target}/release/eddy}
if [ -z "${EDDY_BIN:-}" ]; then
  echo "== spark-chain: cargo build --release -p eddy --bin eddy"
  cargo build --release --locked -p eddy --bin eddy
fi
[ -x "$eddy" ] || { echo "spark-chain: no eddy binary at $eddy" >&2; exit 1; }

echo "== spark-chain: the Spark schema agrees with docs/records.schema.json"
python3 examples/spark/check_schema.py
echo "== spark-chain: two gateways, SIGKILL, landing zone, Spark, check"
exec python3 examples/spark/chain.py --eddy "$eddy" --python "$venv/bin/python" "$@"
