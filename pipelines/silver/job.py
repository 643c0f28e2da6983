"""Silver job: bronze.events -> silver event tables + silver.quarantine.

Records are typed in the JVM when certainly valid (`fastpath`); the rest go
through the Python classifier, which says why a record is bad.

Exactly once without streaming state:
- every table is written with an idempotent append (`txnAppId` = the query id,
  `txnVersion` = the batch id): a micro-batch replayed after a crash skips the
  tables it already wrote;
- a record is new only if no row of the table holds its event_id; a duplicate
  only if its event_id is held by a *different* Kafka record, so a record found
  under its own coordinates (a replay under a new checkpoint) is neither;
- quarantine rows are appended only for (topic, partition, offset) not yet there.

Deduplication has no time horizon, and costs what the batch touches: a resend
carries its event's timestamp, so the lookup reads the batch's event-date partitions
within its event-time span (`_held`) and catches a resend however late it comes. An
id reused with another timestamp is caught by the sweep of `lakehouse reconcile`
(`pipelines.silver.sweep`).
"""

from __future__ import annotations

import operator
from functools import partial, reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.io.concurrent import side_by_side
from pipelines.io.delta import append_once, ensure_table
from pipelines.io.streams import read_delta_stream, start_stream
from pipelines.settings import Settings
from pipelines.silver.fastpath import fast_classify, fast_events, fast_keys, suspects
from pipelines.silver.tables import (
    QUARANTINE,
    QUARANTINE_SCHEMA,
    SOURCE_COLUMNS,
    TABLES,
    ensure_silver_table,
)
from pipelines.silver.transforms import (
    classify_records,
    duplicate_rows,
    quarantine_rows,
    rank_in_batch,
    repeated_ids,
    to_events,
)

QUERY_NAME = "silver_events"
_COORDS = ["source_topic", "source_partition", "source_offset"]

# Dedup is per silver table: an event_id is unique within its event type.
_KEY = ("event_type", "event_id")
_QUARANTINE_KEYS = list(QUARANTINE.keys)
# What a duplicate's quarantine row is made of (see transforms.duplicate_rows).
_DUPLICATE_COLUMNS = ["event_id", *_COORDS, "first_topic", "first_partition", "first_offset"]
# Set by Spark on the thread that runs a micro-batch; stable across restarts from the
# same checkpoint, new for a new checkpoint.
_QUERY_ID_PROPERTY = "sql.streaming.queryId"


def ensure_silver(spark: SparkSession, settings: Settings) -> None:
    """Create the silver tables and the quarantine if missing (once, before batches)."""
    for table in TABLES:
        ensure_silver_table(spark, table.entry.path(settings), table.event_type)
    ensure_table(
        spark, QUARANTINE.path(settings), spark.createDataFrame([], QUARANTINE_SCHEMA), QUARANTINE
    )


def same_record(a: str, b: str) -> Column:
    """Whether the Kafka coordinates (topic, partition, offset) under column prefix
    `a` equal those under prefix `b`."""
    return reduce(operator.and_, (
        F.col(f"{a}{c}") == F.col(f"{b}{c}") for c in ("topic", "partition", "offset")
    ))


def _flag(ranked: DataFrame, held: DataFrame, by: tuple[str, ...]) -> DataFrame:
    """`ranked` (see `rank_in_batch`) plus `_new` and `_duplicate` flags against the
    rows the tables already `held` (key `by` and coordinates, at most one per key);
    `first_*` of a duplicate points at the occurrence kept (the held row if any)."""
    held = held.select(*by, *(F.col(c).alias(f"held_{c}") for c in _COORDS))
    joined = ranked.join(held, on=list(by), how="left")
    is_first = same_record("source_", "first_")
    held_any = F.col("held_source_topic").isNotNull()
    # coalesce: with no held row the comparison is NULL, and NOT NULL filters nothing in.
    held_self = F.coalesce(same_record("held_source_", "source_"), F.lit(False))
    return joined.select(
        *ranked.columns[:-3],
        *(
            F.coalesce(F.col(f"held_{c}"), F.col(f"first_{c.removeprefix('source_')}")).alias(
                f"first_{c.removeprefix('source_')}"
            )
            for c in _COORDS
        ),
        (is_first & ~held_any).alias("_new"),
        (~held_self & (~is_first | held_any)).alias("_duplicate"),
    )


def _sized(
    small: DataFrame, cached: list[DataFrame], max_rows: int
) -> tuple[DataFrame, DataFrame]:
    """`small` cached, and the same marked for a broadcast (to join with) when it is
    small enough: the repeated ids of a batch and the rows already held for its ids
    are usually a handful, but a replay under a new checkpoint finds every id held."""
    small = small.persist()
    cached.append(small)
    return small, (F.broadcast(small) if small.count() <= max_rows else small)


def _batch_keys(fast: DataFrame, classified: DataFrame) -> DataFrame:
    """(event_type, event_id, event_time, event_date, source coordinates) of every
    valid record of the batch."""
    slow = (
        to_events(classified, t.event_type).select(
            F.lit(t.event_type).alias("event_type"), "event_id", "event_time", "event_date",
            *_COORDS,
        )
        for t in TABLES
    )
    return reduce(DataFrame.unionByName, slow, fast_keys(fast))


def _held(spark: SparkSession, settings: Settings, keys: DataFrame) -> DataFrame:
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
        spark.read.format("delta").load(t.entry.path(settings))
        .filter(F.col("event_date").isin(by_type[t.event_type]["dates"]))
        .filter(F.col("event_time").between(
            F.expr(f"timestamp'{by_type[t.event_type]['low']}'"),
            F.expr(f"timestamp'{by_type[t.event_type]['high']}'")))
        .select(F.lit(t.event_type).alias("event_type"), "event_id", *_COORDS)
        for t in TABLES if t.event_type in by_type
    ]
    held_keys = keys.select(*_KEY)
    if not tables:  # a batch without valid records: nothing is held
        no_coords = (F.lit(None).cast(f.dataType).alias(f.name) for f in SOURCE_COLUMNS.fields)
        return held_keys.select(*_KEY, *no_coords).limit(0)
    return reduce(DataFrame.unionByName, tables).join(held_keys, on=list(_KEY), how="left_semi")


def _with_values(dups: DataFrame, fast: DataFrame) -> DataFrame:
    """Duplicates with their raw value, from the batch's cache (`fast_classify` keeps
    every record's value): the batch is read once, and the few duplicates (from
    `_sized`, so broadcast) are joined to it without shuffling the values."""
    values = fast.select(
        *(F.col(c.removeprefix("source_")).alias(c) for c in _COORDS), "value"
    )
    return dups.join(values, on=_COORDS, how="inner")


def _new_events(
    fast: DataFrame, classified: DataFrame, not_new: DataFrame, event_type: str
) -> DataFrame:
    """The batch's valid records of `event_type` as silver rows, minus those in
    `not_new` (coordinates of later copies, copies of held rows and replays)."""
    events = fast_events(fast, event_type).unionByName(to_events(classified, event_type))
    coords = not_new.filter(F.col("event_type") == event_type).select(*_COORDS)
    return events.join(coords, on=_COORDS, how="left_anti")


def _append_rejected(
    settings: Settings,
    classified: DataFrame,
    settled: DataFrame,
    settled_to_join: DataFrame,
    fast: DataFrame,
    app_id: str,
    batch_id: int,
) -> None:
    """Bad records and duplicates -> quarantine, except rows it already holds (by
    Kafka coordinates: a replay under a new checkpoint). `settled`: the batch's
    not-new records, cached (`_sized`), `settled_to_join` the same marked for a
    broadcast."""
    spark = fast.sparkSession
    rejected = quarantine_rows(classified)
    # Checked on the cached frame, in this write's thread: the emptiness check is a
    # Spark job that need not hold up the other tables' writes.
    if not settled.filter("_duplicate").isEmpty():
        dups = settled_to_join.filter("_duplicate").select(*_DUPLICATE_COLUMNS)
        rejected = rejected.unionByName(duplicate_rows(_with_values(dups, fast)))
    quarantine = QUARANTINE.path(settings)
    # Only the batch's own offset ranges can hold a replayed record: with offset
    # statistics, Delta skips every file of other ranges (the cost is the batch's).
    ranges = fast.groupBy("topic", "partition").agg(
        F.min("offset").alias("low"), F.max("offset").alias("high")
    ).collect()
    in_batch = reduce(operator.or_, (
        (F.col("topic") == r["topic"]) & (F.col("partition") == r["partition"])
        & F.col("offset").between(r["low"], r["high"])
        for r in ranges
    ), F.lit(False))
    already = (
        spark.read.format("delta").load(quarantine).filter(in_batch).select(*_QUARANTINE_KEYS)
    )
    append_once(
        rejected.join(already, on=_QUARANTINE_KEYS, how="left_anti").select(
            *QUARANTINE_SCHEMA.fieldNames()
        ),
        quarantine, app_id, batch_id,
    )


def process_batch(
    batch: DataFrame, batch_id: int, settings: Settings, app_id: str | None = None
) -> None:
    """One micro-batch of bronze rows -> silver tables and quarantine (created by
    `ensure_silver`), idempotently.

    The dedup is decided on the keys alone (event type, event id, coordinates):
    the few records that are not new are found with broadcast joins against the
    batch's repeated ids and the ids the tables already hold, and the wide rows
    are written once, minus those. The four tables are written side by side: most
    of a small table's append is Delta's driver-side work, not the executors'.

    `app_id` names the writer for Delta's idempotent appends; by default the id of
    the streaming query running the batch.
    """
    spark = batch.sparkSession
    if app_id is None:
        query_id = spark.sparkContext.getLocalProperty(_QUERY_ID_PROPERTY)
        if not query_id:
            raise ValueError("process_batch outside a streaming query needs an app_id")
        app_id = f"{QUERY_NAME}-{query_id}"
    topic_types = {settings.topic(t.table).name: t.event_type for t in TABLES}
    max_bytes = settings.streaming.max_record_bytes
    fast = fast_classify(batch, topic_types, max_bytes).persist()
    cached: list[DataFrame] = [fast]
    sized = partial(_sized, cached=cached, max_rows=settings.streaming.broadcast_max_rows)
    try:
        # Built here, one after the other, before anything reads them: the keys below
        # read both caches from four union branches, which Spark runs as concurrent
        # jobs; building a cache from those, a task can wait for the partition another
        # is building, holding a core idle.
        fast.count()
        classified = classify_records(suspects(fast), topic_types, max_bytes).persist()
        cached.append(classified)
        classified.count()
        keys = _batch_keys(fast, classified)
        _, repeated = sized(repeated_ids(keys, _KEY))
        _, held = sized(_held(spark, settings, keys))
        # Every record that is not new: a later copy in the batch, a copy of a held
        # row, or a held row itself (a replay under a new checkpoint).
        settled, settled_to_join = sized(
            _flag(rank_in_batch(keys, repeated, _KEY), held, _KEY).filter(~F.col("_new"))
        )
        # The quarantine first: its jobs are small, but queued behind the big table's
        # tasks (FIFO within the pool) they ran after it, a tail of mostly idle cores.
        writes = [partial(
            _append_rejected, settings, classified, settled, settled_to_join, fast, app_id,
            batch_id,
        )]
        writes += [
            partial(
                append_once,
                _new_events(fast, classified, settled_to_join, table.event_type),
                table.entry.path(settings), app_id, batch_id,
            )
            for table in TABLES
        ]
        side_by_side(spark, writes)
    finally:
        # Dependents first: uncaching a frame re-plans every cached frame built on it,
        # and the fast path's plan is large (about 20 s per batch in this order).
        for frame in reversed(cached):
            frame.unpersist()


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    from pipelines.bronze import ensure_bronze

    ensure_bronze(spark, settings)
    ensure_silver(spark, settings)
    bronze = read_delta_stream(spark, catalog.BRONZE_EVENTS.path(settings), settings.streaming)
    return [start_stream(
        settings, QUERY_NAME, bronze, partial(process_batch, settings=settings),
        available_now=available_now,
    )]
