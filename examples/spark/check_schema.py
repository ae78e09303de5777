#!/usr/bin/env python3
"""Checks that the Spark schema the fleet view reads records with (records_schema.py) is
exactly the record contract, docs/records.schema.json: same keys, same order, same types.

No Spark needed. Exit 0 when they agree; 1 with the differences otherwise.
Usage: python3 examples/spark/check_schema.py [path/to/records.schema.json]
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records_schema import RECORD_FIELDS, WINDOW_AGGREGATES, fields_from_json_schema  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "docs", "records.schema.json")
    with open(path, encoding="utf-8") as schema_file:
        schema = json.load(schema_file)
    problems = []
    try:
        derived = fields_from_json_schema(schema)
    except ValueError as error:
        print(f"check_schema: {path}: {error}", file=sys.stderr)
        return 1
    if derived != RECORD_FIELDS:
        mirrored = dict(RECORD_FIELDS)
        contract = dict(derived)
        for name, sql_type in derived:
            if name not in mirrored:
                problems.append(f"key {name!r} ({sql_type}) is in the contract but not in records_schema.py")
            elif mirrored[name] != sql_type:
                problems.append(f"key {name!r} is {sql_type} in the contract but {mirrored[name]} in records_schema.py")
        for name, _ in RECORD_FIELDS:
            if name not in contract:
                problems.append(f"key {name!r} is in records_schema.py but not in the contract")
        if not problems:
            problems.append(f"same keys in another order: contract {[n for n, _ in derived]}")
    window_props = schema["$defs"]["window"]["properties"]
    numeric = [name for name in window_props if name in WINDOW_AGGREGATES]
    if numeric != WINDOW_AGGREGATES:
        problems.append(f"window aggregates are {numeric} in the contract but {WINDOW_AGGREGATES} in records_schema.py")
    for problem in problems:
        print(f"check_schema: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_schema: records_schema.py agrees with {os.path.normpath(path)} ({len(derived)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
