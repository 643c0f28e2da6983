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


_SOURCE = ("source_topic", "source_partition", "source_offset")
_FIRST = ("first_topic", "first_partition", "first_offset")


def settle(keys: DataFrame, held: DataFrame, by: tuple[str, ...] = ("event_id",)) -> DataFrame:
    """The records of a batch that are not new, found from keys alone.

    `keys`: `by` (the event id and whatever scopes it) and the Kafka coordinates
    (source_topic, source_partition, source_offset) of every valid record of the
    batch; `held`: the same columns of the rows the tables already hold (at most one
    per key; rows of other keys do no harm). A record is new when its key is neither
    held nor earlier in the batch (by topic, partition, offset): those are left out.
    The rest come with `first_*`, the coordinates of the occurrence kept (the held
    row if any, else the batch's earliest), and `_duplicate`: false only for a held
    row found again under its own coordinates (a replay), which is neither new nor a
    duplicate.

    One aggregation over the batch's keys and the held ones finds the few keys that
    matter (repeated in the batch, or held); the result is the batch's rows of those
    keys (`interesting_keys` returns the keys alone, to size them for a broadcast).
    """
    return settle_with(keys, interesting_keys(keys, held, by), by)


def interesting_keys(keys: DataFrame, held: DataFrame, by: tuple[str, ...]) -> DataFrame:
    """The keys of `keys` held already or seen twice in it (see `settle`): `by`,
    `_first` (the batch's earliest coordinates) and `_held` (the held row's, or null),
    both as structs of the source columns."""
    coords = F.struct(*_SOURCE)
    none = F.when(F.lit(False), coords)  # a null of the same struct type
    seen = keys.select(*by, coords.alias("_batch"), none.alias("_held"))
    kept = held.select(*by, none.alias("_batch"), coords.alias("_held"))
    return (
        seen.unionByName(kept)
        .groupBy(*by)
        .agg(F.count("_batch").alias("_n"), F.min("_batch").alias("_first"),
             F.max("_held").alias("_held"))
        .filter((F.col("_n") > 1) | ((F.col("_n") == 1) & F.col("_held").isNotNull()))
        .drop("_n")
    )


def settle_with(keys: DataFrame, interesting: DataFrame, by: tuple[str, ...]) -> DataFrame:
    """`settle` given `interesting_keys(keys, held, by)` (sized by the caller)."""
    coords = F.struct(*_SOURCE)
    joined = keys.join(interesting, on=list(by), how="inner")
    is_first = coords == F.col("_first")
    held_any = F.col("_held").isNotNull()
    # coalesce: with no held row the comparison is NULL, and NOT NULL filters nothing in.
    held_self = F.coalesce(coords == F.col("_held"), F.lit(False))
    kept = F.coalesce(F.col("_held"), F.col("_first"))
    return joined.filter(~(is_first & ~held_any)).select(
        *keys.columns,
        *(kept[source].alias(first) for source, first in zip(_SOURCE, _FIRST, strict=True)),
        (~held_self & (~is_first | held_any)).alias("_duplicate"),
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """Verdicts with an error -> silver.quarantine rows."""
    return classified.filter(F.col("error_code").isNotNull()).select(
        "topic", "partition", "offset", "value", "error_code", "error_detail",
        F.current_timestamp().alias("quarantined_at"),
    )


def duplicate_rows(dups: DataFrame) -> DataFrame:
    """Events seen before (columns of `settle`, `first_*` pointing at the occurrence
    kept, plus the raw `value`) -> quarantine rows with code `duplicate`."""
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
