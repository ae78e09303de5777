#!/usr/bin/env python3
"""Checks the fleet view Spark wrote (fleet_view.py --output DIR, JSON) against the same view
computed here, in plain Python, from eddy's records (the JSONL files Spark read).

Here, records are deduplicated by `id`, and every repeated id must carry an identical record
(eddy's contract: a redelivered record has the same id and the same values). Then Spark's view
must equal this one: the same (device, hour, window, field) rows and (device, hour) late rows,
no row twice, counts, minima and maxima equal, means within a relative 1e-9.

Exit 0 and a summary line when they agree; 1 with every difference otherwise.
Usage: fleet_check.py --records DIR --spark-out DIR --hour-ms MS [--min-hours N]
"""
import argparse
import glob
import json
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records_schema import RECORD_FIELDS, WINDOW_AGGREGATES  # noqa: E402

KNOWN_KEYS = {name for name, _ in RECORD_FIELDS}


def read_records(records_dir):
    """(records by id, lines read, duplicate lines, lines that are not JSON, problems).

    A line that is not JSON is skipped, as Spark's from_json skips it: the torn tail a crash
    can leave in a file sink's file (the record is delivered again, whole, on a new line)."""
    by_id, lines, duplicates, torn, problems = {}, 0, 0, 0, []
    for path in sorted(glob.glob(os.path.join(records_dir, "*"))):
        if os.path.basename(path).startswith((".", "_")) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as records_file:
            for line_no, line in enumerate(records_file, 1):
                if not line.strip():
                    continue
                lines += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    torn += 1
                    print(f"fleet_check: {path}:{line_no}: not JSON, skipped: {line.strip()[:200]}", file=sys.stderr)
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("id"), str) or "type" not in record:
                    problems.append(f"{path}:{line_no}: not an eddy record (an object with type and id): {line.strip()[:200]}")
                    continue
                unknown = set(record) - KNOWN_KEYS
                if unknown:
                    problems.append(f"{path}:{line_no}: keys outside docs/records.schema.json: {sorted(unknown)}")
                seen = by_id.setdefault(record["id"], record)
                if seen is not record:
                    duplicates += 1
                    if seen != record:
                        problems.append(f"{path}:{line_no}: id {record['id']} again with other contents: {seen} vs {record}")
    return by_id, lines, duplicates, torn, problems


def expected_views(records, hour_ms):
    windows, late = {}, {}
    for record in records:
        if record["type"] == "window":
            key = (record["device"], record["start"] // hour_ms * hour_ms, record["window"], record["field"])
            windows.setdefault(key, []).append(record)
        elif record["type"] == "late":
            key = (record["device"], record["ts"] // hour_ms * hour_ms)
            late[key] = late.get(key, 0) + 1
    view = {}
    for key, rows in windows.items():
        row = {"windows": len(rows)}
        for agg in WINDOW_AGGREGATES:
            values = [r[agg] for r in rows if r.get(agg) is not None]
            row[f"{agg}_n"] = len(values)
            row[f"{agg}_mean"] = math.fsum(values) / len(values) if values else None
            row[f"{agg}_min"] = min(values) if values else None
            row[f"{agg}_max"] = max(values) if values else None
        view[key] = row
    return view, late


def read_spark_rows(directory):
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "part-*"))):
        with open(path, encoding="utf-8") as part:
            rows += [json.loads(line) for line in part if line.strip()]
    return rows


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def compare(expected_windows, expected_late, spark_out):
    problems = []
    if not os.path.isdir(os.path.join(spark_out, "windows")) or not os.path.isdir(os.path.join(spark_out, "late")):
        return [f"{spark_out}: no windows/ or late/ directory: did the Spark job run?"], 0
    got_windows = {}
    for row in read_spark_rows(os.path.join(spark_out, "windows")):
        key = (row["device"], row["hour_ms"], row["window"], row["field"])
        if key in got_windows:
            problems.append(f"Spark's windows view has row {key} twice")
        got_windows[key] = row
    got_late = {}
    for row in read_spark_rows(os.path.join(spark_out, "late")):
        key = (row["device"], row["hour_ms"])
        if key in got_late:
            problems.append(f"Spark's late view has row {key} twice")
        got_late[key] = row["late_readings"]
    for key in sorted(set(expected_windows) - set(got_windows)):
        problems.append(f"windows row {key} missing from Spark's view")
    for key in sorted(set(got_windows) - set(expected_windows)):
        problems.append(f"windows row {key} in Spark's view but not in eddy's records")
    for key in sorted(set(expected_windows) & set(got_windows)):
        want, got = expected_windows[key], got_windows[key]
        for column, value in want.items():
            other = got.get(column)
            exact = column == "windows" or column.endswith(("_n", "_min", "_max"))
            if not (value == other if exact and value is not None and other is not None else close(value, other)):
                problems.append(f"windows row {key}: {column} is {other} in Spark, {value} from eddy's records")
    if got_late != expected_late:
        for key in sorted(set(expected_late) | set(got_late)):
            if expected_late.get(key) != got_late.get(key):
                problems.append(f"late row {key}: {got_late.get(key)} in Spark, {expected_late.get(key)} from eddy's records")
    return problems, len(got_windows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", required=True, help="the directory of JSONL files Spark read")
    parser.add_argument("--spark-out", required=True, help="fleet_view.py --output DIR")
    parser.add_argument("--hour-ms", type=int, default=3_600_000)
    parser.add_argument("--min-hours", type=int, default=1, help="each device must have results in at least this many hours")
    parser.add_argument("--min-duplicates", type=int, default=0)
    parser.add_argument("--min-late", type=int, default=0, help="each device must have at least this many late readings")
    parser.add_argument("--summary-json", help="also write the figures here")
    args = parser.parse_args()

    by_id, lines, duplicates, torn, problems = read_records(args.records)
    expected_windows, expected_late = expected_views(by_id.values(), args.hour_ms)
    compare_problems, spark_rows = compare(expected_windows, expected_late, args.spark_out)
    problems += compare_problems
    devices = sorted({key[0] for key in expected_windows})
    hours = {device: sorted({key[1] for key in expected_windows if key[0] == device}) for device in devices}
    for device, device_hours in hours.items():
        if len(device_hours) < args.min_hours:
            problems.append(f"{device}: window results in {len(device_hours)} hours, expected at least {args.min_hours}")
        step_gaps = [b - a for a, b in zip(device_hours, device_hours[1:]) if b - a != args.hour_ms]
        if step_gaps:
            problems.append(f"{device}: hours missing between its first and last ({device_hours})")
        late = sum(n for (late_device, _), n in expected_late.items() if late_device == device)
        if late < args.min_late:
            problems.append(f"{device}: {late} late readings, expected at least {args.min_late}")
    if duplicates < args.min_duplicates:
        problems.append(f"{duplicates} duplicate records in the input, expected at least {args.min_duplicates}")
    summary = {
        "record_lines": lines,
        "lines_not_json": torn,
        "unique_records": len(by_id),
        "duplicates_dropped": duplicates,
        "window_records": sum(1 for r in by_id.values() if r["type"] == "window"),
        "late_records": sum(1 for r in by_id.values() if r["type"] == "late"),
        "devices": devices,
        "hours_per_device": {device: len(h) for device, h in hours.items()},
        "device_hours_compared": len({key[:2] for key in expected_windows} | set(expected_late)),
        "window_rows_compared": spark_rows,
        "late_rows_compared": len(expected_late),
    }
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)
    for problem in problems[:200]:
        print(f"fleet_check: {problem}", file=sys.stderr)
    if problems:
        print(f"fleet_check: FAILED, {len(problems)} differences (summary: {json.dumps(summary)})", file=sys.stderr)
        return 1
    print(f"fleet_check: Spark's fleet view equals eddy's records: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
