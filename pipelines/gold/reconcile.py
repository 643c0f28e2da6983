"""Reconcile gold with late events and swept duplicates, and rebuild gold from silver.

The engagement stream records events older than its watermark in ops.late_events
instead of refreshing their keys; the duplicate sweep moves ids held twice in silver
to quarantine and logs them to ops.duplicate_sweeps. `reconcile` runs the sweep, then
refreshes the keys of both with the same recompute functions the stream uses, and
marks them reconciled. Run it with
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
from pipelines.silver.sweep import COORDS, SWEEPS, sweep_duplicates


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


def _mark_swept(spark: SparkSession, sweeps: str, moved: DataFrame) -> None:
    coords = " AND ".join(f"t.{c} = s.{c}" for c in COORDS)
    (
        DeltaTable.forPath(spark, sweeps).alias("t")
        .merge(moved.select(*COORDS).alias("s"), coords)
        .whenMatchedUpdate(
            condition="t.reconciled_at IS NULL", set={"reconciled_at": F.current_timestamp()}
        )
        .execute()
    )


def reconcile(spark: SparkSession, settings: Settings) -> dict[str, int]:
    """Sweep silver for event ids held twice (pipelines.silver.sweep), then recompute
    the gold keys of every unreconciled late event and moved duplicate, and mark them
    reconciled.

    Returns counts: duplicates (moved to quarantine now), late_events, swept (moved
    actions whose gold keys were recomputed), windows, sessions, user_days, days.
    """
    duplicates = sweep_duplicates(spark, settings)
    conf = EngagementConf.from_settings(settings)
    ensure_tables(spark, conf)
    sweeps = SWEEPS.path(settings)
    # Pinned: rows recorded while we run are left for the next reconcile.
    late = (
        spark.read.format("delta").load(conf.late_events)
        .filter(F.col("reconciled_at").isNull())
        .select(*KEY_COLUMNS)
        .localCheckpoint(eager=True)
    )
    swept = (
        spark.read.format("delta").load(sweeps)
        .filter(F.col("reconciled_at").isNull() & (F.col("event_type") == "user_action"))
        .select(*KEY_COLUMNS, *COORDS)
        .localCheckpoint(eager=True)
    )
    late_events, swept_events = late.count(), swept.count()
    counts = {"windows": 0, "sessions": 0, "user_days": 0, "days": 0}
    if late_events or swept_events:
        counts = refresh(spark, conf, late.unionByName(swept.select(*KEY_COLUMNS)))
        _mark_reconciled(spark, conf, late)
        _mark_swept(spark, sweeps, swept)
    return {"duplicates": duplicates, "late_events": late_events, "swept": swept_events,
            **counts}


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
