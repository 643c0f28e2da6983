"""Silver job: bronze.events -> silver event tables + silver.quarantine.

Records are typed by Spark built-ins when certainly valid (`fastpath`); the
rest go through the Python classifier, which says why a record is bad.

Exactly once without streaming state:
- every table is written with an idempotent append (`txnAppId` = the query id,
  `txnVersion` = the batch id): a micro-batch replayed after a crash skips the
  tables it already wrote;
- a record is new only if no row of the table holds its event_id; a duplicate
  only if its event_id is held by a *different* Kafka record, so a record found
  under its own coordinates (a replay under a new checkpoint) is neither;
- quarantine rows are appended only for (topic, partition, offset) not yet there.

Deduplication has no time horizon: the lookup covers the whole table (its
event_id and coordinate columns only), so a resend days later, or an id reused
with another timestamp, is still caught.
"""

from __future__ import annotations

from functools import partial, reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.io.conflicts import retrying_batches
from pipelines.io.delta import append_once, ensure_table, read_delta_stream, start_with_trigger
from pipelines.settings import Settings
from pipelines.silver.fastpath import fast_classify, fast_events, suspects
from pipelines.silver.tables import (
    LAYER,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    TABLES,
    ensure_silver_table,
    silver_schema,
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
_QUARANTINE_KEYS = ["topic", "partition", "offset"]
# What a duplicate's quarantine row is made of (see transforms.duplicate_rows).
_DUPLICATE_COLUMNS = ["event_id", *_COORDS, "first_topic", "first_partition", "first_offset"]
# Set by Spark on the thread that runs a micro-batch; stable across restarts from the
# same checkpoint, new for a new checkpoint.
_QUERY_ID_PROPERTY = "sql.streaming.queryId"


def ensure_silver(spark: SparkSession, settings: Settings) -> None:
    """Create the silver tables and the quarantine if missing (once, before batches)."""
    for table in TABLES:
        ensure_silver_table(
            spark, settings.lakehouse.table_path(LAYER, table.table), table.event_type
        )
    ensure_table(
        spark,
        settings.lakehouse.table_path(LAYER, QUARANTINE),
        spark.createDataFrame([], QUARANTINE_SCHEMA),
    )


def _flag(ranked: DataFrame, held: DataFrame) -> DataFrame:
    """`ranked` (see `rank_in_batch`) plus `_new` and `_duplicate` flags against the
    rows the table already `held` (event_id and coordinates, at most one per id);
    `first_*` of a duplicate points at the occurrence kept (the held row if any)."""
    held = held.select("event_id", *(F.col(c).alias(f"held_{c}") for c in _COORDS))
    joined = ranked.join(held, on="event_id", how="left")
    is_first = (
        (F.col("source_topic") == F.col("first_topic"))
        & (F.col("source_partition") == F.col("first_partition"))
        & (F.col("source_offset") == F.col("first_offset"))
    )
    held_any = F.col("held_source_topic").isNotNull()
    # coalesce: with no held row the comparison is NULL, and NOT NULL filters nothing in.
    held_self = F.coalesce(
        (F.col("held_source_topic") == F.col("source_topic"))
        & (F.col("held_source_partition") == F.col("source_partition"))
        & (F.col("held_source_offset") == F.col("source_offset")),
        F.lit(False),
    )
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


def _sized(small: DataFrame, cached: list[DataFrame], max_rows: int) -> DataFrame:
    """`small` cached, and marked for a broadcast when it is small enough: the
    repeated ids of a batch and the rows already held for its ids are usually a
    handful, but a replay under a new checkpoint finds every id held."""
    small = small.persist()
    cached.append(small)
    return F.broadcast(small) if small.count() <= max_rows else small


def _with_values(dups: DataFrame, batch: DataFrame) -> DataFrame:
    """Duplicates with their raw value, read again from the batch: carrying every
    record's value through the classification, ranking and caches would cost far
    more than fetching the few that turn out duplicates (`dups` should come from
    `_sized`, so that the batch's values are not shuffled)."""
    values = batch.select(
        *(F.col(c.removeprefix("source_")).alias(c) for c in _COORDS), "value"
    )
    return dups.join(values, on=_COORDS, how="inner")


def process_batch(
    batch: DataFrame, batch_id: int, settings: Settings, app_id: str | None = None
) -> None:
    """One micro-batch of bronze rows -> silver tables and quarantine (created by
    `ensure_silver`), idempotently.

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
    classified = classify_records(suspects(fast), topic_types, max_bytes).persist()
    cached: list[DataFrame] = [fast, classified]
    sized = partial(_sized, cached=cached, max_rows=settings.streaming.broadcast_max_rows)
    try:
        duplicates: list[DataFrame] = []
        for table in TABLES:
            path = settings.lakehouse.table_path(LAYER, table.table)
            events = fast_events(fast, table.event_type).unionByName(
                to_events(classified, table.event_type)
            )
            keys = events.select("event_id", *_COORDS)
            repeated = sized(repeated_ids(keys))
            held = (
                spark.read.format("delta").load(path).select("event_id", *_COORDS)
                .join(keys.select("event_id"), on="event_id", how="left_semi")
            )
            flagged = _flag(rank_in_batch(events, repeated), sized(held))
            new = flagged.filter("_new").select(*silver_schema(table.event_type).fieldNames())
            append_once(new, path, app_id, batch_id)
            duplicates.append(flagged.filter("_duplicate").select(*_DUPLICATE_COLUMNS))
        dups = reduce(DataFrame.unionByName, duplicates)
        rejected = quarantine_rows(classified).unionByName(
            duplicate_rows(_with_values(sized(dups), batch))
        )
        quarantine = settings.lakehouse.table_path(LAYER, QUARANTINE)
        already = spark.read.format("delta").load(quarantine).select(*_QUARANTINE_KEYS)
        append_once(
            rejected.join(already, on=_QUARANTINE_KEYS, how="left_anti").select(
                *QUARANTINE_SCHEMA.fieldNames()
            ),
            quarantine, app_id, batch_id,
        )
    finally:
        for frame in cached:
            frame.unpersist()


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    from pipelines.bronze import ensure_bronze

    ensure_bronze(spark, settings)
    ensure_silver(spark, settings)
    bronze = read_delta_stream(
        spark,
        settings.lakehouse.table_path("bronze", "events"),
        settings.streaming.max_files_per_trigger,
    )
    writer = (
        bronze.writeStream.queryName(QUERY_NAME)
        .foreachBatch(retrying_batches(
            lambda df, batch_id: process_batch(df, batch_id, settings), settings.streaming
        ))
        .option("checkpointLocation", settings.lakehouse.checkpoint(QUERY_NAME))
    )
    return [start_with_trigger(writer, available_now, settings.streaming.trigger, QUERY_NAME)]
