"""Every lakehouse table and streaming query, as data: the single source of a table's
name, path, layer, keys, partitioning, properties and owning job.

Jobs take their tables from here (`catalog.SILVER_USER_ACTIONS.path(settings)`, or
`catalog.table("silver.user_actions")` for a name that comes from data), and so do
`maintain`, `status`, `quality` and the notebooks. A leaf module, depending on the
settings only (no Spark, no job module), so that every layer, ops and a notebook can
import it. A table appears here when its job first writes it;
tests/test_maintenance.py checks the catalog against the jobs that write the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.settings import Settings


@dataclass(frozen=True)
class CatalogTable:
    layer: str
    table: str
    # The streaming query (its name) or `lakehouse` command that creates and writes the
    # table; None for a table no job writes.
    job: str | None
    # The columns a row is identified by, which the job merges or deduplicates on;
    # empty for a table only ever appended or replaced whole.
    keys: tuple[str, ...] = ()
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


# Bronze is only ever read front to back by the silver stream: no useful sort key.
BRONZE_EVENTS = CatalogTable("bronze", "events", "bronze_events", partition_by=("ingest_date",))

# An event id is unique within its silver table (the silver job's dedup key).
# gold.playback_sessions and reconcile read all actions of (user, media) pairs.
SILVER_USER_ACTIONS = CatalogTable(
    "silver", "user_actions", "silver_events", keys=("event_id",),
    partition_by=("event_date",), zorder_by=("user_id", "media_id"),
    stats_columns=("event_time", "user_id", "media_id"),
)
SILVER_CONTENT_UPLOADS = CatalogTable(
    "silver", "content_uploads", "silver_events", keys=("event_id",),
    partition_by=("event_date",), zorder_by=("creator_id",),
    stats_columns=("event_time", "creator_id"),
)
SILVER_SYSTEM_EVENTS = CatalogTable(
    "silver", "system_events", "silver_events", keys=("event_id",),
    partition_by=("event_date",), zorder_by=("service", "host"),
    stats_columns=("event_time", "service", "host"),
)
# One row per rejected Kafka record, by its coordinates.
# The event type (schema registry name) each silver event table holds; a silver table's
# name is also the `kafka.topics` key of its source topic.
EVENT_TYPES = {
    SILVER_USER_ACTIONS.table: "user_action",
    SILVER_CONTENT_UPLOADS.table: "content_upload",
    SILVER_SYSTEM_EVENTS.table: "system_event",
}
SILVER_QUARANTINE = CatalogTable(
    "silver", "quarantine", "silver_events", keys=("topic", "partition", "offset"),
    zorder_by=("topic", "error_code"), stats_columns=("topic", "error_code", "partition", "offset"),
)

# Gold is partitioned by a date of each row (which column it is the date of:
# pipelines.gold.engagement.DATE_SOURCE).
GOLD_MEDIA_ENGAGEMENT = CatalogTable(
    "gold", "media_engagement", "gold_media_engagement", keys=("media_id", "window_start"),
    partition_by=("window_date",), zorder_by=("media_id", "window_start"),
)
GOLD_PLAYBACK_SESSIONS = CatalogTable(
    "gold", "playback_sessions", "gold_engagement", keys=("session_id",),
    partition_by=("session_date",), zorder_by=("user_id", "media_id"),
)
GOLD_USER_DAILY_ENGAGEMENT = CatalogTable(
    "gold", "user_daily_engagement", "gold_engagement", keys=("event_date", "user_id"),
    partition_by=("event_date",), zorder_by=("user_id",),
)
GOLD_DAILY_ACTIVE_USERS = CatalogTable(
    "gold", "daily_active_users", "gold_engagement", keys=("event_date",),
    partition_by=("event_date",),
)
GOLD_NOTIFICATIONS = CatalogTable(
    "gold", "notifications", "gold_notifications", keys=("notification_id",),
    zorder_by=("user_id",),
)

# Serving looks recommendations up by user. Both tables are replaced whole by each run.
FEATURES_USER_RECOMMENDATIONS = CatalogTable(
    "features", "user_recommendations", "retrain", zorder_by=("user_id",)
)
FEATURES_ITEM_POPULARITY = CatalogTable("features", "item_popularity", "retrain")
FEATURES_TRAINING_RUNS = CatalogTable("features", "training_runs", "retrain")

OPS_LATE_EVENTS = CatalogTable("ops", "late_events", "gold_engagement", keys=("event_id",))
# Moved duplicates, by the Kafka coordinates of the copy moved.
OPS_DUPLICATE_SWEEPS = CatalogTable(
    "ops", "duplicate_sweeps", "reconcile",
    keys=("source_topic", "source_partition", "source_offset"),
)
OPS_GOLD_PROGRESS = CatalogTable("ops", "gold_progress", "gold_engagement", keys=("batch_id",))
OPS_HOST_STATUS = CatalogTable("ops", "host_status", "gold_health", keys=("host", "service"))
OPS_SERVICE_HEALTH_MINUTE = CatalogTable(
    "ops", "service_health_minute", "gold_health", keys=("service", "minute"),
    zorder_by=("service", "minute"),
)
OPS_HEALTH_ALERTS = CatalogTable("ops", "health_alerts", "gold_health", keys=("alert_id",))
OPS_QUALITY_RESULTS = CatalogTable("ops", "quality_results", "quality")
OPS_MAINTENANCE_LOG = CatalogTable(
    "ops", "maintenance_log", "maintain", keys=("run_id", "table", "operation")
)
# Listed since `maintain` and `status` were written; no job of this version writes it.
OPS_STREAM_PROGRESS = CatalogTable("ops", "stream_progress", None)

# Catalog order: the order `maintain` and `status` walk the tables in.
TABLES: tuple[CatalogTable, ...] = (
    BRONZE_EVENTS,
    SILVER_USER_ACTIONS,
    SILVER_CONTENT_UPLOADS,
    SILVER_SYSTEM_EVENTS,
    SILVER_QUARANTINE,
    GOLD_MEDIA_ENGAGEMENT,
    GOLD_PLAYBACK_SESSIONS,
    GOLD_USER_DAILY_ENGAGEMENT,
    GOLD_DAILY_ACTIVE_USERS,
    GOLD_NOTIFICATIONS,
    FEATURES_USER_RECOMMENDATIONS,
    FEATURES_ITEM_POPULARITY,
    FEATURES_TRAINING_RUNS,
    OPS_LATE_EVENTS,
    OPS_DUPLICATE_SWEEPS,
    OPS_GOLD_PROGRESS,
    OPS_HOST_STATUS,
    OPS_SERVICE_HEALTH_MINUTE,
    OPS_HEALTH_ALERTS,
    OPS_QUALITY_RESULTS,
    OPS_MAINTENANCE_LOG,
    OPS_STREAM_PROGRESS,
)
BY_NAME = {t.name: t for t in TABLES}


def table(name: str) -> CatalogTable:
    """The catalog table `name` (`<layer>.<table>`), for names that come from data (a
    quality suite, a stream's source, a notebook's argument)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a table of the catalog (pipelines/catalog.py)") from None


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
