"""Reconcile gold with late events, and rebuild gold from silver.

The engagement stream records events older than its watermark in ops.late_events
instead of refreshing their keys. `reconcile` refreshes those keys now, with the same
recompute functions the stream uses, then marks the events reconciled. Run it with
the stream stopped, or accept that a concurrent MERGE on the same gold table may
fail with a Delta conflict (rerunning is safe: it is idempotent).
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.gold.engagement import (
    KEY_COLUMNS,
    EngagementConf,
    ensure_tables,
    gold_frames,
    refresh,
)
from pipelines.io.delta import latest_commit
from pipelines.settings import Settings


def _mark_reconciled(spark: SparkSession, conf: EngagementConf, events: DataFrame) -> None:
    (
        DeltaTable.forPath(spark, conf.late_events).alias("t")
        .merge(events.select("event_id").alias("s"), "t.event_id = s.event_id")
        .whenMatchedUpdate(
            condition="t.reconciled_at IS NULL",
            set={"reconciled_at": F.current_timestamp()},
        )
        .execute()
    )


def reconcile(spark: SparkSession, settings: Settings) -> dict[str, int]:
    """Recompute the gold keys of every unreconciled late event and mark them reconciled.

    Returns counts: late_events, windows, sessions, user_days, days (rows recomputed).
    """
    conf = EngagementConf.from_settings(settings)
    ensure_tables(spark, conf)
    pending = (
        spark.read.format("delta").load(conf.late_events)
        .filter(F.col("reconciled_at").isNull())
        .select(*KEY_COLUMNS)
        # Pinned: late events recorded while we run are left for the next reconcile.
        .localCheckpoint(eager=True)
    )
    late_events = pending.count()
    if not late_events:
        return {"late_events": 0, "windows": 0, "sessions": 0, "user_days": 0, "days": 0}
    counts = refresh(spark, conf, pending)
    _mark_reconciled(spark, conf, pending)
    return {"late_events": late_events, **counts}


def recompute_all(spark: SparkSession, settings: Settings) -> dict[str, int]:
    """Rebuild every gold engagement table from the whole of silver.user_actions (run
    with the stream stopped). Late events included in the rebuild are marked
    reconciled. Returns the row count of each table."""
    conf = EngagementConf.from_settings(settings)
    ensure_tables(spark, conf)
    silver = DeltaTable.forPath(spark, conf.silver)
    # One snapshot for the rebuild and for deciding which late events it covers.
    version = latest_commit(silver)["version"]
    actions = spark.read.format("delta").option("versionAsOf", version).load(conf.silver)
    counts = {}
    for table, frame in gold_frames(actions, conf).items():
        frame.write.format("delta").mode("overwrite").save(conf.gold[table])
        counts[table] = spark.read.format("delta").load(conf.gold[table]).count()
    covered = (
        spark.read.format("delta").load(conf.late_events)
        .filter(F.col("reconciled_at").isNull())
        .join(actions.select("event_id"), on="event_id", how="left_semi")
    )
    _mark_reconciled(spark, conf, covered)
    return counts
