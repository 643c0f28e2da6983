"""Pure silver transforms: classify raw bronze records, type them, find duplicates."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.schemas.registry import classify, spark_schema
from pipelines.silver.tables import event_columns, silver_schema

CLASSIFIED_SCHEMA = T.StructType([
    T.StructField("topic", T.StringType(), False),
    T.StructField("partition", T.IntegerType(), False),
    T.StructField("offset", T.LongType(), False),
    T.StructField("value", T.BinaryType(), True),
    T.StructField("event_type", T.StringType(), True),
    T.StructField("error_code", T.StringType(), True),
    T.StructField("error_detail", T.StringType(), True),
    T.StructField("schema_version", T.IntegerType(), True),
    T.StructField("event_json", T.StringType(), True),
])

# Upcast events carry UTC times formatted this way (registry.normalize_timestamp).
_TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSX"


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _classifier(topic_event_types: dict[str, str], max_bytes: int):  # noqa: ANN202
    """The Arrow batch function behind `classify_records`.

    A Python function on purpose: JSON Schema validation with a precise,
    per-field reason has no Spark built-in. Arrow batches keep the
    Python round trip to one per few thousand records, not one per record.
    """

    arrow_schema = to_arrow_schema(CLASSIFIED_SCHEMA)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cols = batch.to_pydict()
            n = batch.num_rows
            event_types: list[str | None] = [None] * n
            codes: list[str | None] = [None] * n
            details: list[str | None] = [None] * n
            versions: list[int | None] = [None] * n
            events: list[str | None] = [None] * n
            code: str | None
            detail: str | None
            version: int | None
            event_json: str | None
            for i, (topic, value) in enumerate(zip(cols["topic"], cols["value"], strict=True)):
                event_type = topic_event_types.get(topic)
                if event_type is None:
                    code, detail, version, event_json = (
                        "schema_violation", f"topic {topic!r} carries no known event type",
                        None, None,
                    )
                else:
                    verdict = classify(event_type, value, max_bytes)
                    code, detail, version = (
                        verdict.error_code, verdict.error_detail, verdict.schema_version
                    )
                    event_json = _dumps(verdict.event) if verdict.ok else None
                event_types[i], codes[i], details[i], versions[i], events[i] = (
                    event_type, code, detail, version, event_json
                )
            yield pa.RecordBatch.from_pydict(
                {
                    "topic": cols["topic"], "partition": cols["partition"],
                    "offset": cols["offset"], "value": cols["value"],
                    "event_type": event_types, "error_code": codes, "error_detail": details,
                    "schema_version": versions, "event_json": events,
                },
                schema=arrow_schema,
            )

    return run


def classify_records(
    bronze: DataFrame, topic_event_types: dict[str, str], max_bytes: int
) -> DataFrame:
    """Bronze rows -> one verdict per record: an error code and detail, or the event
    upcast to the latest version as JSON (`event_json`)."""
    return bronze.select("topic", "partition", "offset", "value").mapInArrow(
        _classifier(topic_event_types, max_bytes), CLASSIFIED_SCHEMA
    )


def to_events(classified: DataFrame, event_type: str) -> DataFrame:
    """Valid verdicts of one event type -> typed rows of its silver table."""
    wire = F.from_json(
        "event_json", spark_schema(event_type), {"timestampFormat": _TIMESTAMP_FORMAT}
    )
    columns = [F.col(f"e.{name}").alias(field.name) for name, field in event_columns(event_type)]
    valid = classified.filter(F.col("error_code").isNull() & (F.col("event_type") == event_type))
    return as_silver_rows(
        valid.select(wire.alias("e"), "schema_version", "topic", "partition", "offset"),
        [*columns, F.col("schema_version")],
        event_type,
    )


def as_silver_rows(records: DataFrame, event: list[Column], event_type: str) -> DataFrame:
    """Records with Kafka coordinates + the columns of their typed `event` -> rows of
    the event type's silver table, in its column order."""
    return (
        records.select(
            *event,
            F.col("topic").alias("source_topic"),
            F.col("partition").alias("source_partition"),
            F.col("offset").alias("source_offset"),
            F.current_timestamp().alias("processed_at"),
        )
        .withColumn("event_date", F.to_date("event_time"))
        .select(*silver_schema(event_type).fieldNames())
    )


def repeated_ids(events: DataFrame, by: tuple[str, ...] = ("event_id",)) -> DataFrame:
    """`by` (the event_id, and whatever else scopes it) plus the coordinates
    (first_topic, first_partition, first_offset) of its earliest record (by topic,
    partition, offset), for every key that `events` holds more than once. An
    aggregate of the keys and coordinates only, so wide rows are never shuffled or
    sorted."""
    first = F.min(F.struct("source_topic", "source_partition", "source_offset"))
    return (
        events.groupBy(*by)
        .agg(F.count(F.lit(1)).alias("_n"), first.alias("_first"))
        .filter(F.col("_n") > 1)
        .select(
            *by,
            F.col("_first.source_topic").alias("first_topic"),
            F.col("_first.source_partition").alias("first_partition"),
            F.col("_first.source_offset").alias("first_offset"),
        )
    )


def rank_in_batch(
    events: DataFrame, repeated: DataFrame | None = None, by: tuple[str, ...] = ("event_id",)
) -> DataFrame:
    """Adds `first_*` columns: the coordinates of the earliest record with the same
    key (`by`) in this batch (its own for a unique key); a row is the first
    occurrence when they are its own. `repeated` is `repeated_ids(events, by)` when
    already at hand (the caller may have sized it for a broadcast)."""
    repeated = repeated_ids(events, by) if repeated is None else repeated
    joined = events.join(repeated, on=list(by), how="left")
    return joined.select(
        *events.columns,
        *(
            F.coalesce(F.col(f"first_{c}"), F.col(f"source_{c}")).alias(f"first_{c}")
            for c in ("topic", "partition", "offset")
        ),
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """Verdicts with an error -> silver.quarantine rows."""
    return classified.filter(F.col("error_code").isNotNull()).select(
        "topic", "partition", "offset", "value", "error_code", "error_detail",
        F.current_timestamp().alias("quarantined_at"),
    )


def duplicate_rows(dups: DataFrame) -> DataFrame:
    """Events seen before (columns of `rank_in_batch`, `first_*` pointing at the
    occurrence kept, plus the raw `value`) -> quarantine rows with code `duplicate`."""
    detail = F.format_string(
        "duplicate: event_id %s was already accepted from %s[%d]@%d",
        F.col("event_id"), F.col("first_topic"), F.col("first_partition"), F.col("first_offset"),
    )
    return dups.select(
        F.col("source_topic").alias("topic"),
        F.col("source_partition").alias("partition"),
        F.col("source_offset").alias("offset"),
        F.col("value"),
        F.lit("duplicate").alias("error_code"),
        detail.alias("error_detail"),
        F.current_timestamp().alias("quarantined_at"),
    )
