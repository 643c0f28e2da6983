"""The embedded single-node Kafka broker (`embedded`) for local runs and tests."""
