#!/usr/bin/env python3
"""A fleet view of eddy's gateways with Spark Structured Streaming.

Reads eddy's forwarded records (the contract: docs/records.schema.json, mirrored in
records_schema.py), drops redelivered records by `id` under a watermark, and computes per
device and hour (of the window's start):
  * `windows`: for every window name and field, the number of window results and, for every
    aggregate a window record carries (count, sum, min, max, mean, stddev, first, last),
    `<agg>_n` (results that carry it, not null), `<agg>_mean`, `<agg>_min`, `<agg>_max`;
  * `late`: the late readings (records of type `late`), per device and hour of their `ts`.

Input (a thin switch; everything after it is shared):
  --source files --path DIR   closed JSONL files of eddy's file sink (a landing zone)
  --source kafka --bootstrap HOST:PORT --topic T [--event-hubs-connection-file F | SASL options]
                              needs the connector: spark-submit --packages
                              org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>
Output: --output DIR (one directory per view, rewritten with the whole view at every trigger)
or --output console. --available-now processes what is there and stops (the batch-like run).

See examples/spark/README.md.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from records_schema import WINDOW_AGGREGATES, record_ddl  # noqa: E402

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["files", "kafka"], required=True)
    parser.add_argument("--path", help="files: the directory of closed JSONL files")
    parser.add_argument("--glob", help="files: only file names matching this (Spark's pathGlobFilter), e.g. '*.jsonl'")
    parser.add_argument("--max-files-per-trigger", type=int, default=100)
    parser.add_argument("--bootstrap", help="kafka: bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", help="kafka: topic(s), comma-separated (subscribe)")
    parser.add_argument("--topic-pattern", help="kafka: a topic regex instead (subscribePattern), e.g. 'eddy\\..*'")
    parser.add_argument("--starting-offsets", default="earliest")
    parser.add_argument("--security-protocol", help="kafka: e.g. SASL_SSL")
    parser.add_argument("--sasl-mechanism", default="PLAIN")
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password-file", help="kafka: file holding the SASL password")
    parser.add_argument(
        "--event-hubs-connection-file",
        help="kafka: Azure Event Hubs' Kafka endpoint (port 9093): SASL_SSL, PLAIN, user $ConnectionString, "
        "password = the connection string in this file",
    )
    parser.add_argument(
        "--login-module",
        default="org.apache.kafka.common.security.plain.PlainLoginModule",
        help="JAAS login module (Databricks: kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule)",
    )
    parser.add_argument("--output", required=True, help="a directory, or 'console'")
    parser.add_argument("--format", choices=["json", "csv"], default="json")
    parser.add_argument("--checkpoint", help="checkpoint directory (default OUTPUT/_checkpoints)")
    parser.add_argument(
        "--watermark",
        default="2 days",
        help="how long after a record's event time a redelivery is still recognised; longer than the longest "
        "gateway outage you expect (records older than the watermark are dropped)",
    )
    parser.add_argument("--hour-ms", type=int, default=3_600_000, help="the bucket of the view (tests compress it)")
    parser.add_argument("--available-now", action="store_true", help="process what is there, then stop")
    parser.add_argument("--trigger-seconds", type=int, default=30)
    args = parser.parse_args(argv)
    if args.source == "files" and not args.path:
        parser.error("--source files needs --path DIR")
    if args.source == "kafka" and not args.bootstrap:
        parser.error("--source kafka needs --bootstrap")
    if args.source == "kafka" and not (args.topic or args.topic_pattern):
        parser.error("--source kafka needs --topic or --topic-pattern")
    if args.sasl_username and not args.sasl_password_file:
        parser.error("--sasl-username needs --sasl-password-file")
    return args


# ---- the thin switch: each source gives a stream of one string column `value` -------------


def read_values(spark, args):
    if args.source == "files":
        reader = spark.readStream.format("text").option("maxFilesPerTrigger", args.max_files_per_trigger)
        if args.glob:
            reader = reader.option("pathGlobFilter", args.glob)
        return reader.load(args.path)
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("startingOffsets", args.starting_offsets)
        .option("failOnDataLoss", "false")
    )
    if args.topic_pattern:
        reader = reader.option("subscribePattern", args.topic_pattern)
    else:
        reader = reader.option("subscribe", args.topic)
    username, password_file, protocol = args.sasl_username, args.sasl_password_file, args.security_protocol
    if args.event_hubs_connection_file:
        username, password_file, protocol = "$ConnectionString", args.event_hubs_connection_file, "SASL_SSL"
    if protocol:
        reader = reader.option("kafka.security.protocol", protocol)
    if username:
        with open(password_file, encoding="utf-8") as secret:
            password = secret.read().strip()
        reader = reader.option("kafka.sasl.mechanism", args.sasl_mechanism).option(
            "kafka.sasl.jaas.config",
            f'{args.login_module} required username="{username}" password="{password}";',
        )
    try:
        stream = reader.load()
    except Exception as error:  # pyspark's AnalysisException; its module moved between versions
        if "kafka" in str(error).lower() and "data source" in str(error).lower():
            sys.exit(
                "fleet_view: Spark has no Kafka connector: run it with spark-submit --packages "
                "org.apache.spark:spark-sql-kafka-0-10_<scala>:<spark version> (built in on Databricks)"
            )
        raise
    return stream.select(F.col("value").cast("string").alias("value"))


# ---- shared from here on -----------------------------------------------------------------


def parse_records(values):
    """One row per record. A message or line holds one record or a JSON array of them (an MQTT
    or Kafka sink with records_per_message > 1): both are read as an array. A line that is not
    JSON gives no row: the torn tail a crash can leave in a file sink's file (eddy starts a new
    line after it and delivers that record again in full)."""
    text = F.trim(F.col("value"))
    as_array = F.when(text.startswith("["), text).otherwise(F.concat(F.lit("["), text, F.lit("]")))
    return (
        values.where(F.length(text) > 0)
        .select(F.explode(F.from_json(as_array, f"ARRAY<STRUCT<{record_ddl()}>>")).alias("r"))
        .select("r.*")
    )


def deduplicated(records, kind, event_time_ms, watermark):
    """Records of one kind, each `id` once. The event time (a timestamp of the record's own
    time) bounds the state: an id is remembered until the watermark (largest event time seen
    minus `watermark`) passes its event time. A redelivered record has the same id and the
    same values, so its event time is the same and (id, event time) is as unique as id."""
    return (
        records.where(F.col("type") == kind)
        # The SQL function, not pyspark's F.timestamp_millis (3.5+): this runs on Spark 3.3 too.
        .withColumn("event_time", F.expr(f"timestamp_millis(`{event_time_ms}`)"))
        .withWatermark("event_time", watermark)
        .dropDuplicates(["id", "event_time"])
    )


def hour_of(ms_col, hour_ms):
    return (F.floor(F.col(ms_col) / F.lit(hour_ms)) * F.lit(hour_ms)).cast("long")


def window_view(records, args):
    rows = deduplicated(records, "window", "start", args.watermark).withColumn("hour_ms", hour_of("start", args.hour_ms))
    aggregates = [F.count(F.lit(1)).alias("windows")]
    for agg in WINDOW_AGGREGATES:
        aggregates += [
            F.count(agg).alias(f"{agg}_n"),
            F.avg(agg).alias(f"{agg}_mean"),
            F.min(agg).alias(f"{agg}_min"),
            F.max(agg).alias(f"{agg}_max"),
        ]
    return rows.groupBy("device", "hour_ms", "window", "field").agg(*aggregates)


def late_view(records, args):
    rows = deduplicated(records, "late", "ts", args.watermark).withColumn("hour_ms", hour_of("ts", args.hour_ms))
    return rows.groupBy("device", "hour_ms").agg(F.count(F.lit(1)).alias("late_readings"))


def with_hour_text(view):
    return view.withColumn("hour", F.date_format(F.expr("timestamp_millis(hour_ms)"), "yyyy-MM-dd'T'HH:mm:ss'Z'"))


def start_query(name, view, args):
    writer = view.writeStream.queryName(name).outputMode("complete")
    # The console needs no checkpoint of its own (Spark then uses a temporary one).
    checkpoint = args.checkpoint or (None if args.output == "console" else os.path.join(args.output, "_checkpoints"))
    if checkpoint:
        writer = writer.option("checkpointLocation", os.path.join(checkpoint, name))
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    if args.output == "console":
        return writer.format("console").option("truncate", "false").option("numRows", 1000).start()
    target = os.path.join(args.output, name)

    # Complete mode: every trigger has the whole view and replaces the directory's contents
    # (no file sink supports complete mode). The replacement is not atomic: a reader during it
    # can find the directory empty; on Databricks, overwrite a Delta table instead.
    def write_view(batch, _batch_id):
        out = with_hour_text(batch).coalesce(1).write.mode("overwrite")
        if args.format == "csv":
            out.option("header", "true").csv(target)
        else:
            out.json(target)

    return writer.foreachBatch(write_view).start()


def main(argv=None):
    args = parse_args(argv)
    spark = (
        SparkSession.builder.appName("eddy-fleet-view")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", os.environ.get("EDDY_SPARK_SHUFFLE_PARTITIONS", "8"))
        .getOrCreate()
    )
    records = parse_records(read_values(spark, args))
    queries = [start_query("windows", window_view(records, args), args), start_query("late", late_view(records, args), args)]
    for query in queries:
        query.awaitTermination()
    for query in queries:
        progress = query.recentProgress
        rows = sum(p.get("numInputRows", 0) for p in progress)
        dropped = 0
        for p in progress:
            for op in p.get("stateOperators", []):
                metrics = op.get("customMetrics") or {}
                dropped += metrics.get("numDroppedDuplicateRows", op.get("numDroppedDuplicateRows", 0))
        print(f"fleet_view: query {query.name}: {rows} input rows, {dropped} duplicates dropped, {len(progress)} batches")
    spark.stop()


if __name__ == "__main__":
    main()
