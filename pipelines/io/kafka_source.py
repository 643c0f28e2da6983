"""Kafka as a Spark structured-streaming source."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from pipelines.settings import StreamingSettings


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
