"""Silver table schemas, derived from the latest event schema in `schemas/`, and the
Kafka coordinates that name a record in them.

Wire names are camelCase; silver columns are their snake_case form, except
the two that change meaning: `timestamp` becomes `event_time` and
`schemaVersion` becomes `schema_version` (the version *as received*).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import catalog
from pipelines.catalog import CatalogTable
from pipelines.io.delta import ensure_table
from pipelines.schemas.registry import ERROR_CODES as CLASSIFIER_CODES
from pipelines.schemas.registry import spark_schema
from pipelines.settings import Settings

QUARANTINE = catalog.SILVER_QUARANTINE
# The classifier's codes, and the one the dedup adds.
ERROR_CODES = (*CLASSIFIER_CODES, "duplicate")


@dataclass(frozen=True)
class SilverTable:
    entry: CatalogTable  # where the table is and how it is laid out
    event_type: str  # schema registry name

    @property
    def table(self) -> str:
        """The silver table's name, also the `kafka.topics` key of its source topic."""
        return self.entry.table


TABLES = tuple(
    SilverTable(entry, catalog.EVENT_TYPES[entry.table])
    for entry in (catalog.SILVER_USER_ACTIONS, catalog.SILVER_CONTENT_UPLOADS,
                  catalog.SILVER_SYSTEM_EVENTS)
)
BY_TABLE = {t.table: t for t in TABLES}


@dataclass(frozen=True)
class SilverConf:
    """What a silver micro-batch needs of the settings, as plain values."""

    paths: Mapping[str, str]  # silver table name (event tables and quarantine) -> path
    topic_types: Mapping[str, str]  # source topic name -> event type
    max_record_bytes: int
    broadcast_max_rows: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SilverConf:
        return cls(
            paths={t.table: t.path(settings) for t in (*(t.entry for t in TABLES), QUARANTINE)},
            topic_types={settings.topic(t.table).name: t.event_type for t in TABLES},
            max_record_bytes=settings.streaming.max_record_bytes,
            broadcast_max_rows=settings.streaming.broadcast_max_rows,
        )

_RENAMES = {"timestamp": "event_time", "schemaVersion": "schema_version"}

# A record's Kafka coordinates, its identity. Bronze and the quarantine name them bare;
# a silver row names its own record's under SOURCE, and the dedup names another
# record's under a prefix of its own (`dedup.FIRST`, `dedup.HELD`).
_COORDINATES = T.StructType([
    T.StructField("topic", T.StringType(), False),
    T.StructField("partition", T.IntegerType(), False),
    T.StructField("offset", T.LongType(), False),
])
SOURCE = "source_"


def coordinates(prefix: str = "") -> list[str]:
    """The names of the coordinate columns under `prefix`, in (topic, partition,
    offset) order."""
    return [f"{prefix}{name}" for name in _COORDINATES.fieldNames()]


def coordinate_fields(prefix: str = "") -> list[T.StructField]:
    """The coordinate columns under `prefix`, typed."""
    return [T.StructField(f"{prefix}{f.name}", f.dataType, f.nullable)
            for f in _COORDINATES.fields]


def renamed_coordinates(old: str, new: str) -> list[Column]:
    """The coordinate columns under prefix `old`, renamed to prefix `new`."""
    return [F.col(a).alias(b) for a, b in zip(coordinates(old), coordinates(new), strict=True)]


SOURCE_COLUMNS = T.StructType(coordinate_fields(SOURCE))


def snake_case(name: str) -> str:
    return _RENAMES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_columns(event_type: str) -> list[tuple[str, T.StructField]]:
    """(wire name, silver field) of every field of the latest version, event id first;
    a field is nullable exactly when the schema does not require it."""
    fields = [f for f in spark_schema(event_type).fields if f.name != "schemaVersion"]
    fields.sort(key=lambda f: f.name != "eventId")
    return [(f.name, T.StructField(snake_case(f.name), f.dataType, f.nullable)) for f in fields]


def silver_schema(event_type: str) -> T.StructType:
    """The full schema of a silver event table, in column order."""
    return T.StructType([
        *(field for _, field in event_columns(event_type)),
        T.StructField("schema_version", T.IntegerType(), False),
        *SOURCE_COLUMNS.fields,
        T.StructField("processed_at", T.TimestampType(), False),
        T.StructField("event_date", T.DateType(), False),
    ])


def as_silver_rows(records: DataFrame, event: list[Column], event_type: str) -> DataFrame:
    """Records with Kafka coordinates + the columns of their typed `event` -> rows of
    the event type's silver table, in its column order."""
    return (
        records.select(
            *event,
            *renamed_coordinates("", SOURCE),
            F.current_timestamp().alias("processed_at"),
        )
        .withColumn("event_date", F.to_date("event_time"))
        .select(*silver_schema(event_type).fieldNames())
    )


QUARANTINE_SCHEMA = T.StructType([
    *coordinate_fields(),
    T.StructField("value", T.BinaryType(), True),  # the bytes as Kafka delivered them
    T.StructField("error_code", T.StringType(), False),
    T.StructField("error_detail", T.StringType(), False),
    T.StructField("quarantined_at", T.TimestampType(), False),
])


def ensure_silver_table(spark: SparkSession, path: str, event_type: str) -> None:
    """Create the empty silver table of `event_type` at `path` if missing: the silver
    job does it, and so does every gold job reading it, so either may start first."""
    empty = spark.createDataFrame([], silver_schema(event_type))
    entry = next(t.entry for t in TABLES if t.event_type == event_type)
    ensure_table(spark, path, empty, entry)
