"""Gold engagement jobs: silver.user_actions -> gold.media_engagement (query
`gold_media_engagement`), and gold.playback_sessions, gold.user_daily_engagement,
gold.daily_active_users (query `gold_engagement`).

Stateless, exact and replay-safe. Each micro-batch only says *which keys* changed;
their values are recomputed from the silver table itself and upserted, so an
out-of-order event (which can merge or split sessions, or change the watch time of an
earlier play) lands correctly, and replaying a batch writes the same rows again.

What a batch reads is bounded by what it touches, not by history: a window (the
silver files of its time span, by event_time statistics), a user's day, and for
sessions the time range its events can change (`session_ranges`), each read from
silver's event-date partitions; a day's actives are counted from the day's user rows.
Gold tables are partitioned by date and the MERGEs name their keys' dates and time
range as literals, so Delta reads the touched partitions only.

Two queries, so that the media windows (cheap: a window is five minutes of one
media) are not held up by sessions and user days, which cost several times more per
batch.

Lateness (`gold_engagement` only): a batch's watermark is the max event time of all
EARLIER batches (kept in ops.gold_progress, one row per batch id, so a replayed batch
sees the same value) minus `gold.watermark`. Older events are recorded in
ops.late_events and left for `lakehouse reconcile` (pipelines.gold.reconcile), which
recomputes their keys. `gold_media_engagement` refreshes the window of every event,
late or not: one window costs the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.catalog import CatalogTable
from pipelines.features.fresh import FreshConf, keep_fresh
from pipelines.gold.transforms import (
    annotate_plays,
    daily_active_users,
    media_engagement,
    session_ranges,
    sessionize,
    touched_dates,
    touched_user_days,
    touched_windows,
    user_daily_engagement,
    watch_read_dates,
    window_start,
)
from pipelines.io.concurrent import side_by_side
from pipelines.io.delta import TableLayoutError, ensure_table, merge_insert_new
from pipelines.io.streams import read_delta_stream, start_stream
from pipelines.settings import Settings
from pipelines.silver.tables import ensure_silver_table, silver_schema

QUERY_NAME = "gold_engagement"
WINDOWS_QUERY_NAME = "gold_media_engagement"
# The gold tables of both queries, by name (the key of the frames and paths below).
GOLD_TABLES = {
    t.table: t
    for t in (
        catalog.GOLD_MEDIA_ENGAGEMENT,
        catalog.GOLD_PLAYBACK_SESSIONS,
        catalog.GOLD_USER_DAILY_ENGAGEMENT,
        catalog.GOLD_DAILY_ACTIVE_USERS,
    )
}
MEDIA_ENGAGEMENT = catalog.GOLD_MEDIA_ENGAGEMENT.table
PLAYBACK_SESSIONS = catalog.GOLD_PLAYBACK_SESSIONS.table
USER_DAILY = catalog.GOLD_USER_DAILY_ENGAGEMENT.table
DAILY_ACTIVE = catalog.GOLD_DAILY_ACTIVE_USERS.table
# What `gold_engagement` keeps of its lateness decisions.
PROGRESS = catalog.OPS_GOLD_PROGRESS
LATE_EVENTS = catalog.OPS_LATE_EVENTS

GOLD_KEYS = {name: list(t.keys) for name, t in GOLD_TABLES.items()}


def _date_column(table: CatalogTable) -> str:
    """The one date column a gold table is partitioned by."""
    (column,) = table.partition_by
    return column


# Each gold table is partitioned by a date: a batch's MERGE names the dates it touches,
# and Delta reads those partitions only, however long the history (and however the
# files of a day were compacted or Z-ordered). The date of a window or a session is
# its start's, which never changes for a key (a session's id names its first action):
# the column each table's date is taken from.
DATE_SOURCE = {
    MEDIA_ENGAGEMENT: "window_start",
    PLAYBACK_SESSIONS: "session_start",
    USER_DAILY: "event_date",
    DAILY_ACTIVE: "event_date",
}
# Gold table -> (its partition column, from the catalog; the column it is the date of).
PARTITION_DATE = {
    table: (_date_column(GOLD_TABLES[table]), source) for table, source in DATE_SOURCE.items()
}

PROGRESS_SCHEMA = T.StructType([
    T.StructField("batch_id", T.LongType(), False),
    T.StructField("max_event_time", T.TimestampType(), True),
    T.StructField("recorded_at", T.TimestampType(), False),
])
LATE_EVENTS_SCHEMA = T.StructType([
    T.StructField("event_id", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("media_id", T.StringType(), False),
    T.StructField("event_time", T.TimestampType(), False),
    T.StructField("event_date", T.DateType(), False),
    T.StructField("recorded_at", T.TimestampType(), False),
    T.StructField("reconciled_at", T.TimestampType(), True),
])
# Columns of a silver action that identify the gold keys it touches.
KEY_COLUMNS = ["event_id", "user_id", "media_id", "event_time", "event_date"]


@dataclass(frozen=True)
class EngagementConf:
    """What the job and reconcile need, as plain values: table paths and durations."""

    silver: str
    gold: dict[str, str]  # gold table name -> path
    progress: str
    late_events: str
    window: str
    gap: str
    watermark: str
    # The features kept fresh between retrains (None: not kept).
    fresh: FreshConf | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EngagementConf:
        return cls(
            silver=catalog.SILVER_USER_ACTIONS.path(settings),
            gold={name: t.path(settings) for name, t in GOLD_TABLES.items()},
            progress=PROGRESS.path(settings),
            late_events=LATE_EVENTS.path(settings),
            window=settings.gold.window,
            gap=settings.gold.session_gap,
            watermark=settings.gold.watermark,
            fresh=FreshConf.from_settings(settings),
        )


def stored(table: str, frame: DataFrame) -> DataFrame:
    """Rows of gold `table` as stored: the transform's columns plus the partition date
    (`PARTITION_DATE`), when it is not one of them."""
    column, source = PARTITION_DATE[table]
    if column in frame.columns:
        return frame
    return frame.withColumn(column, F.to_date(source))


def gold_frames(actions: DataFrame, conf: EngagementConf) -> dict[str, DataFrame]:
    """The four gold tables computed from `actions` (silver.user_actions rows), as
    stored."""
    frames = {
        MEDIA_ENGAGEMENT: media_engagement(actions, conf.window),
        PLAYBACK_SESSIONS: sessionize(actions, conf.gap),
        USER_DAILY: user_daily_engagement(annotate_plays(actions, conf.gap)),
        DAILY_ACTIVE: daily_active_users(actions),
    }
    return {table: stored(table, frame) for table, frame in frames.items()}


def _date_range(table: str, low: str, high: str) -> str:
    """A MERGE condition on the target's partition date: between the dates of the
    timestamp literals' text `low` and `high` (see `_time_bounds`)."""
    column = PARTITION_DATE[table][0]
    return f"t.`{column}` BETWEEN DATE'{low[:10]}' AND DATE'{high[:10]}'"


def ensure_tables(spark: SparkSession, conf: EngagementConf) -> None:
    """Create the gold and ops tables (and an empty silver source) if missing. Gold
    schemas come from the transforms themselves, so they cannot drift."""
    empty_silver = spark.createDataFrame([], silver_schema("user_action"))
    ensure_silver_table(spark, conf.silver, "user_action")
    for table, frame in gold_frames(empty_silver, conf).items():
        ensure_table(spark, conf.gold[table], frame, GOLD_TABLES[table])
        _check_partitioning(spark, conf.gold[table], PARTITION_DATE[table][0])
    ensure_table(spark, conf.progress, spark.createDataFrame([], PROGRESS_SCHEMA), PROGRESS)
    ensure_table(
        spark, conf.late_events, spark.createDataFrame([], LATE_EVENTS_SCHEMA), LATE_EVENTS
    )


def _check_partitioning(spark: SparkSession, path: str, column: str) -> None:
    """A gold table made before gold was partitioned by date cannot be MERGEd by date:
    say how to rebuild it rather than fail inside a batch."""
    detail = DeltaTable.forPath(spark, path).detail().first()
    partitions = [] if detail is None else detail["partitionColumns"]
    if list(partitions) != [column]:
        raise TableLayoutError(
            f"{path}: partitioned by {list(partitions)}, this version partitions it by "
            f"['{column}']; delete the gold folder and the gold_* checkpoints, then run "
            "the streams again (gold is recomputed from silver)"
        )


# --- recompute touched keys from silver (shared with reconcile) -----------------------


def _time_bounds(times: DataFrame) -> tuple[str | None, str | None]:
    """Min and max of the timestamp column `t` as SQL literals' text, formatted by Spark
    in the session time zone (the zone the literals are read in), or (None, None)."""
    fmt = "yyyy-MM-dd HH:mm:ss.SSSSSS"
    row = times.agg(F.date_format(F.min("t"), fmt).alias("low"),
                    F.date_format(F.max("t"), fmt).alias("high")).first()
    return (None, None) if row is None else (row["low"], row["high"])


def _in_dates(dates: list) -> str:
    """A MERGE condition on the target's event_date: one of `dates` (literals)."""
    literals = ", ".join(f"DATE'{d.isoformat()}'" for d in dates)
    return f"t.event_date IN ({literals})"


def _collect_dates(dates: DataFrame) -> list:
    """Driver-side list of dates, so that the silver read prunes event_date partitions."""
    return sorted(r[0] for r in dates.distinct().collect())


def _written(merge_metrics: DataFrame) -> int:
    """Rows a MERGE inserted or updated, from the metrics row `execute()` returns."""
    metrics = merge_metrics.first()
    return 0 if metrics is None else metrics["num_inserted_rows"] + metrics["num_updated_rows"]


def _replace(
    spark: SparkSession, path: str, fresh: DataFrame, touched: DataFrame, keys: list[str],
    within: str,
) -> int:
    """Upsert `fresh` (rows keyed by `keys`) and delete the rows of the `touched` keys
    that `fresh` no longer has (their last action was removed from silver: a swept
    duplicate, an erased user), in one MERGE; returns rows written. `within` is a
    condition on the target (`t.`) with literals that every touched key meets: Delta
    skips the files outside it instead of joining the whole table."""
    gone = touched.select(*keys).join(fresh.select(*keys), on=keys, how="left_anti")
    no_values = [F.lit(None).cast(f.dataType).alias(f.name) for f in fresh.schema.fields
                 if f.name not in keys]
    changes = fresh.withColumn("_delete", F.lit(False)).unionByName(
        gone.select(*keys, *no_values).withColumn("_delete", F.lit(True))
    )
    condition = " AND ".join([*(f"t.`{k}` = s.`{k}`" for k in keys), within])
    columns: dict[str, str | Column] = {c: f"s.`{c}`" for c in fresh.columns}
    return _written(
        DeltaTable.forPath(spark, path).alias("t")
        .merge(changes.alias("s"), condition)
        .whenMatchedDelete(condition="s._delete")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(condition="NOT s._delete", values=columns)
        .execute()
    )


def _silver(spark: SparkSession, conf: EngagementConf) -> DataFrame:
    return spark.read.format("delta").load(conf.silver)


def refresh_windows(spark: SparkSession, conf: EngagementConf, events: DataFrame) -> int:
    """Recompute the media windows of `events` from silver; returns windows written."""
    windows = touched_windows(events, conf.window)
    # One Spark action for the dates (a window that crosses midnight spans two
    # event_date partitions) and the time bounds of the windows.
    fmt = "yyyy-MM-dd HH:mm:ss.SSSSSS"
    span = windows.agg(
        F.array_sort(F.array_distinct(F.flatten(F.collect_list(
            F.array(F.to_date("window_start"), F.to_date("window_end")))))).alias("dates"),
        F.date_format(F.min("window_start"), fmt).alias("low"),
        F.date_format(F.max("window_end"), fmt).alias("high"),
    ).first()
    if span is None or not span["dates"]:
        return 0
    dates, low, high = span["dates"], span["low"], span["high"]
    actions = (
        _silver(spark, conf)
        .filter(F.col("event_date").isin(dates))
        # Literal bounds: silver's files carry event_time statistics and hold one
        # micro-batch's time span each, so Delta reads the batch's files, not the day.
        .filter(F.col("event_time") >= F.expr(f"timestamp'{low}'"))
        .filter(F.col("event_time") < F.expr(f"timestamp'{high}'"))
        .withColumn("window_start", window_start(conf.window))
        .join(
            F.broadcast(windows.select("media_id", "window_start")),
            on=["media_id", "window_start"],
            how="left_semi",
        )
        .drop("window_start")
    )
    fresh = stored(MEDIA_ENGAGEMENT, media_engagement(actions, conf.window))
    return _replace(
        spark, conf.gold[MEDIA_ENGAGEMENT], fresh, windows, GOLD_KEYS[MEDIA_ENGAGEMENT],
        f"{_date_range(MEDIA_ENGAGEMENT, low, high)} AND "
        f"t.window_start >= timestamp'{low}' AND t.window_start < timestamp'{high}'",
    )


def refresh_sessions(spark: SparkSession, conf: EngagementConf, events: DataFrame) -> int:
    """Replace the sessions of the (user_id, media_id) pairs of `events` within the
    ranges they can change (`session_ranges`), recomputed from the pairs' silver
    actions in those ranges; returns the number of sessions written. The cost is the
    batch's time span, not the pairs' history: silver is read in the event-date
    partitions of the ranges, gold within literal time bounds (file statistics).

    One MERGE both upserts the fresh sessions and deletes the sessions of the ranges
    that no longer exist (an out-of-order event can merge two sessions or split one),
    so readers never see a range half-replaced.
    """
    low, high = _time_bounds(events.select(F.col("event_time").alias("t")))
    if low is None:
        return 0
    target = DeltaTable.forPath(spark, conf.gold[PLAYBACK_SESSIONS])
    # Sessions near the batch: literal bounds, so Delta skips the partitions after it
    # and, by file statistics (a partition's files hold one day's sessions), the files
    # of earlier days.
    latest = F.expr(f"timestamp'{high}' + INTERVAL {conf.gap}")
    near = target.toDF().filter(
        (F.col(PARTITION_DATE[PLAYBACK_SESSIONS][0]) <= F.to_date(latest))
        & (F.col("session_end") >= F.expr(f"timestamp'{low}' - INTERVAL {conf.gap}"))
        & (F.col("session_start") <= latest)
    )
    ranges = session_ranges(events, near, conf.gap).localCheckpoint(eager=True)
    span_low, span_high = _time_bounds(ranges.select(F.explode(F.array("r_start", "r_end"))
                                                     .alias("t")))
    dates = _collect_dates(ranges.select(F.explode(F.sequence(
        F.to_date("r_start"), F.to_date("r_end"))).alias("event_date")))
    in_range = F.col("event_time").between(F.col("r_start"), F.col("r_end"))
    actions = (
        _silver(spark, conf).filter(F.col("event_date").isin(dates))
        .join(F.broadcast(ranges), on=["user_id", "media_id"], how="inner")
        .filter(in_range)
        .drop("r_start", "r_end")
    )
    fresh = stored(PLAYBACK_SESSIONS, sessionize(actions, conf.gap))
    stale = (
        near.join(F.broadcast(ranges), on=["user_id", "media_id"], how="inner")
        .filter(F.col("session_start").between(F.col("r_start"), F.col("r_end")))
        .select(*fresh.columns)
        .join(fresh.select("session_id"), on="session_id", how="left_anti")
    )
    changes = (
        fresh.withColumn("_delete", F.lit(False))
        .unionByName(stale.withColumn("_delete", F.lit(True)))
        # Materialized first: the source reads the very table this MERGE rewrites.
        .localCheckpoint(eager=True)
    )
    columns: dict[str, str | Column] = {c: f"s.`{c}`" for c in fresh.columns}
    # Every matched session starts within the ranges: a literal bound for file skipping.
    assert span_low is not None and span_high is not None  # the events have ranges
    within = (
        f"{_date_range(PLAYBACK_SESSIONS, span_low, span_high)} AND "
        f"t.session_start >= timestamp'{span_low}' AND t.session_start <= timestamp'{span_high}'"
    )
    return _written(
        target.alias("t")
        .merge(changes.alias("s"), f"t.session_id = s.session_id AND {within}")
        .whenMatchedDelete(condition="s._delete")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(condition="NOT s._delete", values=columns)
        .execute()
    )


def refresh_user_days(spark: SparkSession, conf: EngagementConf, events: DataFrame) -> int:
    """Recompute the (event_date, user_id) rows `events` can change; returns rows written."""
    user_days = touched_user_days(events, conf.gap)
    dates = _collect_dates(watch_read_dates(user_days, conf.gap))
    if not dates:
        return 0
    actions = (
        _silver(spark, conf)
        .filter(F.col("event_date").isin(dates))
        .join(F.broadcast(user_days.select("user_id").distinct()), on="user_id", how="left_semi")
    )
    # Annotate over the days after each key too (a play's next action may be after
    # midnight), then keep only the key days themselves.
    annotated = annotate_plays(actions, conf.gap).join(
        F.broadcast(user_days), on=["event_date", "user_id"], how="left_semi"
    )
    fresh = user_daily_engagement(annotated)
    # The days read hold every key day: bound enough for the MERGE, no second collect.
    return _replace(spark, conf.gold[USER_DAILY], fresh, user_days, GOLD_KEYS[USER_DAILY],
                    _in_dates(dates))


def refresh_active_days(spark: SparkSession, conf: EngagementConf, events: DataFrame) -> int:
    """Recompute daily_active_users for the dates of `events`; returns days written.
    Counted from gold.user_daily_engagement, which has one row per active user and
    day (so it must be current for these dates first, see `refresh`): a day's users,
    not a day's actions."""
    touched = touched_dates(events)
    dates = _collect_dates(touched)
    if not dates:
        return 0
    user_days = spark.read.format("delta").load(conf.gold[USER_DAILY]).filter(
        F.col("event_date").isin(dates))
    fresh = daily_active_users(user_days)
    return _replace(spark, conf.gold[DAILY_ACTIVE], fresh, touched, GOLD_KEYS[DAILY_ACTIVE],
                    _in_dates(dates))


REFRESHERS = {
    "windows": refresh_windows,
    "sessions": refresh_sessions,
    "user_days": refresh_user_days,
    "days": refresh_active_days,
}
# What the `gold_engagement` query refreshes; the windows have a query of their own.
ENGAGEMENT_PARTS = ("sessions", "user_days", "days")


def refresh(
    spark: SparkSession,
    conf: EngagementConf,
    events: DataFrame,
    parts: tuple[str, ...] = tuple(REFRESHERS),
) -> dict[str, int]:
    """Recompute every key of the gold `parts` (names of REFRESHERS) that `events`
    (rows with KEY_COLUMNS) can change and upsert it. Idempotent: running it twice
    writes the same rows.

    The tables are refreshed side by side (each MERGE writes its own table): their
    many small Spark jobs and Delta's driver-side work overlap. The daily actives
    come last: they are counted from the user days."""
    first = [part for part in parts if part != "days"]
    written = side_by_side(
        spark, [partial(REFRESHERS[part], spark, conf, events) for part in first]
    )
    counts = dict(zip(first, written, strict=True))
    if "days" in parts:
        counts["days"] = refresh_active_days(spark, conf, events)
    return {part: counts[part] for part in parts}


# --- the stream -----------------------------------------------------------------------


def _watermark(spark: SparkSession, conf: EngagementConf, batch_id: int) -> DataFrame:
    """One row: the watermark for `batch_id` (null before any earlier batch had events)."""
    earlier = spark.read.format("delta").load(conf.progress).filter(F.col("batch_id") < batch_id)
    return earlier.agg(
        (F.max("max_event_time") - F.expr(f"INTERVAL {conf.watermark}")).alias("watermark")
    )


def process_windows_batch(batch: DataFrame, batch_id: int, conf: EngagementConf) -> None:
    """foreachBatch body of `gold_media_engagement`: refresh the media window of every
    event of the batch. Safe to run again for the same batch id."""
    events = batch.select(*KEY_COLUMNS).persist()
    try:
        refresh_windows(batch.sparkSession, conf, events)
    finally:
        events.unpersist()


def process_batch(batch: DataFrame, batch_id: int, conf: EngagementConf) -> None:
    """foreachBatch body of `gold_engagement`: record late events, refresh the sessions
    and days of on-time ones, keep the features fresh (`keep_fresh`: completed items
    off the served lists, late or not; item popularity), then record this batch's max
    event time. Safe to run again for the same batch id."""
    spark = batch.sparkSession
    events = batch.select(*KEY_COLUMNS).persist()
    try:
        if events.isEmpty():
            return
        if conf.fresh is not None:
            keep_fresh(spark, conf.fresh, batch)
        # A null watermark (first batch) compares to null: nothing is late.
        is_late = F.coalesce(F.col("event_time") < F.col("watermark"), F.lit(False))
        flagged = (
            events.join(F.broadcast(_watermark(spark, conf, batch_id)), how="cross")
            .withColumn("is_late", is_late)
            .drop("watermark")
            .localCheckpoint(eager=True)
        )
        late = flagged.filter(F.col("is_late")).select(
            *KEY_COLUMNS,
            F.current_timestamp().alias("recorded_at"),
            F.lit(None).cast("timestamp").alias("reconciled_at"),
        )
        if not late.isEmpty():
            merge_insert_new(DeltaTable.forPath(spark, conf.late_events), late, LATE_EVENTS.keys)
        on_time = flagged.filter(~F.col("is_late")).select(*KEY_COLUMNS)
        if not on_time.isEmpty():
            refresh(spark, conf, on_time, ENGAGEMENT_PARTS)
        progress = events.agg(
            F.lit(batch_id).cast("bigint").alias("batch_id"),
            F.max("event_time").alias("max_event_time"),
            F.current_timestamp().alias("recorded_at"),
        )
        merge_insert_new(DeltaTable.forPath(spark, conf.progress), progress, PROGRESS.keys)
    finally:
        events.unpersist()


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    """Both engagement queries, each with its own checkpoint over silver.user_actions."""
    conf = EngagementConf.from_settings(settings)
    ensure_tables(spark, conf)
    return [
        start_stream(
            settings, name, read_delta_stream(spark, conf.silver, settings.streaming),
            partial(body, conf=conf), available_now=available_now,
        )
        for name, body in ((WINDOWS_QUERY_NAME, process_windows_batch), (QUERY_NAME, process_batch))
    ]
