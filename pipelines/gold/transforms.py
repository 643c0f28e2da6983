"""Pure gold transforms over silver.user_actions rows: batch DataFrames in and out, no I/O.

Durations (`window`, `gap`) are Spark interval strings from conf (`"5 minutes"`), used
as `INTERVAL <text>` in SQL, so any unit Spark understands works.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# A session ends right after one of these: the next action opens a new one.
SESSION_ENDING_ACTIONS = ("complete", "skip")
# Ties in event time are broken by event id so sessions are the same on every run.
EVENT_ORDER = ("event_time", "event_id")


def _interval(text: str) -> Column:
    return F.expr(f"INTERVAL {text}")


def _count_action(action: str) -> Column:
    # count_if is a bigint that is 0 (not null) when no row matches.
    return F.count_if(F.col("action") == action)


def window_start(window: str) -> Column:
    """Start of the tumbling event-time window that holds each row's `event_time`."""
    return F.window("event_time", window).start


def media_engagement(actions: DataFrame, window: str) -> DataFrame:
    """silver.user_actions rows -> gold.media_engagement (per media, per tumbling window).

    unique_viewers is an exact countDistinct: the job recomputes only the few windows
    a micro-batch touches, so exactness is cheap, and it makes the table reproducible
    to the row (the contract would accept approx_count_distinct within 2%).
    """
    plays, skips = F.col("plays"), F.col("skips")
    return (
        actions.groupBy("media_id", F.window("event_time", window).alias("window"))
        .agg(
            _count_action("play").alias("plays"),
            _count_action("pause").alias("pauses"),
            _count_action("skip").alias("skips"),
            _count_action("seek").alias("seeks"),
            _count_action("complete").alias("completes"),
            F.count_distinct("user_id").alias("unique_viewers"),
        )
        .select(
            F.col("media_id"),
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            plays, F.col("pauses"), skips, F.col("seeks"), F.col("completes"),
            F.col("unique_viewers"),
            F.when(plays > 0, skips / plays).cast("double").alias("skip_rate"),
        )
    )


def annotate_plays(actions: DataFrame, gap: str) -> DataFrame:
    """Each action with the gold `session_id` it belongs to and its `watch_ms`: for a
    `play`, the time to the next action of the same session (0 for a final play and
    for every other action).

    Sessions of one (user_id, media_id) break where more than `gap` passes between
    actions and right after a `complete` or `skip`. The session id is the sha2 of
    user_id|media_id|first event_id, so it is stable across recomputations. Silver's
    own `session_id` (the player's, often null) is dropped.
    """
    by_pair = Window.partitionBy("user_id", "media_id").orderBy(*EVENT_ORDER)
    so_far = by_pair.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    prev_time = F.lag("event_time").over(by_pair)
    after_gap = F.col("event_time") > prev_time + _interval(gap)
    after_ending = F.lag("action").over(by_pair).isin(*SESSION_ENDING_ACTIONS)
    starts_session = prev_time.isNull() | after_gap | after_ending

    flagged = (
        actions.withColumn("_starts", F.coalesce(starts_session, F.lit(True)))
        .withColumn(
            "_first_event_id",
            F.last(F.when(F.col("_starts"), F.col("event_id")), ignorenulls=True).over(so_far),
        )
        .withColumn("_next_time", F.lead("event_time").over(by_pair))
        .withColumn("_next_starts", F.lead("_starts").over(by_pair))
    )
    next_in_session = F.col("_next_time").isNotNull() & ~F.col("_next_starts")
    watch_ms = F.when(
        (F.col("action") == "play") & next_in_session,
        F.unix_millis("_next_time") - F.unix_millis("event_time"),
    ).otherwise(F.lit(0))
    return flagged.select(
        F.col("event_id"),
        F.col("user_id"),
        F.col("media_id"),
        F.col("action"),
        F.col("event_time"),
        F.col("event_date"),
        F.sha2(F.concat_ws("|", "user_id", "media_id", "_first_event_id"), 256).alias(
            "session_id"
        ),
        watch_ms.cast("bigint").alias("watch_ms"),
    )


def session_ranges(events: DataFrame, sessions: DataFrame, gap: str) -> DataFrame:
    """Per (user_id, media_id) of `events`, the event-time range (`r_start`, `r_end`)
    whose sessions the events can change: their own times, widened to every held
    session within `gap` of them (which a new action may join, merge with another or
    split). Outside it, the pair's sessions stay as they are: the action before the
    range ends a session more than `gap` earlier, the one after starts one."""
    pairs = events.groupBy("user_id", "media_id").agg(
        F.min("event_time").alias("t0"), F.max("event_time").alias("t1")
    )
    near = sessions.join(F.broadcast(pairs), on=["user_id", "media_id"], how="inner").filter(
        (F.col("session_end") >= F.col("t0") - _interval(gap))
        & (F.col("session_start") <= F.col("t1") + _interval(gap))
    )
    return (
        pairs.join(near.select("user_id", "media_id", "session_start", "session_end"),
                   on=["user_id", "media_id"], how="left")
        .groupBy("user_id", "media_id")
        .agg(
            F.least(F.min("t0"), F.min("session_start")).alias("r_start"),
            F.greatest(F.max("t1"), F.max("session_end")).alias("r_end"),
        )
    )


def sessionize(actions: DataFrame, gap: str) -> DataFrame:
    """silver.user_actions rows -> gold.playback_sessions."""
    last_action = F.col("last_action")
    outcome = (
        F.when(last_action == "complete", "completed")
        .when(last_action == "skip", "skipped")
        .otherwise("abandoned")
    )
    return (
        actions.transform(annotate_plays, gap)
        .groupBy("session_id", "user_id", "media_id")
        .agg(
            F.min("event_time").alias("session_start"),
            F.max("event_time").alias("session_end"),
            F.count(F.lit(1)).alias("actions"),
            F.sum("watch_ms").alias("watch_ms"),
            F.max_by("action", F.struct(*EVENT_ORDER)).alias("last_action"),
        )
        .select(
            F.col("session_id"),
            F.col("user_id"),
            F.col("media_id"),
            F.col("session_start"),
            F.col("session_end"),
            F.col("actions"),
            F.col("watch_ms").cast("bigint").alias("watch_ms"),
            outcome.alias("outcome"),
        )
    )


def user_daily_engagement(annotated: DataFrame) -> DataFrame:
    """Output of `annotate_plays` -> gold.user_daily_engagement. A play's watch time
    counts on the play's own event_date, even when the next action is after midnight."""
    return (
        annotated.groupBy("event_date", "user_id")
        .agg(
            _count_action("play").alias("plays"),
            _count_action("skip").alias("skips"),
            _count_action("complete").alias("completes"),
            F.count_distinct("media_id").alias("distinct_media"),
            F.sum("watch_ms").alias("watch_ms"),
        )
        .select(
            F.col("event_date"),
            F.col("user_id"),
            F.col("plays"),
            F.col("skips"),
            F.col("completes"),
            F.col("distinct_media"),
            F.col("watch_ms").cast("bigint").alias("watch_ms"),
        )
    )


def daily_active_users(actions: DataFrame) -> DataFrame:
    """silver.user_actions rows -> gold.daily_active_users."""
    return (
        actions.groupBy("event_date")
        .agg(F.count_distinct("user_id").alias("active_users"))
        .select(F.col("event_date"), F.col("active_users"))
    )


# Keys that new actions touch: the job recomputes exactly these from silver.


def touched_windows(events: DataFrame, window: str) -> DataFrame:
    """(media_id, window_start, window_end) of each event's media window."""
    return (
        events.select(F.col("media_id"), F.window("event_time", window).alias("window"))
        .select(
            F.col("media_id"),
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
        )
        .distinct()
    )


def touched_pairs(events: DataFrame) -> DataFrame:
    """(user_id, media_id) pairs whose sessions an event can merge, split or extend."""
    return events.select(F.col("user_id"), F.col("media_id")).distinct()


def touched_user_days(events: DataFrame, gap: str) -> DataFrame:
    """(user_id, event_date) rows an event can change: its own date, and every date back
    to `event_time - gap`, where a play followed by this event may have happened (a
    play's watch time depends only on the next action, which is at most `gap` later)."""
    first_day = F.to_date(F.col("event_time") - _interval(gap))
    return (
        events.select(
            F.col("user_id"),
            F.explode(F.sequence(first_day, F.col("event_date"))).alias("event_date"),
        )
        .select(F.col("event_date"), F.col("user_id"))
        .distinct()
    )


def watch_read_dates(user_days: DataFrame, gap: str) -> DataFrame:
    """Dates to read to compute the watch time of plays on `user_days`: the day itself
    and the days its plays' next actions can fall on (up to `gap` after midnight)."""
    next_midnight = F.date_add(F.col("event_date"), 1).cast("timestamp")
    last_day = F.to_date(next_midnight + _interval(gap))
    return (
        user_days.select(F.explode(F.sequence(F.col("event_date"), last_day)).alias("event_date"))
        .distinct()
    )


def touched_dates(events: DataFrame) -> DataFrame:
    """Dates whose active users an event can change."""
    return events.select(F.col("event_date")).distinct()
