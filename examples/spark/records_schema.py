"""eddy's forwarded record (docs/records.schema.json) as one Spark schema, without Spark.

Every kind of record (window, window_counts, batch, late, raw, and the downsampled ones)
arrives on the same topic or in the same file, so the Spark side reads them with one struct:
the union of every kind's
keys, each key with one type (check_schema.py checks that the union is exactly what
docs/records.schema.json says, and that no key has two types). A key a record does not have
is null. `type` tells the kinds apart.

This module imports nothing from pyspark, so the schema check runs where Spark is not
installed (the Rust end-to-end test `spark_schema` runs it).
"""

# (key, Spark SQL type) in the order of the JSON schema's first kind that has the key.
RECORD_FIELDS = [
    ("type", "STRING"),
    ("window", "STRING"),
    ("device", "STRING"),
    ("sensor", "STRING"),
    ("field", "STRING"),
    ("start", "BIGINT"),
    ("end", "BIGINT"),
    ("count", "BIGINT"),
    ("sum", "DOUBLE"),
    ("min", "DOUBLE"),
    ("max", "DOUBLE"),
    ("mean", "DOUBLE"),
    ("stddev", "DOUBLE"),
    ("first", "DOUBLE"),
    ("last", "DOUBLE"),
    ("downsampled", "BOOLEAN"),
    ("resolution", "BIGINT"),
    ("merged", "BIGINT"),
    ("covered_start", "BIGINT"),
    ("covered_end", "BIGINT"),
    ("id", "STRING"),
    ("tag", "STRING"),
    ("counts", "MAP<STRING, BIGINT>"),
    ("other", "BIGINT"),
    ("batch", "BIGINT"),
    ("ts", "BIGINT"),
    ("watermark", "BIGINT"),
    ("values", "MAP<STRING, DOUBLE>"),
    ("tags", "MAP<STRING, STRING>"),
]

# The aggregates a `window` record may carry (the fleet view summarises each of them).
WINDOW_AGGREGATES = ["count", "sum", "min", "max", "mean", "stddev", "first", "last"]


def record_ddl():
    """The record as a Spark DDL struct body (`type STRING, ..., `end` BIGINT, ...`)."""
    return ", ".join(f"`{name}` {sql_type}" for name, sql_type in RECORD_FIELDS)


def _json_type_to_sql(prop, defs, key):
    """The Spark SQL type of one JSON-schema property (after resolving $ref)."""
    while "$ref" in prop:
        prop = defs[prop["$ref"].rsplit("/", 1)[1]]
    if "const" in prop:
        if isinstance(prop["const"], bool):
            return "BOOLEAN"
        return "STRING" if isinstance(prop["const"], str) else _fail(key, prop)
    types = prop.get("type")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        if len(types) != 1:
            _fail(key, prop)
        types = types[0]
    if types == "string":
        return "STRING"
    if types == "integer":
        return "BIGINT"
    if types == "number":
        return "DOUBLE"
    if types == "object":
        values = prop.get("additionalProperties")
        if not isinstance(values, dict):
            _fail(key, prop)
        return f"MAP<STRING, {_json_type_to_sql(values, defs, key + '.*')}>"
    return _fail(key, prop)


def _fail(key, prop):
    raise ValueError(f"{key}: no Spark type for JSON schema {prop!r}")


def fields_from_json_schema(schema):
    """The union of every kind's keys, typed, from the parsed docs/records.schema.json.

    Raises ValueError when one key has two different types in two kinds."""
    defs = schema["$defs"]
    fields = {}
    for kind_ref in schema["oneOf"]:
        kind = kind_ref["$ref"].rsplit("/", 1)[1]
        for name, prop in defs[kind]["properties"].items():
            sql_type = _json_type_to_sql(prop, defs, f"{kind}.{name}")
            if fields.setdefault(name, sql_type) != sql_type:
                raise ValueError(f"key {name!r} is {fields[name]} in one kind and {sql_type} in {kind}")
    return list(fields.items())
