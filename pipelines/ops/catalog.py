"""Every lakehouse table and streaming query, as data: what `maintain` and `status` walk.

The table list is kept here by hand (a table appears when its job first writes), and
tests/test_maintenance.py checks it against the names the jobs themselves declare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from pipelines.settings import Settings


@dataclass(frozen=True)
class CatalogTable:
    layer: str
    table: str
    partition_by: tuple[str, ...] = ()
    # Columns worth Z-ordering once the table is large: the keys readers look rows up by.
    # Never a partition column (Delta refuses it).
    zorder_by: tuple[str, ...] = ()
    # Columns Delta keeps min/max statistics of (`delta.dataSkippingStatsColumns`) for
    # the tables of the hot path; empty: Delta's default, the first 32 columns. Stats
    # of every column cost the silver writer ~10 % of a batch, and a random event id's
    # min/max skips nothing: the columns readers filter or Z-order by are enough.
    stats_columns: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.table}"

    def path(self, settings: Settings) -> str:
        return settings.lakehouse.table_path(self.layer, self.table)

    @property
    def properties(self) -> dict[str, str]:
        """Delta table properties to create the table with."""
        if not self.stats_columns:
            return {}
        return {"delta.dataSkippingStatsColumns": ",".join(self.stats_columns)}


TABLES: tuple[CatalogTable, ...] = (
    # Bronze is only ever read front to back by the silver stream: no useful sort key.
    CatalogTable("bronze", "events", ("ingest_date",)),
    # gold.playback_sessions and reconcile read all actions of (user, media) pairs.
    CatalogTable("silver", "user_actions", ("event_date",), ("user_id", "media_id"),
                 ("event_time", "user_id", "media_id")),
    CatalogTable("silver", "content_uploads", ("event_date",), ("creator_id",),
                 ("event_time", "creator_id")),
    CatalogTable("silver", "system_events", ("event_date",), ("service", "host"),
                 ("event_time", "service", "host")),
    CatalogTable("silver", "quarantine", (), ("topic", "error_code"),
                 ("topic", "error_code", "partition", "offset")),
    # Gold is partitioned by date (pipelines.gold.engagement.PARTITION_DATE).
    CatalogTable("gold", "media_engagement", ("window_date",), ("media_id", "window_start")),
    CatalogTable("gold", "playback_sessions", ("session_date",), ("user_id", "media_id")),
    CatalogTable("gold", "user_daily_engagement", ("event_date",), ("user_id",)),
    CatalogTable("gold", "daily_active_users", ("event_date",)),
    CatalogTable("gold", "notifications", (), ("user_id",)),
    # Serving looks recommendations up by user.
    CatalogTable("features", "user_recommendations", (), ("user_id",)),
    CatalogTable("features", "item_popularity"),
    CatalogTable("features", "training_runs"),
    CatalogTable("ops", "late_events"),
    CatalogTable("ops", "duplicate_sweeps"),
    CatalogTable("ops", "gold_progress"),
    CatalogTable("ops", "host_status"),
    CatalogTable("ops", "service_health_minute", (), ("service", "minute")),
    CatalogTable("ops", "health_alerts"),
    CatalogTable("ops", "quality_results"),
    CatalogTable("ops", "maintenance_log"),
    CatalogTable("ops", "stream_progress"),
)
BY_NAME = {t.name: t for t in TABLES}


@dataclass(frozen=True)
class StreamSource:
    """A streaming query and what it reads: Kafka (the source topics) or a Delta table."""

    query: str  # also its checkpoint name: settings.lakehouse.checkpoint(query)
    source: str  # "kafka" or a catalog table name
    target: str  # the main table it writes, for display

    @property
    def is_kafka(self) -> bool:
        return self.source == "kafka"


STREAMS: tuple[StreamSource, ...] = (
    StreamSource("bronze_events", "kafka", "bronze.events"),
    StreamSource("silver_events", "bronze.events", "silver.*"),
    StreamSource("gold_media_engagement", "silver.user_actions", "gold.media_engagement"),
    StreamSource("gold_engagement", "silver.user_actions", "gold.playback_sessions, ..."),
    StreamSource("gold_notifications", "silver.content_uploads", "gold.notifications"),
    StreamSource("gold_health", "silver.system_events", "ops.host_status, ..."),
)


def existing_tables(spark: SparkSession, settings: Settings) -> Iterator[CatalogTable]:
    """The catalog tables that exist as Delta tables under the configured root, in
    catalog order."""
    for table in TABLES:
        if DeltaTable.isDeltaTable(spark, table.path(settings)):
            yield table
