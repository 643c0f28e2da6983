"""Silver job: bronze.events -> silver event tables + silver.quarantine.

A micro-batch flows one way (`process_batch`): `classify` types the valid records
and says why the others are bad, `dedup` finds the valid ones that are not new, and
`write` appends the rest to their tables and the bad ones and duplicates to the
quarantine.

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
within its event-time span (`dedup.held`) and catches a resend however late it comes.
An id reused with another timestamp is caught by the sweep of `lakehouse reconcile`
(`pipelines.silver.sweep`).
"""

from __future__ import annotations

from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.io.delta import ensure_table
from pipelines.io.streams import read_delta_stream, start_stream
from pipelines.settings import Settings
from pipelines.silver.cache import BatchCache
from pipelines.silver.classify import classify_batch
from pipelines.silver.dedup import settle
from pipelines.silver.tables import (
    QUARANTINE,
    QUARANTINE_SCHEMA,
    TABLES,
    SilverConf,
    ensure_silver_table,
)
from pipelines.silver.write import write_batch

QUERY_NAME = "silver_events"
# Set by Spark on the thread that runs a micro-batch; stable across restarts from the
# same checkpoint, new for a new checkpoint.
_QUERY_ID_PROPERTY = "sql.streaming.queryId"


def process_batch(
    batch: DataFrame, batch_id: int, conf: SilverConf, app_id: str | None = None
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
    cache = BatchCache(conf.broadcast_max_rows)
    try:
        records = classify_batch(batch, dict(conf.topic_types), conf.max_record_bytes, cache)
        settled = settle(spark, conf, records.keys(), cache)
        write_batch(conf, records, settled, app_id, batch_id)
    finally:
        cache.release()


def ensure_silver(spark: SparkSession, settings: Settings) -> None:
    """Create the silver tables and the quarantine if missing (once, before batches)."""
    for table in TABLES:
        ensure_silver_table(spark, table.entry.path(settings), table.event_type)
    ensure_table(
        spark, QUARANTINE.path(settings), spark.createDataFrame([], QUARANTINE_SCHEMA), QUARANTINE
    )


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    from pipelines.bronze import ensure_bronze

    ensure_bronze(spark, settings)
    ensure_silver(spark, settings)
    bronze = read_delta_stream(spark, catalog.BRONZE_EVENTS.path(settings), settings.streaming)
    body = partial(process_batch, conf=SilverConf.from_settings(settings))
    return [start_stream(settings, QUERY_NAME, bronze, body, available_now=available_now)]
