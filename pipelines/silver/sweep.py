"""The duplicate sweep (part of `lakehouse reconcile`): event ids held more than once in
a silver table.

The silver stream looks a batch's ids up in the event-date partitions its records
name, within their event-time span, so its cost is the batch's, not the table's
history. A resend carries its event's timestamp and is caught there; an id reused
with another timestamp is not. The
sweep finds those across the whole table (key columns only) and moves every copy but
the first (by Kafka coordinates, as within a batch) to quarantine as a `duplicate`,
then deletes it from silver: bronze = silver + quarantine holds again. Each moved
record is logged to ops.duplicate_sweeps with the gold keys it fed, and `reconcile`
recomputes those keys (pipelines.gold.reconcile).
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import catalog
from pipelines.io.delta import ensure_table, merge_insert_new
from pipelines.settings import Settings
from pipelines.silver.dedup import FIRST, duplicate_rows, rank_in_batch, repeated_ids, same_record
from pipelines.silver.job import ensure_silver
from pipelines.silver.tables import (
    QUARANTINE,
    SOURCE,
    SOURCE_COLUMNS,
    TABLES,
    coordinate_fields,
    coordinates,
    renamed_coordinates,
)

SWEEPS = catalog.OPS_DUPLICATE_SWEEPS
COORDS = coordinates(SOURCE)
# What a moved user action fed gold (the columns of its keys there); null for others.
GOLD_KEYS = [("user_id", T.StringType()), ("media_id", T.StringType()),
             ("event_time", T.TimestampType()), ("event_date", T.DateType())]
SWEEPS_SCHEMA = T.StructType([
    T.StructField("event_type", T.StringType(), False),
    T.StructField("event_id", T.StringType(), False),
    *SOURCE_COLUMNS.fields,
    *coordinate_fields(FIRST),
    *(T.StructField(name, kind, True) for name, kind in GOLD_KEYS),
    T.StructField("swept_at", T.TimestampType(), False),
    # Set once gold has been recomputed without the moved row (by reconcile).
    T.StructField("reconciled_at", T.TimestampType(), True),
])


def later_copies(events: DataFrame) -> DataFrame:
    """Rows (event_id + source coordinates) of ids that `events` holds more than once,
    except the first copy of each; `first_*` names the copy kept."""
    keys = events.select("event_id", *COORDS)
    ranked = rank_in_batch(keys, repeated_ids(keys))
    return ranked.filter(~same_record(SOURCE, FIRST))


def _log(silver: DataFrame, later: DataFrame, event_type: str) -> DataFrame:
    """ops.duplicate_sweeps rows of the `later` copies, with their gold keys."""
    keys = [F.col(name) if name in silver.columns else F.lit(None).cast(kind).alias(name)
            for name, kind in GOLD_KEYS]
    rows = silver.select(*COORDS, *keys).join(F.broadcast(later), on=COORDS, how="inner")
    return rows.select(
        F.lit(event_type).alias("event_type"), "event_id", *COORDS,
        *coordinates(FIRST), *(name for name, _ in GOLD_KEYS),
        F.current_timestamp().alias("swept_at"), F.lit(None).cast("timestamp").alias(
            "reconciled_at"),
    )


def _quarantine_rows(spark: SparkSession, settings: Settings, later: DataFrame) -> DataFrame:
    """`later` as quarantine rows, their raw values read back from bronze."""
    values = (
        spark.read.format("delta").load(catalog.BRONZE_EVENTS.path(settings))
        .select(*renamed_coordinates("", SOURCE), "value")
        .join(F.broadcast(later.select(*COORDS)), on=COORDS, how="left_semi")
    )
    return duplicate_rows(later.join(values, on=COORDS, how="inner"))


def sweep_duplicates(spark: SparkSession, settings: Settings) -> int:
    """Move every later copy of a repeated event id out of each silver table: logged
    (with its gold keys, unreconciled), quarantined, then deleted, in that order, so a
    run cut short anywhere is finished by the next. Returns the rows moved."""
    ensure_silver(spark, settings)
    sweeps = SWEEPS.path(settings)
    ensure_table(spark, sweeps, spark.createDataFrame([], SWEEPS_SCHEMA), SWEEPS)
    quarantine = DeltaTable.forPath(spark, QUARANTINE.path(settings))
    moved = 0
    for table in TABLES:
        path = table.entry.path(settings)
        silver = spark.read.format("delta").load(path)
        # Pinned: rows the stream appends meanwhile wait for the next sweep.
        later = later_copies(silver).localCheckpoint(eager=True)
        count = later.count()
        if not count:
            continue
        merge_insert_new(DeltaTable.forPath(spark, sweeps), _log(silver, later, table.event_type),
                         SWEEPS.keys)
        merge_insert_new(quarantine, _quarantine_rows(spark, settings, later), QUARANTINE.keys)
        condition = " AND ".join(f"t.{c} = s.{c}" for c in COORDS)
        (
            DeltaTable.forPath(spark, path).alias("t")
            .merge(F.broadcast(later.select(*COORDS)).alias("s"), condition)
            .whenMatchedDelete()
            .execute()
        )
        moved += count
    return moved
