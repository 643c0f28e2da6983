"""Deduplicate, silver's second step: which of a micro-batch's valid records are not
new, decided on their keys alone (event type, event id, Kafka coordinates).

A record is new only if no row of its table holds its event_id and it is the first
of its id in the batch (by coordinates); a duplicate only if its event_id is held by
a *different* Kafka record, so a record found under its own coordinates (a replay
under a new checkpoint) is neither. The few records that are not new are found with
broadcast joins against the batch's repeated ids (`repeated_ids`) and the ids the
tables already hold (`held`).

Coordinates of another record than the row's own are named under a prefix: FIRST
for the occurrence kept, HELD for the one a silver table holds. `settle` (which
caches) and `held` (which reads the tables) run Spark jobs; the rest are pure.
"""

from __future__ import annotations

import operator
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.silver.cache import BatchCache, Sized
from pipelines.silver.tables import (
    SOURCE,
    SOURCE_COLUMNS,
    TABLES,
    SilverConf,
    coordinates,
    renamed_coordinates,
)

FIRST, HELD = "first_", "held_"
# Dedup is per silver table: an event_id is unique within its event type.
_KEY = ("event_type", "event_id")


def settle(spark: SparkSession, conf: SilverConf, keys: DataFrame, cache: BatchCache) -> Sized:
    """The records of `keys` (see `Classified.keys`) that are not new, with the flags
    `_new` (false) and `_duplicate`, and `first_*` the coordinates of the occurrence
    kept; cached in `cache`, and marked for a broadcast when small."""
    repeated = cache.sized(repeated_ids(keys, _KEY)).to_join
    # Looked up as `held` of this module at each call (bench/run.py swaps it).
    in_tables = cache.sized(held(spark, conf, keys)).to_join
    # Every record that is not new: a later copy in the batch, a copy of a held
    # row, or a held row itself (a replay under a new checkpoint).
    return cache.sized(
        flag(rank_in_batch(keys, repeated, _KEY), in_tables, _KEY).filter(~F.col("_new"))
    )


def repeated_ids(events: DataFrame, by: tuple[str, ...] = ("event_id",)) -> DataFrame:
    """`by` (the event_id, and whatever else scopes it) plus the coordinates
    (first_topic, first_partition, first_offset) of its earliest record (by topic,
    partition, offset), for every key that `events` holds more than once. An
    aggregate of the keys and coordinates only, so wide rows are never shuffled or
    sorted."""
    first = F.min(F.struct(*coordinates(SOURCE)))
    return (
        events.groupBy(*by)
        .agg(F.count(F.lit(1)).alias("_n"), first.alias("_first"))
        .filter(F.col("_n") > 1)
        .select(*by, *renamed_coordinates(f"_first.{SOURCE}", FIRST))
    )


def held(spark: SparkSession, conf: SilverConf, keys: DataFrame) -> DataFrame:
    """(event_type, event_id, source coordinates) of the rows the silver tables
    already hold for the ids of `keys`, looked up where a copy of the batch's records
    can be: in the event-date partitions they name, within their event-time span (key
    columns only). A resend carries its event's timestamp, so it lands there; with
    event_time statistics on silver's files, Delta reads the files of the batch's time
    span, not the tables' history nor a whole day. An id reused with another
    timestamp is found by `lakehouse reconcile` (`pipelines.silver.sweep`)."""
    fmt = "yyyy-MM-dd HH:mm:ss.SSSSSS"
    spans = keys.groupBy("event_type").agg(
        F.array_sort(F.collect_set("event_date")).alias("dates"),
        F.date_format(F.min("event_time"), fmt).alias("low"),
        F.date_format(F.max("event_time"), fmt).alias("high"),
    ).collect()
    by_type = {row["event_type"]: row for row in spans}
    tables = [
        spark.read.format("delta").load(conf.paths[t.table])
        .filter(F.col("event_date").isin(by_type[t.event_type]["dates"]))
        .filter(F.col("event_time").between(
            F.expr(f"timestamp'{by_type[t.event_type]['low']}'"),
            F.expr(f"timestamp'{by_type[t.event_type]['high']}'")))
        .select(F.lit(t.event_type).alias("event_type"), "event_id", *coordinates(SOURCE))
        for t in TABLES if t.event_type in by_type
    ]
    held_keys = keys.select(*_KEY)
    if not tables:  # a batch without valid records: nothing is held
        no_coords = (F.lit(None).cast(f.dataType).alias(f.name) for f in SOURCE_COLUMNS.fields)
        return held_keys.select(*_KEY, *no_coords).limit(0)
    return reduce(DataFrame.unionByName, tables).join(held_keys, on=list(_KEY), how="left_semi")


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
            F.coalesce(F.col(first), F.col(source)).alias(first)
            for first, source in zip(coordinates(FIRST), coordinates(SOURCE), strict=True)
        ),
    )


def flag(ranked: DataFrame, held_rows: DataFrame, by: tuple[str, ...]) -> DataFrame:
    """`ranked` (see `rank_in_batch`) plus `_new` and `_duplicate` flags against the
    rows the tables already hold (`held_rows`: key `by` and coordinates, at most one
    per key); `first_*` of a duplicate points at the occurrence kept (the held row if
    any)."""
    first, held_at = coordinates(FIRST), coordinates(HELD)
    joined = ranked.join(
        held_rows.select(*by, *renamed_coordinates(SOURCE, HELD)), on=list(by), how="left"
    )
    is_first = same_record(SOURCE, FIRST)
    # A table's coordinates are never null: they all are exactly when no row is held.
    held_any = reduce(operator.and_, (F.col(c).isNotNull() for c in held_at))
    # coalesce: with no held row the comparison is NULL, and NOT NULL filters nothing in.
    held_self = F.coalesce(same_record(HELD, SOURCE), F.lit(False))
    return joined.select(
        *(c for c in ranked.columns if c not in first),
        *(F.coalesce(F.col(h), F.col(f)).alias(f) for h, f in zip(held_at, first, strict=True)),
        (is_first & ~held_any).alias("_new"),
        (~held_self & (~is_first | held_any)).alias("_duplicate"),
    )


def same_record(a: str, b: str) -> Column:
    """Whether the Kafka coordinates (topic, partition, offset) under column prefix
    `a` equal those under prefix `b`."""
    return reduce(operator.and_, (
        F.col(x) == F.col(y) for x, y in zip(coordinates(a), coordinates(b), strict=True)
    ))


def duplicate_rows(dups: DataFrame) -> DataFrame:
    """Events seen before (columns of `rank_in_batch`, `first_*` pointing at the
    occurrence kept, plus the raw `value`) -> quarantine rows with code `duplicate`."""
    detail = F.format_string(
        "duplicate: event_id %s was already accepted from %s[%d]@%d",
        F.col("event_id"), *(F.col(c) for c in coordinates(FIRST)),
    )
    return dups.select(
        *renamed_coordinates(SOURCE, ""),
        F.col("value"),
        F.lit("duplicate").alias("error_code"),
        detail.alias("error_detail"),
        F.current_timestamp().alias("quarantined_at"),
    )
