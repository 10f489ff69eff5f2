"""Produces Confluent-framed Avro usage events the way producers in the field
do: confluent-kafka's AvroSerializer, registering each writer schema with a
Confluent-compatible Schema Registry (tests/schema_registry.rs).

usage: produce_registry_avro.py BROKERS TOPIC REGISTRY_URL SPEC.json

SPEC: {"schemas": {name: avsc text}, "messages": [{"schema": name, "key": str,
"value": {...}}]}. A value's `occurred_at` is RFC 3339 text; for a schema whose
`occurred_at` is a timestamp logical type it is sent as that instant.
"""

import json
import sys
from datetime import datetime

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def occurred_at_is_timestamp(schema_text):
    fields = json.loads(schema_text).get("fields", [])
    field = next((f for f in fields if f["name"] == "occurred_at"), None)
    return field is not None and isinstance(field["type"], dict) and "logicalType" in field["type"]


def main():
    brokers, topic, registry_url, spec_path = sys.argv[1:5]
    with open(spec_path) as f:
        spec = json.load(f)
    registry = SchemaRegistryClient({"url": registry_url})
    serializers = {
        name: (AvroSerializer(registry, text), occurred_at_is_timestamp(text)) for name, text in spec["schemas"].items()
    }
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    failures = []
    context = SerializationContext(topic, MessageField.VALUE)
    for message in spec["messages"]:
        serializer, as_timestamp = serializers[message["schema"]]
        value = dict(message["value"])
        if as_timestamp:
            value["occurred_at"] = datetime.fromisoformat(value["occurred_at"])
        producer.produce(
            topic,
            key=message["key"].encode(),
            value=serializer(value, context),
            on_delivery=lambda err, _msg: err and failures.append(str(err)),
        )
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        sys.exit(f"{left} messages not delivered; failures: {failures[:3]}")
    print(len(spec["messages"]))


if __name__ == "__main__":
    main()
