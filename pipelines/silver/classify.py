"""Classify, silver's first step: a micro-batch of bronze rows -> its valid records,
typed as rows of their silver tables, and its bad records, each with an error code
and the reason (`quarantine_rows`).

The classifier has two halves. Records that are certainly valid are typed in the
JVM by the fast path (`fastpath.fast_classify`); the rest, the suspects, go to the
Python classifier (`classify_records`), which is the definition and says why a
record is bad. The fast half stays a module of its own: it derives the Java pass's
rules and SQL upcasts from the schema files (most of its code), and it is tested
on its own against this one (`tests/test_silver_fastpath.py`); here is how a batch
goes through the two halves (`classify_batch`, which caches both), and the Python
half's pure transforms.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.schemas import registry
from pipelines.silver.cache import BatchCache
from pipelines.silver.fastpath import fast_classify, fast_events, fast_keys, suspects
from pipelines.silver.tables import (
    SOURCE,
    TABLES,
    as_silver_rows,
    coordinate_fields,
    coordinates,
    event_columns,
)


def classify_batch(
    batch: DataFrame, topic_event_types: dict[str, str], max_bytes: int, cache: BatchCache
) -> Classified:
    """The bronze rows of a micro-batch, classified by both halves, each cached in
    `cache`."""
    # Built here, one after the other, before anything reads them: the batch's keys
    # (`Classified.keys`) read both caches from four union branches, which Spark runs
    # as concurrent jobs; building a cache from those, a task can wait for the
    # partition another is building, holding a core idle.
    fast = cache.built(fast_classify(batch, topic_event_types, max_bytes))
    verdicts = cache.built(classify_records(suspects(fast), topic_event_types, max_bytes))
    return Classified(fast, verdicts)


@dataclass(frozen=True)
class Classified:
    """A micro-batch, classified: `fast` holds every record of the batch with its raw
    value (see `fast_classify`), typed when it took the fast path; `verdicts` the
    Python classifier's verdicts on the others (see `classify_records`)."""

    fast: DataFrame
    verdicts: DataFrame

    def events(self, event_type: str) -> DataFrame:
        """The valid records of `event_type` as rows of its silver table."""
        return fast_events(self.fast, event_type).unionByName(
            to_events(self.verdicts, event_type)
        )

    def keys(self) -> DataFrame:
        """(event_type, event_id, event_time, event_date, source coordinates) of every
        valid record: what the dedup needs of them."""
        slow = (
            to_events(self.verdicts, t.event_type).select(
                F.lit(t.event_type).alias("event_type"), "event_id", "event_time",
                "event_date", *coordinates(SOURCE),
            )
            for t in TABLES
        )
        return reduce(DataFrame.unionByName, slow, fast_keys(self.fast))

    def rejected(self) -> DataFrame:
        """The bad records as quarantine rows."""
        return quarantine_rows(self.verdicts)


# ---------------------------------------------------------------- the Python half

CLASSIFIED_SCHEMA = T.StructType([
    *coordinate_fields(),
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


def classify_records(
    bronze: DataFrame, topic_event_types: dict[str, str], max_bytes: int
) -> DataFrame:
    """Bronze rows -> one verdict per record: an error code and detail, or the event
    upcast to the latest version as JSON (`event_json`)."""
    return bronze.select(*coordinates(), "value").mapInArrow(
        _classifier(topic_event_types, max_bytes), CLASSIFIED_SCHEMA
    )


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
                    verdict = registry.classify(event_type, value, max_bytes)
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


def to_events(classified: DataFrame, event_type: str) -> DataFrame:
    """Valid verdicts of one event type -> typed rows of its silver table."""
    wire = F.from_json(
        "event_json", registry.spark_schema(event_type), {"timestampFormat": _TIMESTAMP_FORMAT}
    )
    columns = [F.col(f"e.{name}").alias(field.name) for name, field in event_columns(event_type)]
    valid = classified.filter(F.col("error_code").isNull() & (F.col("event_type") == event_type))
    return as_silver_rows(
        valid.select(wire.alias("e"), "schema_version", *coordinates()),
        [*columns, F.col("schema_version")],
        event_type,
    )


def quarantine_rows(classified: DataFrame) -> DataFrame:
    """Verdicts with an error -> silver.quarantine rows."""
    return classified.filter(F.col("error_code").isNotNull()).select(
        *coordinates(), "value", "error_code", "error_detail",
        F.current_timestamp().alias("quarantined_at"),
    )
