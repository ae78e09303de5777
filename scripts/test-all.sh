#!/usr/bin/env bash
# Runs eddy's whole test suite: formatting, lints, unit, property and end-to-end tests, and a
# short run of each fuzz target.
# CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo from rustup lives in ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "test-all: cargo not found. Install Rust (https://rustup.rs), then run this again." >&2
  exit 1
fi

# Tools the tests start themselves: mosquitto (MQTT sources and hub uplinks) and its
# mosquitto_pub client (raw payloads), socat (serial pseudo-terminals), openssl (a test CA for
# TLS), strace (the flash-wear test counts eddy's write and sync calls), libfaketime (the clock
# tests move eddy's wall clock; perl's Time::HiRes probes what it fakes), fusermount3 when not
# root (the power-cut file system). Installed with apt-get when missing, without asking (CI has
# no standard input).
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v strace >/dev/null 2>&1 || need+=(strace)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
perl -MTime::HiRes -e 1 >/dev/null 2>&1 || need+=(perl)
# The Spark chain runs pyspark, which needs a Java 17+ runtime.
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
# python3 with venv: the Kafka tests' independent client (confluent-kafka, below).
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The power-cut test mounts a FUSE file system: as root with mount(2), as another user through
# fusermount3 (package fuse3).
[ "$(id -u)" -eq 0 ] || command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (apt-get)"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"; } </dev/null; then
    echo "test-all: could not install ${need[*]} with apt-get; install them and run this again." >&2
    exit 1
  fi
fi

# The Kafka uplink tests start tansu, a Kafka-protocol broker in Rust (Apache Kafka's jars cannot
# be fetched here), and read what eddy wrote with an independent client: librdkafka through
# PyPI's confluent-kafka, in a venv. Building tansu takes about 10 minutes on 2 cores, once.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$cargo_bin/tansu" ]; then
  echo "== installing tansu (cargo install; about 10 minutes, once)"
  cargo install tansu --locked --features dynostore </dev/null
fi
venv="$HOME/.cache/eddy-test-venv"
if ! "$venv/bin/python" -c 'import confluent_kafka' >/dev/null 2>&1; then
  echo "== installing confluent-kafka in $venv (pip)"
  python3 -m venv "$venv" </dev/null && "$venv/bin/pip" install -q confluent-kafka </dev/null || {
    echo "test-all: could not install confluent-kafka into $venv; is python3-venv installed?" >&2
    exit 1
  }
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests run the real binary, with its test switches)"
cargo build --locked -p eddy --bin eddy --features test-switches
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The .deb in a container booting a real systemd: install, READY, SIGKILL and restart with
# the data intact, reload, upgrade, purge (about 15 s once the container's root file system is
# cached; building it the first time takes about 2.5 min of debootstrap).
echo "== systemd-nspawn: the package under a real systemd (scripts/nspawn-test.sh)"
./scripts/nspawn-test.sh 2>&1 | tee -a "$log"
nspawn_status=${PIPESTATUS[0]}
[ "$nspawn_status" -eq 0 ] || [ "$status" -ne 0 ] || status=$nspawn_status
# Every fuzz target for 20 s from the committed corpus (nightly and cargo-fuzz, installed if
# missing; no nightly is a failure, not a skip). About 2.5 min once built; the first build of
# the instrumented targets takes 5 to 10 min on two cores.
echo "== fuzz smoke run (scripts/fuzz-smoke.sh)"
./scripts/fuzz-smoke.sh 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
[ "$fuzz_status" -eq 0 ] || [ "$status" -ne 0 ] || status=$fuzz_status
# The Spark chain (#16): two gateways, one SIGKILLed, their closed files read by the PySpark
# fleet view, compared with eddy's records. About 2 min (Spark's start-up is ~30 s of it);
# installs pyspark into ~/.cache/eddy-spark-venv when missing (about 450 MB, once). Uses the
# debug binary built above: the chain feeds 16 readings/s per gateway, speed does not matter.
echo "== Spark chain (scripts/spark-chain.sh)"
EDDY_BIN="${CARGO_TARGET_DIR:-target}/debug/eddy" ./scripts/spark-chain.sh 2>&1 | tee -a "$log"
spark_status=${PIPESTATUS[0]}
if [ "$spark_status" -ne 0 ]; then
  echo "test-all: the Spark chain check failed (scripts/spark-chain.sh; the message above says where it differs)." >&2
  [ "$status" -ne 0 ] || status=$spark_status
fi
set -e
# One closing line for the whole suite (cargo prints one per test binary, the last being the
# doc-tests, which can be zero; the nspawn script prints `nspawn: N passed, N failed`).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^nspawn: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
