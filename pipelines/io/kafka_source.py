"""Kafka as a Spark structured-streaming source."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from pipelines.runtime.kafka.embedded import BrokerError
from pipelines.settings import StreamingSettings


def require_topics(bootstrap: str, topics: list[str], timeout_s: float) -> None:
    """Raise a one-line BrokerError unless a broker answers at `bootstrap` within
    `timeout_s` and holds every topic: Spark's Kafka source would otherwise retry
    without end (no broker) or wait for the topics to appear."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="lakehouse-check",
            request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
        )
        try:
            existing = set(admin.list_topics())
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({type(exc).__name__}): start the "
            "embedded one with `lakehouse up`, or set kafka.bootstrap (LAKEHOUSE_KAFKA_BOOTSTRAP)"
        ) from exc
    missing = [t for t in topics if t not in existing]
    if missing:
        raise BrokerError(
            f"Kafka at {bootstrap} has no topic {', '.join(missing)}: `lakehouse up` creates "
            "the configured topics"
        )


def read_kafka_stream(
    spark: SparkSession, bootstrap: str, topics: list[str], streaming: StreamingSettings
) -> DataFrame:
    """The raw Kafka records of `topics` (key/value as bytes, plus coordinates)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", ",".join(topics))
        .option("startingOffsets", streaming.starting_offsets)
        # A topic deleted or truncated under us must stop the job loudly,
        # never skip records silently.
        .option("failOnDataLoss", "true")
    )
    if streaming.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", streaming.max_offsets_per_trigger)
    return reader.load()
