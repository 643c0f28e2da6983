"""Silver job: bronze.events -> silver event tables + silver.quarantine.

Exactly once without streaming state: every write is an insert-only MERGE
(events keyed on event_id, quarantine on topic/partition/offset), so a
micro-batch replayed after a crash adds nothing it already added. A record
is a duplicate only if its event_id is already held by a *different* Kafka
record; a replayed record finds itself and is skipped.

Deduplication has no time horizon: each batch looks up its event ids in the
event_date partitions it touches (a resend has the same timestamp, hence the
same partition), and the MERGE itself guards the whole table, so a resend
days later is still caught.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.io.delta import ensure_table, merge_insert_new, read_delta_stream, start_with_trigger
from pipelines.settings import Settings
from pipelines.silver.tables import (
    LAYER,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    TABLES,
    SilverTable,
    silver_schema,
)
from pipelines.silver.transforms import (
    classify_records,
    duplicate_rows,
    quarantine_rows,
    rank_in_batch,
    to_events,
)

QUERY_NAME = "silver_events"
_COORDS = ["source_topic", "source_partition", "source_offset"]


def _target(spark: SparkSession, settings: Settings, table: SilverTable) -> DeltaTable:
    empty = spark.createDataFrame([], silver_schema(table.event_type))
    path = settings.lakehouse.table_path(LAYER, table.table)
    return ensure_table(spark, path, empty, partition_by=["event_date"])


def _split_new_and_duplicates(
    ranked: DataFrame, target: DeltaTable
) -> tuple[DataFrame, DataFrame]:
    """(first occurrences not yet in silver, duplicates) of one batch's events.

    Records already in silver under their own coordinates are a replay: neither.
    """
    dates = [r[0] for r in ranked.select("event_date").distinct().collect()]
    held = (
        target.toDF()
        .filter(F.col("event_date").isin(dates))
        .select("event_id", *(F.col(c).alias(f"held_{c}") for c in _COORDS))
    )
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
    new = joined.filter(is_first & ~held_any)
    # Point a duplicate at the occurrence that was kept: the held row if any.
    dups = joined.filter(~held_self & (~is_first | held_any)).select(
        *ranked.columns[: -3],
        *(
            F.coalesce(F.col(f"held_{c}"), F.col(f"first_{c.removeprefix('source_')}")).alias(
                f"first_{c.removeprefix('source_')}"
            )
            for c in _COORDS
        ),
    )
    return new, dups


def _duplicates_beyond_lookup(inserted: DataFrame, target: DeltaTable) -> DataFrame:
    """Rows the MERGE refused although the partition lookup found no twin: their
    event_id is held in another event_date (a producer reused an id with a new
    timestamp). Rare; found by a lookup over the whole table."""
    held = target.toDF().select(
        "event_id", *(F.col(c).alias(f"first_{c.removeprefix('source_')}") for c in _COORDS)
    )
    return inserted.join(held, on="event_id", how="inner").filter(
        (F.col("first_topic") != F.col("source_topic"))
        | (F.col("first_partition") != F.col("source_partition"))
        | (F.col("first_offset") != F.col("source_offset"))
    )


def process_batch(batch: DataFrame, batch_id: int, settings: Settings) -> None:
    """One micro-batch of bronze rows -> silver tables and quarantine, idempotently."""
    spark = batch.sparkSession
    topic_types = {settings.topic(t.table).name: t.event_type for t in TABLES}
    classified = classify_records(
        batch, topic_types, settings.streaming.max_record_bytes
    ).persist()
    # Duplicate rows stay lazy until the quarantine MERGE at the end; keeping their
    # inputs cached until then stops Spark from classifying the batch a second time.
    cached: list[DataFrame] = [classified]
    try:
        rejected = [quarantine_rows(classified)]
        for table in TABLES:
            target = _target(spark, settings, table)
            ranked = rank_in_batch(to_events(classified, table.event_type, keep_value=True))
            new, dups = _split_new_and_duplicates(ranked.persist(), target)
            new = new.select(*silver_schema(table.event_type).fieldNames(), "value").persist()
            cached += [ranked, new]
            expected = new.count()
            if expected:
                inserted = merge_insert_new(target, new.drop("value"), ["event_id"])
                if inserted != expected:
                    dups = dups.unionByName(
                        _duplicates_beyond_lookup(new, target).select(*dups.columns)
                    )
            rejected.append(duplicate_rows(dups))
        quarantine = ensure_table(
            spark,
            settings.lakehouse.table_path(LAYER, QUARANTINE),
            spark.createDataFrame([], QUARANTINE_SCHEMA),
        )
        all_rejected = rejected[0]
        for more in rejected[1:]:
            all_rejected = all_rejected.unionByName(more)
        merge_insert_new(quarantine, all_rejected, ["topic", "partition", "offset"])
    finally:
        for frame in cached:
            frame.unpersist()


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    from pipelines.bronze import ensure_bronze

    ensure_bronze(spark, settings)
    bronze = read_delta_stream(
        spark,
        settings.lakehouse.table_path("bronze", "events"),
        settings.streaming.max_files_per_trigger,
    )
    writer = (
        bronze.writeStream.queryName(QUERY_NAME)
        .foreachBatch(lambda df, batch_id: process_batch(df, batch_id, settings))
        .option("checkpointLocation", settings.lakehouse.checkpoint(QUERY_NAME))
    )
    return [start_with_trigger(writer, available_now, settings.streaming.trigger)]
