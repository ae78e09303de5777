#!/usr/bin/env python3
"""Times eddy's restarts on copies of one kept store (issue #18, goal 6).

    scripts/restart-first-result.py EDDY_BINARY STORE ROUNDS [FIRST_SENSOR]

STORE is a data directory's parent as the recovery bench keeps it
(`EDDY_BENCH_KEEP_DIR=...`: `eddy.toml`, `data/`, `results.jsonl`). Each round copies it to
/tmp/eddy-restart-run, starts the binary there, waits for "eddy is ready.", sends one reading
of sensor t-NNNNN (FIRST_SENSOR + round, default 0) timestamped now, which closes that sensor's
windows, and reports, from process start: ready, ack and first new line in the file sink, in
ms. Then eddy is killed (SETTLE seconds later, default 0.3). Set SHOWLOG=1 to print eddy's log.
Rounds on copies of one store see the same state, so two binaries can be compared on it,
alternating; a store written by a build of an older format is upgraded by the newer binary
in each round (that cost is in its first round's "ready").
"""
import json, os, re, shutil, socket, subprocess, sys, time

if len(sys.argv) < 4:
    sys.exit(__doc__)
BIN, STORE, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
FIRST = int(sys.argv[4]) if len(sys.argv) > 4 else 0
RUN = '/tmp/eddy-restart-run'
ANSI = re.compile(r'\x1b\[[0-9;]*m')


def lines(path):
    return open(path).read().count('\n') if os.path.exists(path) else 0


for round_ in range(ROUNDS):
    shutil.rmtree(RUN, ignore_errors=True)
    shutil.copytree(STORE, RUN, symlinks=True)
    config = open(os.path.join(STORE, 'eddy.toml')).read()
    config = re.sub(r'(?m)^data_dir = ".*"', f'data_dir = "{RUN}/data"', config)
    config = re.sub(r'(?m)^path = ".*results.jsonl"', f'path = "{RUN}/results.jsonl"', config)
    open(f'{RUN}/eddy.toml', 'w').write(config)
    results = f'{RUN}/results.jsonl'
    before = lines(results)
    subprocess.run(['sync'], check=True)
    log_path = f'{RUN}/stderr.log'
    env = dict(os.environ, EDDY_LOG=os.environ.get('EDDY_LOG', 'info'), NO_COLOR='1')
    started = time.monotonic()
    eddy = subprocess.Popen([BIN, 'run', '--config', f'{RUN}/eddy.toml'], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(log_path, 'w'), env=env)
    while 'eddy is ready.' not in open(log_path).read():
        if time.monotonic() - started > 60 or eddy.poll() is not None:
            sys.exit(f'eddy not ready:\n{open(log_path).read()}')
        time.sleep(0.001)
    ready = time.monotonic() - started
    log = ANSI.sub('', open(log_path).read())
    host, port = re.search(r'TCP source listening\..*address=(\S+)', log).group(1).rsplit(':', 1)
    reading = {"sensor": f"t-{FIRST + round_:05}", "ts": int(time.time() * 1000), "temp_c": 20.0,
               "humidity": 40.0, "setpoint_c": 21.0, "mode": "heat"}
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(json.dumps(reading).encode() + b'\n')
        ack = conn.makefile().readline().strip()
        acked = time.monotonic() - started
        while lines(results) <= before:
            if time.monotonic() - started > 60:
                sys.exit('no result in 60 s')
            time.sleep(0.001)
        first = time.monotonic() - started
    time.sleep(float(os.environ.get('SETTLE', '0.3')))
    eddy.kill()
    eddy.wait()
    print(f'ready {ready * 1000:.0f} ms, ack {acked * 1000:.0f} ms, first result {first * 1000:.0f} ms ({ack})')
    if os.environ.get('SHOWLOG'):
        print(ANSI.sub('', open(log_path).read()))
