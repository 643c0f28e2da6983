"""Pure silver transforms: classify raw bronze records, type them, find duplicates."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator
from functools import reduce

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
    T.StructField("value", T.StringType(), True),
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
            for i, (topic, value, utf8) in enumerate(
                zip(cols["topic"], cols["value"], cols["value_utf8"], strict=True)
            ):
                event_type = topic_event_types.get(topic)
                if event_type is None:
                    code, detail, version, event_json = (
                        "schema_violation", f"topic {topic!r} carries no known event type",
                        None, None,
                    )
                elif utf8 is False:
                    code, detail, version, event_json = (
                        "invalid_json", "not UTF-8: the record's bytes are not valid UTF-8",
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
    return bronze.select("topic", "partition", "offset", "value", "value_utf8").mapInArrow(
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


_KEPT = ("topic", "partition", "offset")


def contested(
    batch_keys: DataFrame, held_keys: DataFrame, by: tuple[str, ...] = ("event_id",)
) -> DataFrame:
    """The keys (`by`: the event_id and whatever else scopes it) that decide anything:
    held by the batch more than once, or by the batch and `held_keys` (the rows the
    tables already hold). For each, the coordinates of the occurrence kept
    (`first_topic`, `first_partition`, `first_offset`): the earliest held row if
    any, else the batch's earliest record (by topic, partition, offset); and `held`,
    whether that is a held row. Both inputs are keys plus `source_*` coordinates;
    one aggregate over them, so wide rows are never shuffled or sorted."""
    at = F.struct(*(f"source_{c}" for c in _KEPT)).alias("_at")
    rows = batch_keys.select(*by, at, F.lit(False).alias("_held")).unionByName(
        held_keys.select(*by, at, F.lit(True).alias("_held"))
    )
    grouped = rows.groupBy(*by).agg(
        F.count_if(~F.col("_held")).alias("_in_batch"),
        F.min(F.when(F.col("_held"), F.col("_at"))).alias("_held_at"),
        F.min(F.when(~F.col("_held"), F.col("_at"))).alias("_batch_at"),
    )
    held = F.col("_held_at").isNotNull()
    kept = F.coalesce("_held_at", "_batch_at")
    return grouped.filter((F.col("_in_batch") > 1) | ((F.col("_in_batch") == 1) & held)).select(
        *by, *(kept[f"source_{c}"].alias(f"first_{c}") for c in _KEPT), held.alias("held")
    )


def settle(
    batch_keys: DataFrame, contested: DataFrame, by: tuple[str, ...] = ("event_id",)
) -> DataFrame:
    """The batch's records that are not new (keys and coordinates, `first_*` of the
    occurrence kept, see `contested`), with `_duplicate`: true for a later copy in
    the batch or a copy of a held row; false for a record that is itself the held
    row (a replay under a new checkpoint), which is neither new nor a duplicate."""
    joined = batch_keys.join(contested, on=list(by), how="inner")
    is_kept = reduce(
        operator.and_, (F.col(f"source_{c}") == F.col(f"first_{c}") for c in _KEPT)
    )
    return joined.filter(~is_kept | F.col("held")).select(
        *batch_keys.columns, *(f"first_{c}" for c in _KEPT), (~is_kept).alias("_duplicate")
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """Verdicts with an error -> silver.quarantine rows."""
    return classified.filter(F.col("error_code").isNotNull()).select(
        "topic", "partition", "offset", "value", "error_code", "error_detail",
        F.current_timestamp().alias("quarantined_at"),
    )


def duplicate_rows(dups: DataFrame) -> DataFrame:
    """Events seen before (columns of `settle`, `first_*` pointing at the
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
