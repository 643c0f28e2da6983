"""Delta table readers and writers shared by the jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from delta.tables import DeltaTable
from pyspark import SparkContext
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

if TYPE_CHECKING:
    from pipelines.catalog import CatalogTable
    from pipelines.settings import StreamingSettings

_POOL = "spark.scheduler.pool"


class TableLayoutError(RuntimeError):
    """A table on disk is laid out differently from what this version writes."""


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def latest_commit(table: DeltaTable) -> Row:
    """The newest row of `table`'s history (`version`, `timestamp`, `operation`,
    `operationMetrics`, ...)."""
    commit = table.history(1).first()
    # A Delta table has at least the commit that created it.
    assert commit is not None
    return commit


def ensure_table(
    spark: SparkSession, path: str, like: DataFrame, layout: CatalogTable
) -> DeltaTable:
    """Create an empty Delta table with `like`'s schema if none exists at `path`,
    partitioned and with the table properties its catalog entry `layout` names; an
    existing table is left as it is."""
    if not table_exists(spark, path):
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(like.schema)
        if layout.partition_by:
            builder = builder.partitionedBy(*layout.partition_by)
        for key, value in layout.properties.items():
            builder = builder.property(key, value)
        builder.execute()
    return DeltaTable.forPath(spark, path)


def read_delta_stream(spark: SparkSession, path: str, streaming: StreamingSettings) -> DataFrame:
    """A Delta table as a stream source, its micro-batches bounded by the
    `max_files_per_trigger` and `max_bytes_per_trigger` settings (when set).

    Commits that delete or rewrite rows (the duplicate sweep of `reconcile`) are
    skipped, not streamed and not a failure: whoever deletes corrects downstream."""
    reader = spark.readStream.format("delta").option("skipChangeCommits", "true")
    if streaming.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", streaming.max_files_per_trigger)
    if streaming.max_bytes_per_trigger:
        reader = reader.option("maxBytesPerTrigger", streaming.max_bytes_per_trigger)
    return reader.load(path)


def delta_append_stream(
    df: DataFrame, path: str, checkpoint: str, partition_by: Sequence[str] = ()
) -> DataStreamWriter:
    """Append to a Delta table; the Delta sink records (query id, batch id) in the
    table's log, so a replayed micro-batch is skipped: exactly once."""
    writer = (
        df.writeStream.format("delta")
        .outputMode("append")
        .option("checkpointLocation", checkpoint)
    )
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    return writer.option("path", path)


def start_with_trigger(
    writer: DataStreamWriter, available_now: bool, interval: str, pool: str
) -> StreamingQuery:
    """Start a query that drains what is there and stops (`available_now`), or one
    that runs on a processing-time trigger of `interval`.

    Its jobs run in the scheduler pool `pool` (the query thread inherits the local
    property): with `spark.scheduler.mode=FAIR`, queries sharing a driver take turns
    on the cores instead of queueing behind one another's jobs.
    """
    context = SparkContext.getOrCreate()  # the running one
    context.setLocalProperty(_POOL, pool)
    try:
        if available_now:
            return writer.trigger(availableNow=True).start()
        return writer.trigger(processingTime=interval).start()
    finally:
        # None unsets the property (as pyspark's docstring says); its annotation says str.
        context.setLocalProperty(_POOL, cast(str, None))


def append_once(df: DataFrame, path: str, app_id: str, version: int) -> None:
    """Append `df` to the Delta table at `path` unless the writer `app_id` already
    committed `version` (or a later one) there: Delta's idempotent writes, recorded in
    the table's log, so a micro-batch replayed after a crash appends nothing twice.
    Cheaper than a MERGE: one write, no scan of the target."""
    (
        df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", version)
        .save(path)
    )


def merge_insert_new(
    target: DeltaTable, updates: DataFrame, keys: Sequence[str], extra_condition: str = ""
) -> int:
    """Insert the rows of `updates` whose `keys` are not yet in `target`; return how
    many were inserted.

    An insert-only MERGE is idempotent: replaying the same rows after a crash
    adds nothing, which is what makes foreachBatch sinks exactly-once.
    """
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if extra_condition:
        condition = f"{condition} AND {extra_condition}"
    metrics = (
        target.alias("t")
        .merge(updates.alias("s"), condition)
        .whenNotMatchedInsertAll()
        .execute()
        .first()
    )
    # The metrics row of a MERGE; a MERGE that changed nothing may commit nothing.
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0
