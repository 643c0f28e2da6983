"""Streaming queries: the Delta stream source and the one way every job starts a query.

`start_stream` names the query, checkpoints it under its name, runs it in a scheduler
pool of its name and triggers it from the settings; what differs between jobs is the
source and the sink: a `DeltaAppend` (bronze) or a foreachBatch body (every other
job), retried on a Delta commit conflict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

from pipelines.io.conflicts import retrying_batches
from pipelines.settings import Settings, StreamingSettings

_POOL = "spark.scheduler.pool"

# A foreachBatch body: (micro-batch, batch id). Idempotent for a batch id: it runs
# again after a crash or a commit conflict.
BatchBody = Callable[[DataFrame, int], None]


@dataclass(frozen=True)
class DeltaAppend:
    """Sink: append to the Delta table at `path`. The Delta sink records (query id,
    batch id) in the table's log, so a replayed micro-batch is skipped: exactly once."""

    path: str
    partition_by: tuple[str, ...] = ()


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


def start_stream(
    settings: Settings,
    name: str,
    source: DataFrame,
    sink: BatchBody | DeltaAppend,
    *,
    available_now: bool,
) -> StreamingQuery:
    """Start the query `name` from the stream `source` into `sink`: a `DeltaAppend`, or
    a foreachBatch body, run again on a Delta commit conflict (`retrying_batches`).

    The checkpoint is `settings.lakehouse.checkpoint(name)` and the scheduler pool is
    `name`; the query drains what is there and stops (`available_now`), or runs on the
    `streaming.trigger` interval."""
    writer = _sink_writer(source, sink, settings.streaming)
    writer = writer.queryName(name).option(
        "checkpointLocation", settings.lakehouse.checkpoint(name)
    )
    return _start_in_pool(writer, available_now, settings.streaming.trigger, pool=name)


def _sink_writer(
    source: DataFrame, sink: BatchBody | DeltaAppend, streaming: StreamingSettings
) -> DataStreamWriter:
    if isinstance(sink, DeltaAppend):
        writer = source.writeStream.format("delta").outputMode("append")
        if sink.partition_by:
            writer = writer.partitionBy(*sink.partition_by)
        return writer.option("path", sink.path)
    return source.writeStream.foreachBatch(retrying_batches(sink, streaming))


def _start_in_pool(
    writer: DataStreamWriter, available_now: bool, interval: str, pool: str
) -> StreamingQuery:
    """Start `writer` available-now or on a processing-time trigger of `interval`.

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
