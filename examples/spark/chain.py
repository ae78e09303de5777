#!/usr/bin/env python3
"""The Spark chain check: two eddy gateways → their file sinks → a landing directory → the
Spark fleet view (fleet_view.py) → fleet_check.py against eddy's own records.

  * gw-a and gw-b: two `eddy run` processes (own device_id, data_dir, TCP source with acks,
    5 s event-time windows with every aggregate, a file sink of window and late records that
    rotates every 16 KiB), fed by `eddy simulate --tcp … --session …` and a few late readings;
  * gw-b is SIGKILLed mid-way, restarted on the same data_dir and fed on;
  * a shipper moves each closed file (the sink's rotated `results.jsonl.N`; the live
    `results.jsonl` only once its eddy has stopped cleanly) into landing/ under a unique name,
    as a blob-storage uploader would; one file is shipped twice (an uploader's retry) so the
    deduplication has work to do whatever the kill did;
  * Spark reads landing/ with --available-now and writes the view; fleet_check.py compares.

Event-time hours are compressed: the view's bucket is --hour-ms (20 s by default), so a run of
about a minute and a half covers several "hours". Exit 0 when everything agrees.
Usage: chain.py --eddy PATH/TO/eddy --python VENV/bin/python [--workdir DIR] [--feed-seconds N]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SENSORS = 4
RATE = 4  # readings/s per thermostat


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fail(message):
    print(f"spark-chain: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def poll(what, condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    fail(f"timed out after {timeout_s} s waiting for {what}")


class Gateway:
    def __init__(self, name, workdir, eddy):
        self.name, self.eddy = name, eddy
        self.dir = os.path.join(workdir, name)
        self.out = os.path.join(self.dir, "out")
        self.tcp_port, self.api_port = free_port(), free_port()
        self.config = os.path.join(self.dir, "eddy.toml")
        self.process = None
        self.log = None
        os.makedirs(self.out)
        with open(self.config, "w", encoding="utf-8") as config:
            config.write(
                f"""device_id = "{name}"
data_dir = "{self.dir}/data"
[api]
listen = "127.0.0.1:{self.api_port}"
[engine]
idle_timeout = "3s"
[[sources]]
kind = "tcp"
listen = "127.0.0.1:{self.tcp_port}"
ack = true
[[windows]]
name = "w5s"
length = "5s"
slide = "5s"
time = "event"
lateness = "2s"
fields = ["temp_c", "humidity"]
aggregates = ["count", "sum", "min", "max", "mean", "stddev", "first", "last"]
[[sinks]]
kind = "file"
name = "landing"
path = "{self.out}/results.jsonl"
records = ["window", "late"]
max_file_bytes = 16384
max_files = 1000
"""
            )

    def start(self):
        self.log = open(os.path.join(self.dir, "eddy.log"), "a", encoding="utf-8")
        self.process = subprocess.Popen([self.eddy, "run", "--config", self.config], stdout=self.log, stderr=subprocess.STDOUT)
        poll(f"{self.name} to listen", self.listening, 30)

    def listening(self):
        if self.process.poll() is not None:
            fail(f"{self.name} exited with {self.process.returncode}; see {self.dir}/eddy.log")
        try:
            socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
            return True
        except OSError:
            return False

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/status", timeout=5) as reply:
            return json.load(reply)

    def settled(self):
        """Every window closed (idle_timeout) and every result in the file."""
        status = self.status()
        return status["engine"]["open_windows"] == 0 and all(u["outbox_depth"] == 0 for u in status["uplinks"])

    def kill_after_a_delivery(self):
        """SIGKILL as soon as the live file grows: a delivery was just written, and its
        cursor may not be committed yet, so eddy delivers it again after the restart (the
        redelivery the Spark job must drop). Whether the kill lands before the commit varies."""
        live = os.path.join(self.out, "results.jsonl")

        def size():
            try:
                return os.stat(live).st_size
            except FileNotFoundError:
                return -1

        before = size()
        deadline = time.monotonic() + 15
        while size() == before and time.monotonic() < deadline:
            time.sleep(0.0002)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        if code != 0:
            fail(f"{self.name} stopped with exit code {code}; see {self.dir}/eddy.log")

    def simulate(self, session, seed, count):
        return subprocess.Popen(
            [self.eddy, "simulate", "--tcp", f"127.0.0.1:{self.tcp_port}", "--session", session, "--seed", str(seed),
             "--sensors", str(SENSORS), "--rate", str(RATE), "--count", str(count)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def send_late(self, n, age_ms):
        """n readings of t-000 stamped age_ms ago: their windows were emitted, so they are late."""
        now = int(time.time() * 1000)
        lines = "".join(
            json.dumps({"sensor": "t-000", "ts": now - age_ms + i, "temp_c": 19.5 + i / 10, "humidity": 41.0}) + "\n"
            for i in range(n)
        )
        with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=10) as sock:
            sock.sendall(lines.encode())
            replies = b""
            while f"ack {n}\n".encode() not in replies:
                chunk = sock.recv(4096)
                if not chunk:
                    fail(f"{self.name} closed the connection before acking the late readings: {replies!r}")
                replies += chunk
                if b"err" in replies or b"nack" in replies:
                    fail(f"{self.name} refused late readings: {replies!r}")


class Shipper(threading.Thread):
    """Moves closed files into landing/ under unique names (rename: atomic, same file system).
    A rotated file `results.jsonl.N` is closed: eddy never writes it again, only renames it
    one up at its next rotation, which tolerates it being gone."""

    def __init__(self, gateways, landing):
        super().__init__(daemon=True)
        self.gateways, self.landing = gateways, landing
        self.seq = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.shipped = 0

    def ship_closed(self, gateway, include_live=False):
        with self.lock:
            names = [n for n in os.listdir(gateway.out) if n.startswith("results.jsonl.")]
            # Oldest first (highest N), then the live file when its eddy has stopped.
            paths = [os.path.join(gateway.out, n) for n in sorted(names, key=lambda n: -int(n.rsplit(".", 1)[1]))]
            if include_live:
                paths.append(os.path.join(gateway.out, "results.jsonl"))
            for path in paths:
                self.seq += 1
                try:
                    os.rename(path, os.path.join(self.landing, f"{gateway.name}-{self.seq:06d}.jsonl"))
                    self.shipped += 1
                except FileNotFoundError:
                    pass  # renamed one up by a rotation meanwhile: shipped at the next scan

    def run(self):
        while not self.stopping.wait(0.3):
            for gateway in self.gateways:
                self.ship_closed(gateway)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eddy", required=True)
    parser.add_argument("--python", default=sys.executable, help="a python with pyspark")
    parser.add_argument("--workdir")
    parser.add_argument("--feed-seconds", type=int, default=80)
    parser.add_argument("--hour-ms", type=int, default=20_000)
    parser.add_argument("--summary-json")
    args = parser.parse_args()
    started = time.monotonic()
    workdir = args.workdir or tempfile.mkdtemp(prefix="eddy-spark-chain-")
    os.makedirs(workdir, exist_ok=True)
    landing = os.path.join(workdir, "landing")
    os.makedirs(landing)
    print(f"spark-chain: working in {workdir}")

    gw_a, gw_b = Gateway("gw-a", workdir, args.eddy), Gateway("gw-b", workdir, args.eddy)
    for gateway in (gw_a, gw_b):
        gateway.start()
    shipper = Shipper([gw_a, gw_b], landing)
    shipper.start()

    total = SENSORS * RATE * args.feed_seconds
    half = total // 2
    sim_a = gw_a.simulate("sim-gw-a", 1, total)
    sim_b = gw_b.simulate("sim-gw-b", 2, half * 2)  # cut short by the kill
    # Late readings once the windows they fall in were emitted (5 s windows, 2 s lateness).
    time.sleep(args.feed_seconds / 4)
    gw_a.send_late(3, 15_000)
    gw_b.send_late(2, 15_000)
    time.sleep(args.feed_seconds / 4)
    print(f"spark-chain: SIGKILL {gw_b.name} mid-way")
    gw_b.kill_after_a_delivery()
    output_b1, _ = sim_b.communicate(timeout=30)
    gw_b.start()
    gw_b.send_late(2, 15_000)
    sim_b2 = gw_b.simulate("sim-gw-b-after-restart", 3, total - half)
    for name, sim in (("gw-a", sim_a), ("gw-b after restart", sim_b2)):
        output, _ = sim.communicate(timeout=args.feed_seconds * 3)
        if sim.returncode != 0:
            fail(f"eddy simulate for {name} failed: {output.strip()}")
        print(f"spark-chain: simulate {name}: {output.strip()}")
    print(f"spark-chain: simulate gw-b before the kill: {output_b1.strip()}")
    for gateway in (gw_a, gw_b):
        poll(f"{gateway.name} to emit and deliver every window", gateway.settled, 60)
    shipper.stopping.set()
    shipper.join()
    for gateway in (gw_a, gw_b):
        gateway.stop()
        shipper.ship_closed(gateway, include_live=True)
    landed = sorted(os.listdir(landing))
    first = os.path.join(landing, landed[0])
    shutil.copyfile(first, os.path.join(landing, f"{landed[0][:-6]}-retried.jsonl"))
    with open(first, encoding="utf-8") as retried:
        retried_lines = sum(1 for line in retried if line.strip())
    print(f"spark-chain: {len(landed)} closed files in landing/ (+1 shipped twice: {landed[0]})")
    fed_s = time.monotonic() - started

    spark_started = time.monotonic()
    spark_out = os.path.join(workdir, "view")
    env = dict(os.environ, EDDY_SPARK_SHUFFLE_PARTITIONS="4")
    spark = subprocess.run(
        [args.python, os.path.join(HERE, "fleet_view.py"), "--source", "files", "--path", landing, "--output", spark_out,
         "--available-now", "--hour-ms", str(args.hour_ms), "--watermark", "1 hour"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    spark_s = time.monotonic() - spark_started
    with open(os.path.join(workdir, "spark.log"), "w", encoding="utf-8") as log:
        log.write(spark.stdout)
    if spark.returncode != 0:
        print(spark.stdout[-4000:], file=sys.stderr)
        fail(f"the Spark job exited with {spark.returncode}; its log: {workdir}/spark.log")
    for line in spark.stdout.splitlines():
        if line.startswith("fleet_view:"):
            print(f"spark-chain: {line}")

    summary_path = args.summary_json or os.path.join(workdir, "summary.json")
    check = subprocess.run(
        [sys.executable, os.path.join(HERE, "fleet_check.py"), "--records", landing, "--spark-out", spark_out,
         "--hour-ms", str(args.hour_ms), "--min-hours", "3", "--min-duplicates", "1", "--min-late", "1",
         "--summary-json", summary_path]
    )
    if check.returncode != 0:
        fail(f"Spark's fleet view differs from eddy's records (files kept in {workdir})")
    with open(summary_path, encoding="utf-8") as summary_file:
        summary = json.load(summary_file)
    summary.update(feed_and_gateways_s=round(fed_s, 1), spark_s=round(spark_s, 1),
                   total_s=round(time.monotonic() - started, 1), files_landed=len(landed) + 1,
                   duplicates_from_the_retried_file=retried_lines,
                   duplicates_from_the_kill=summary["duplicates_dropped"] - retried_lines)
    with open(summary_path, "w", encoding="utf-8") as summary_file:
        json.dump(summary, summary_file, indent=2)
    print(f"spark-chain: OK in {summary['total_s']} s (gateways {summary['feed_and_gateways_s']} s, "
          f"Spark {summary['spark_s']} s): {json.dumps(summary)}")
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
