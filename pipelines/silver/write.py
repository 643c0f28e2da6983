"""Write, silver's last step: a micro-batch's new records to their silver tables, its
bad records and duplicates to the quarantine, each an idempotent append (`txnAppId`,
`txnVersion`) so a batch replayed after a crash skips the tables it already wrote.
"""

from __future__ import annotations

import operator
from functools import partial, reduce

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.io.concurrent import side_by_side
from pipelines.io.delta import append_once
from pipelines.silver.cache import Sized
from pipelines.silver.classify import Classified
from pipelines.silver.dedup import FIRST, duplicate_rows
from pipelines.silver.tables import (
    QUARANTINE,
    QUARANTINE_SCHEMA,
    SOURCE,
    TABLES,
    SilverConf,
    coordinates,
    renamed_coordinates,
)

_QUARANTINE_KEYS = list(QUARANTINE.keys)
# What a duplicate's quarantine row is made of (see dedup.duplicate_rows).
_DUPLICATE_COLUMNS = ["event_id", *coordinates(SOURCE), *coordinates(FIRST)]


def write_batch(
    conf: SilverConf, records: Classified, settled: Sized, app_id: str, batch_id: int
) -> None:
    """The batch's `records` -> the silver tables (minus the `settled` ones: not new,
    see `dedup.settle`) and the quarantine, by the writer `app_id` as its `batch_id`."""
    # The quarantine first: its jobs are small, but queued behind the big table's
    # tasks (FIFO within the pool) they ran after it, a tail of mostly idle cores.
    writes = [partial(_append_rejected, conf, records, settled, app_id, batch_id)]
    writes += [
        partial(
            append_once,
            _new_events(records, settled.to_join, table.event_type),
            conf.paths[table.table], app_id, batch_id,
        )
        for table in TABLES
    ]
    side_by_side(records.fast.sparkSession, writes)


def _new_events(records: Classified, not_new: DataFrame, event_type: str) -> DataFrame:
    """The batch's valid records of `event_type` as silver rows, minus those in
    `not_new` (coordinates of later copies, copies of held rows and replays)."""
    coords = not_new.filter(F.col("event_type") == event_type).select(*coordinates(SOURCE))
    return records.events(event_type).join(coords, on=coordinates(SOURCE), how="left_anti")


def _append_rejected(
    conf: SilverConf, records: Classified, settled: Sized, app_id: str, batch_id: int
) -> None:
    """Bad records and duplicates -> quarantine, except rows it already holds (by
    Kafka coordinates: a replay under a new checkpoint). `settled`: the batch's
    not-new records, cached, and the same marked for a broadcast."""
    spark = records.fast.sparkSession
    rejected = records.rejected()
    # Checked on the cached frame, in this write's thread: the emptiness check is a
    # Spark job that need not hold up the other tables' writes.
    if not settled.cached.filter("_duplicate").isEmpty():
        dups = settled.to_join.filter("_duplicate").select(*_DUPLICATE_COLUMNS)
        rejected = rejected.unionByName(duplicate_rows(_with_values(dups, records.fast)))
    quarantine = conf.paths[QUARANTINE.table]
    # Only the batch's own offset ranges can hold a replayed record: with offset
    # statistics, Delta skips every file of other ranges (the cost is the batch's).
    ranges = records.fast.groupBy("topic", "partition").agg(
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


def _with_values(dups: DataFrame, fast: DataFrame) -> DataFrame:
    """Duplicates with their raw value, from the batch's cache (`fast_classify` keeps
    every record's value): the batch is read once, and the few duplicates (sized by
    `dedup.settle`, so broadcast) are joined to it without shuffling the values."""
    values = fast.select(*renamed_coordinates("", SOURCE), "value")
    return dups.join(values, on=coordinates(SOURCE), how="inner")
