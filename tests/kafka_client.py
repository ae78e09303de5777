#!/usr/bin/env python3
"""An independent Kafka client for eddy's tests: librdkafka through PyPI's confluent-kafka, so
that what eddy's Kafka sink (rskafka) writes is read back by another implementation.

Commands (the broker is `--brokers host:port`; TLS with `--ca FILE`; SASL with
`--sasl MECHANISM:USER:PASSWORD`):
  create-topic TOPIC PARTITIONS     create a topic (replication factor 1)
  consume TOPIC                     print every message of every partition from the start, one
                                    JSON object a line: {"partition", "offset", "key", "value"},
                                    then exit at the end of every partition
  partition TOPIC KEY               produce one probe message with KEY using librdkafka's
                                    murmur2 partitioner (Kafka's Java default) and print the
                                    partition it went to
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def common(args):
    config = {"bootstrap.servers": args.brokers}
    if args.ca:
        config["security.protocol"] = "SSL"
        config["ssl.ca.location"] = args.ca
    if args.sasl:
        mechanism, user, password = args.sasl.split(":", 2)
        config["security.protocol"] = "SASL_SSL" if args.ca else "SASL_PLAINTEXT"
        config.update({"sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password})
    return config


def create_topic(args):
    admin = AdminClient(common(args))
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)])
    for future in futures.values():
        future.result(timeout=20)
    # Wait until the metadata lists it with all its partitions.
    deadline = time.time() + 20
    while time.time() < deadline:
        topics = admin.list_topics(timeout=5).topics
        if args.topic in topics and len(topics[args.topic].partitions) == args.partitions:
            return 0
        time.sleep(0.1)
    print(f"topic {args.topic} not listed with {args.partitions} partitions", file=sys.stderr)
    return 1


def consume(args):
    config = common(args)
    config.update(
        {
            "group.id": "eddy-test-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer = Consumer(config)
    metadata = consumer.list_topics(args.topic, timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None:
        print(f"topic {args.topic} unknown: {topic.error if topic else 'absent'}", file=sys.stderr)
        return 2
    partitions = sorted(topic.partitions)
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
    at_end = set()
    deadline = time.time() + args.timeout
    while len(at_end) < len(partitions):
        if time.time() > deadline:
            print(f"no end of partitions {set(partitions) - at_end} within {args.timeout}s", file=sys.stderr)
            return 3
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                continue
            print(f"consumer error: {message.error()}", file=sys.stderr)
            return 4
        at_end.discard(message.partition())
        key = message.key()
        print(
            json.dumps(
                {
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": key.decode() if key is not None else None,
                    "value": json.loads(message.value()),
                }
            )
        )
    consumer.close()
    return 0


def partition(args):
    config = common(args)
    config.update({"partitioner": "murmur2_random", "acks": "all"})
    producer = Producer(config)
    result = {}

    def delivered(error, message):
        result["error"] = error
        result["partition"] = message.partition()

    producer.produce(args.topic, key=args.key.encode(), value=b"{}", on_delivery=delivered)
    producer.flush(20)
    if result.get("error") is not None or "partition" not in result:
        print(f"probe not delivered: {result}", file=sys.stderr)
        return 5
    print(result["partition"])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--ca")
    parser.add_argument("--sasl")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-topic")
    create.add_argument("topic")
    create.add_argument("partitions", type=int)
    read = commands.add_parser("consume")
    read.add_argument("topic")
    read.add_argument("--timeout", type=float, default=30.0)
    probe = commands.add_parser("partition")
    probe.add_argument("topic")
    probe.add_argument("key")
    args = parser.parse_args()
    return {"create-topic": create_topic, "consume": consume, "partition": partition}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
