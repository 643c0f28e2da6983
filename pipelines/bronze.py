"""Bronze: every Kafka record of the source topics, raw, exactly once."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.io.delta import ensure_table
from pipelines.io.kafka_source import read_kafka_stream, require_topics
from pipelines.io.streams import DeltaAppend, start_stream
from pipelines.settings import Settings

TABLE = catalog.BRONZE_EVENTS
QUERY_NAME = "bronze_events"


def to_bronze(records: DataFrame) -> DataFrame:
    """Kafka source rows -> the bronze.events schema of the contract: `key` and
    `value` stay the exact bytes Kafka delivered, so any record can be replayed as
    sent; silver decodes (and quarantines what is not UTF-8 JSON)."""
    return records.select(
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.col("key"),
        F.col("value"),
        F.current_timestamp().alias("ingested_at"),
    ).withColumn("ingest_date", F.to_date("ingested_at"))


KAFKA_SOURCE_SCHEMA = T.StructType([
    T.StructField("key", T.BinaryType()), T.StructField("value", T.BinaryType()),
    T.StructField("topic", T.StringType()), T.StructField("partition", T.IntegerType()),
    T.StructField("offset", T.LongType()), T.StructField("timestamp", T.TimestampType()),
])


def ensure_bronze(spark: SparkSession, settings: Settings) -> None:
    """Create an empty bronze.events if none exists, so that silver can start its
    stream beside bronze before bronze's first commit."""
    empty = spark.createDataFrame([], KAFKA_SOURCE_SCHEMA).transform(to_bronze)
    ensure_table(spark, TABLE.path(settings), empty, TABLE)


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    ensure_bronze(spark, settings)
    require_topics(
        settings.kafka.bootstrap, settings.kafka.source_topics, settings.kafka.admin_timeout_s
    )
    records = read_kafka_stream(
        spark, settings.kafka.bootstrap, settings.kafka.source_topics, settings.streaming
    )
    sink = DeltaAppend(TABLE.path(settings), TABLE.partition_by)
    return [start_stream(
        settings, QUERY_NAME, records.transform(to_bronze), sink, available_now=available_now
    )]
