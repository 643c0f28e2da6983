"""Gold transforms on tiny inline silver rows, compared whole with hand-written rows."""

from __future__ import annotations

import hashlib
from datetime import date

from helpers import (
    DAILY_ACTIVE_USERS,
    MEDIA_ENGAGEMENT,
    PLAYBACK_SESSIONS,
    USER_DAILY_ENGAGEMENT,
    ts,
    user_actions_df,
)
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.transforms import (
    annotate_plays,
    daily_active_users,
    media_engagement,
    session_ranges,
    sessionize,
    touched_user_days,
    user_daily_engagement,
    watch_read_dates,
)

WINDOW, GAP = "5 minutes", "30 minutes"


def sid(user: str, media: str, first_event_id: str) -> str:
    return hashlib.sha256(f"{user}|{media}|{first_event_id}".encode()).hexdigest()


def test_media_engagement_counts_per_tumbling_window(spark) -> None:
    rows = user_actions_df(spark, [
        ("a1", "u1", "m1", "play", "2026-11-01 10:00:10"),
        ("a2", "u1", "m1", "pause", "2026-11-01 10:01:00"),
        ("a3", "u2", "m1", "play", "2026-11-01 10:02:00"),
        ("a4", "u1", "m1", "seek", "2026-11-01 10:03:00"),
        ("a5", "u2", "m1", "skip", "2026-11-01 10:04:59"),
        ("a6", "u1", "m1", "complete", "2026-11-01 10:05:00"),  # next window: bounds [s, e)
        ("b1", "u1", "m2", "skip", "2026-11-01 10:00:00"),  # skips without plays
        ("b2", "u3", "m2", "play", "2026-11-01 10:12:00"),
        ("b3", "u3", "m2", "skip", "2026-11-01 10:13:00"),
        ("b4", "u4", "m2", "play", "2026-11-01 10:14:00"),
        ("b5", "u4", "m2", "play", "2026-11-01 10:14:30"),
        ("b6", "u4", "m2", "play", "2026-11-01 10:14:59"),
    ])
    expected = spark.createDataFrame([
        ("m1", ts("2026-11-01 10:00:00"), ts("2026-11-01 10:05:00"), 2, 1, 1, 1, 0, 2, 0.5),
        ("m1", ts("2026-11-01 10:05:00"), ts("2026-11-01 10:10:00"), 0, 0, 0, 0, 1, 1, None),
        ("m2", ts("2026-11-01 10:00:00"), ts("2026-11-01 10:05:00"), 0, 0, 1, 0, 0, 1, None),
        ("m2", ts("2026-11-01 10:10:00"), ts("2026-11-01 10:15:00"), 4, 0, 1, 0, 0, 2, 0.25),
    ], MEDIA_ENGAGEMENT)
    assertDataFrameEqual(media_engagement(rows, WINDOW), expected)


SESSION_ROWS = [
    # u1/m1: a 40-minute gap splits; exactly 30 minutes does not; complete and skip end.
    ("e1", "u1", "m1", "play", "2026-11-01 10:00:00"),
    ("e2", "u1", "m1", "pause", "2026-11-01 10:10:00"),
    ("e3", "u1", "m1", "play", "2026-11-01 10:20:00"),
    ("e4", "u1", "m1", "play", "2026-11-01 11:00:00"),
    ("e5", "u1", "m1", "complete", "2026-11-01 11:30:00"),
    ("e6", "u1", "m1", "play", "2026-11-01 11:31:00"),
    ("e7", "u1", "m1", "skip", "2026-11-01 11:32:00"),
    ("e8", "u1", "m1", "seek", "2026-11-01 11:33:00"),
    # u1/m2 interleaves in time with u1/m1 but is its own sequence.
    ("f4", "u1", "m2", "pause", "2026-11-01 10:09:00"),
    ("f1", "u1", "m2", "play", "2026-11-01 10:05:00"),
    ("f3", "u1", "m2", "play", "2026-11-01 10:07:00"),
    ("f2", "u1", "m2", "seek", "2026-11-01 10:06:00"),
    # u2/m1: same instant, ordered by event id: the play (c1) before the complete (c2).
    ("c2", "u2", "m1", "complete", "2026-11-01 12:00:00"),
    ("c1", "u2", "m1", "play", "2026-11-01 12:00:00"),
]


def test_sessionize_splits_on_gap_complete_and_skip(spark) -> None:
    expected = spark.createDataFrame([
        (sid("u1", "m1", "e1"), "u1", "m1", ts("2026-11-01 10:00:00"),
         ts("2026-11-01 10:20:00"), 3, 600_000, "abandoned"),  # final play adds nothing
        (sid("u1", "m1", "e4"), "u1", "m1", ts("2026-11-01 11:00:00"),
         ts("2026-11-01 11:30:00"), 2, 1_800_000, "completed"),
        (sid("u1", "m1", "e6"), "u1", "m1", ts("2026-11-01 11:31:00"),
         ts("2026-11-01 11:32:00"), 2, 60_000, "skipped"),
        (sid("u1", "m1", "e8"), "u1", "m1", ts("2026-11-01 11:33:00"),
         ts("2026-11-01 11:33:00"), 1, 0, "abandoned"),
        (sid("u1", "m2", "f1"), "u1", "m2", ts("2026-11-01 10:05:00"),
         ts("2026-11-01 10:09:00"), 4, 180_000, "abandoned"),
        (sid("u2", "m1", "c1"), "u2", "m1", ts("2026-11-01 12:00:00"),
         ts("2026-11-01 12:00:00"), 2, 0, "completed"),
    ], PLAYBACK_SESSIONS)
    assertDataFrameEqual(sessionize(user_actions_df(spark, SESSION_ROWS), GAP), expected)


def test_annotate_plays_gives_each_action_its_session_and_watch(spark) -> None:
    out = annotate_plays(user_actions_df(spark, SESSION_ROWS[:8]), GAP)
    assert out.columns == ["event_id", "user_id", "media_id", "action", "event_time",
                           "event_date", "session_id", "watch_ms"]
    s1, s2, s3, s4 = (sid("u1", "m1", e) for e in ("e1", "e4", "e6", "e8"))
    assertDataFrameEqual(
        out.select("event_id", "session_id", "watch_ms"),
        spark.createDataFrame([
            ("e1", s1, 600_000), ("e2", s1, 0), ("e3", s1, 0),
            ("e4", s2, 1_800_000), ("e5", s2, 0),
            ("e6", s3, 60_000), ("e7", s3, 0),
            ("e8", s4, 0),
        ], "event_id string, session_id string, watch_ms bigint"),
    )


DAILY_ROWS = [
    ("d1", "u1", "m1", "play", "2026-11-01 23:50:00"),
    ("d2", "u1", "m1", "pause", "2026-11-02 00:10:00"),  # 20 min of watch on Nov 1
    ("d3", "u1", "m1", "skip", "2026-11-02 00:15:00"),
    ("d4", "u1", "m2", "play", "2026-11-02 00:20:00"),
    ("d5", "u1", "m2", "complete", "2026-11-02 00:50:00"),
    ("d6", "u2", "m1", "play", "2026-11-01 12:00:00"),  # an hour to the next: watch 0
    ("d7", "u2", "m1", "play", "2026-11-01 13:00:00"),
]


def test_user_daily_engagement_attributes_watch_to_the_play_date(spark) -> None:
    annotated = annotate_plays(user_actions_df(spark, DAILY_ROWS), GAP)
    expected = spark.createDataFrame([
        (date(2026, 11, 1), "u1", 1, 0, 0, 1, 1_200_000),
        (date(2026, 11, 2), "u1", 1, 1, 1, 2, 1_800_000),
        (date(2026, 11, 1), "u2", 2, 0, 0, 1, 0),
    ], USER_DAILY_ENGAGEMENT)
    assertDataFrameEqual(user_daily_engagement(annotated), expected)


def test_daily_active_users_counts_each_user_once_per_date(spark) -> None:
    expected = spark.createDataFrame(
        [(date(2026, 11, 1), 2), (date(2026, 11, 2), 1)], DAILY_ACTIVE_USERS
    )
    assertDataFrameEqual(daily_active_users(user_actions_df(spark, DAILY_ROWS)), expected)


def test_touched_user_days_reach_back_one_gap(spark) -> None:
    events = user_actions_df(spark, [
        ("k1", "u1", "m1", "play", "2026-11-02 00:10:00"),  # a play at 23:45 may precede it
        ("k2", "u2", "m1", "play", "2026-11-02 12:00:00"),
    ])
    days = touched_user_days(events, GAP)
    assertDataFrameEqual(days, spark.createDataFrame([
        (date(2026, 11, 1), "u1"), (date(2026, 11, 2), "u1"), (date(2026, 11, 2), "u2"),
    ], "event_date date, user_id string"))
    # Plays of Nov 1 and Nov 2 may have their next action up to 30 minutes into Nov 3.
    assertDataFrameEqual(watch_read_dates(days, GAP), spark.createDataFrame(
        [(date(2026, 11, d),) for d in (1, 2, 3)], "event_date date"))


def test_session_ranges_widen_to_held_sessions_within_the_gap(spark) -> None:
    held = spark.createDataFrame([
        ("u1", "m1", ts("2026-11-01 10:00:00"), ts("2026-11-01 10:20:00")),
        ("u1", "m1", ts("2026-11-01 12:00:00"), ts("2026-11-01 12:10:00")),
        ("u1", "m1", ts("2026-11-01 15:00:00"), ts("2026-11-01 15:05:00")),
        ("u3", "m3", ts("2026-11-01 08:00:00"), ts("2026-11-01 08:10:00")),
        ("u3", "m3", ts("2026-11-01 09:00:00"), ts("2026-11-01 09:20:00")),
        ("u4", "m4", ts("2026-11-01 09:00:00"), ts("2026-11-01 09:10:00")),
    ], "user_id string, media_id string, session_start timestamp, session_end timestamp")
    events = user_actions_df(spark, [
        ("e1", "u1", "m1", "play", "2026-11-01 12:35:00"),  # 25 min after the 2nd session
        ("e2", "u2", "m2", "play", "2026-11-01 09:00:00"),  # no session held
        ("e3", "u3", "m3", "play", "2026-11-01 08:35:00"),  # between two, near both
        ("e4", "u4", "m4", "play", "2026-11-01 09:41:00"),  # 31 min after: a session of its own
    ])
    expected = spark.createDataFrame([
        ("u1", "m1", ts("2026-11-01 12:00:00"), ts("2026-11-01 12:35:00")),
        ("u2", "m2", ts("2026-11-01 09:00:00"), ts("2026-11-01 09:00:00")),
        ("u3", "m3", ts("2026-11-01 08:00:00"), ts("2026-11-01 09:20:00")),
        ("u4", "m4", ts("2026-11-01 09:41:00"), ts("2026-11-01 09:41:00")),
    ], "user_id string, media_id string, r_start timestamp, r_end timestamp")
    assertDataFrameEqual(session_ranges(events, held, GAP), expected)
