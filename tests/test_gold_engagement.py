"""The gold engagement job as a stream over a Delta silver.user_actions table:
in-order and out-of-order input, late events, reconcile, and replay of a batch.

Expected gold tables come from `_reference`, a plain-Python restatement of the
contract's definitions (CONTRACT.md section 3) written for this test only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from helpers import GOLD_SCHEMAS, await_available_now, ts, user_actions_df
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.engagement import (
    EngagementConf,
    process_batch,
    process_windows_batch,
    start,
)
from pipelines.gold.reconcile import recompute_all, reconcile

Action = tuple[str, str, str, str, str]  # event_id, user_id, media_id, action, event_time

RUN1: list[Action] = [
    ("e01", "u1", "m1", "play", "2026-11-01 23:50:00"),
    ("e02", "u1", "m1", "pause", "2026-11-01 23:52:00"),
    ("e03", "u1", "m1", "play", "2026-11-01 23:53:00"),
    ("e04", "u1", "m1", "complete", "2026-11-02 00:05:00"),
    ("e05", "u2", "m1", "play", "2026-11-02 00:01:00"),
    ("e06", "u2", "m1", "skip", "2026-11-02 00:03:00"),
    ("e07", "u2", "m2", "play", "2026-11-02 00:10:00"),
]
# Out of order, but within the 30-minute watermark (max so far 00:10 -> 23:40).
RUN2_FIRST: list[Action] = [
    ("e10", "u2", "m2", "play", "2026-11-02 00:50:00"),  # 40 min after e07: new session
    ("e08", "u2", "m2", "play", "2026-11-02 00:04:00"),  # before e07: joins its session
]
RUN2_SECOND: list[Action] = [
    ("e09", "u1", "m1", "play", "2026-11-01 23:45:00"),  # before e01: new session start
    ("e11", "u1", "m1", "play", "2026-11-02 00:20:00"),  # after the complete: new session
    ("e12", "u1", "m1", "pause", "2026-11-02 00:21:30"),
]
# Max so far 00:50 -> watermark 00:20: e13 and e15 are late, e14 is on time.
RUN3_LATE: list[Action] = [
    ("e13", "u2", "m1", "pause", "2026-11-02 00:02:00"),  # inside u2's skipped session
    ("e15", "u3", "m2", "play", "2026-11-01 23:58:00"),  # a new user on Nov 1
]
RUN3_ON_TIME: list[Action] = [("e14", "u1", "m2", "play", "2026-11-02 01:00:00")]

WINDOW = timedelta(minutes=5)
GAP = timedelta(minutes=30)
MS = timedelta(milliseconds=1)


def _write_silver(spark, lake, rows: list[Action], offset: int = 0) -> None:
    (
        user_actions_df(spark, rows, offset)
        .write.format("delta").mode("append").partitionBy("event_date")
        .save(lake.settings.lakehouse.table_path("silver", "user_actions"))
    )


def _run(spark, lake) -> None:
    await_available_now(start(spark, lake.settings, True), timeout_s=180)


def _reference(rows: list[Action]) -> dict[str, list[tuple]]:
    """The four gold tables of `rows`, computed in plain Python."""
    acts = sorted((ts(t), eid, user, media, action) for eid, user, media, action, t in rows)
    windows: dict = defaultdict(lambda: {"counts": defaultdict(int), "users": set()})
    daily: dict = defaultdict(lambda: {"counts": defaultdict(int), "media": set(), "watch": 0})
    dau: dict = defaultdict(set)
    by_pair: dict = defaultdict(list)
    for t, eid, user, media, action in acts:
        start_ = datetime.fromtimestamp(t.timestamp() // 300 * 300, UTC)
        windows[(media, start_)]["counts"][action] += 1
        windows[(media, start_)]["users"].add(user)
        day = daily[(t.date(), user)]
        day["counts"][action] += 1
        day["media"].add(media)
        dau[t.date()].add(user)
        by_pair[(user, media)].append((t, eid, action))

    sessions = []
    for (user, media), pair_acts in by_pair.items():
        split: list[list] = []
        for act in pair_acts:  # already in (time, event id) order
            prev = split[-1][-1] if split else None
            if prev is None or act[0] - prev[0] > GAP or prev[2] in ("complete", "skip"):
                split.append([act])
            else:
                split[-1].append(act)
        for s in split:
            watch = 0
            for (t, _, action), (t_next, _, _) in zip(s, s[1:], strict=False):
                if action == "play":
                    watch += (t_next - t) // MS
                    daily[(t.date(), user)]["watch"] += (t_next - t) // MS
            outcome = {"complete": "completed", "skip": "skipped"}.get(s[-1][2], "abandoned")
            session_id = hashlib.sha256(f"{user}|{media}|{s[0][1]}".encode()).hexdigest()
            sessions.append(
                (session_id, user, media, s[0][0], s[-1][0], len(s), watch, outcome)
            )

    def rate(c: dict) -> float | None:
        return c["skip"] / c["play"] if c["play"] else None

    return {
        "media_engagement": [
            (media, start_, start_ + WINDOW, w["counts"]["play"], w["counts"]["pause"],
             w["counts"]["skip"], w["counts"]["seek"], w["counts"]["complete"],
             len(w["users"]), rate(w["counts"]))
            for (media, start_), w in windows.items()
        ],
        "playback_sessions": sessions,
        "user_daily_engagement": [
            (d, user, v["counts"]["play"], v["counts"]["skip"], v["counts"]["complete"],
             len(v["media"]), v["watch"])
            for (d, user), v in daily.items()
        ],
        "daily_active_users": [(d, len(users)) for d, users in dau.items()],
    }


def _assert_gold(spark, lake, rows: list[Action], windows_rows: list[Action] | None = None) -> None:
    """Every gold table equals the reference of `rows`; media_engagement that of
    `windows_rows` when given (its query takes late events at once)."""
    expected_tables = _reference(rows)
    if windows_rows is not None:
        expected_tables["media_engagement"] = _reference(windows_rows)["media_engagement"]
    from pipelines.gold.engagement import PARTITION_DATE

    for table, expected in expected_tables.items():
        actual = spark.read.format("delta").load(lake.settings.lakehouse.table_path("gold", table))
        frame = spark.createDataFrame(expected, GOLD_SCHEMAS[table])
        assertDataFrameEqual(actual.select(*frame.columns), frame)
        # Stored with its partition date: the date of the key's start.
        column, source = PARTITION_DATE[table]
        assert actual.filter(F.col(column) != F.to_date(source)).isEmpty(), table


def _ops(spark, lake, table: str):
    return spark.read.format("delta").load(lake.settings.lakehouse.table_path("ops", table))


def test_reference_matches_hand_computed_sessions() -> None:
    """The test's own reference, checked on the cases the stream test relies on."""
    sessions = {s[1:3] + (s[3],): s[5:] for s in _reference(RUN1 + RUN2_FIRST + RUN2_SECOND)
                ["playback_sessions"]}
    assert sessions == {
        ("u1", "m1", ts("2026-11-01 23:45:00")): (5, 300_000 + 120_000 + 720_000, "completed"),
        ("u1", "m1", ts("2026-11-02 00:20:00")): (2, 90_000, "abandoned"),
        ("u2", "m1", ts("2026-11-02 00:01:00")): (2, 120_000, "skipped"),
        ("u2", "m2", ts("2026-11-02 00:04:00")): (2, 360_000, "abandoned"),
        ("u2", "m2", ts("2026-11-02 00:50:00")): (1, 0, "abandoned"),
    }


@pytest.mark.slow
def test_engagement_stream_out_of_order_late_reconcile_and_replay(spark, lake) -> None:
    _write_silver(spark, lake, RUN1)
    _run(spark, lake)
    _assert_gold(spark, lake, RUN1)

    # Two silver commits, out of order, picked up from the checkpoint in one batch.
    _write_silver(spark, lake, RUN2_FIRST, offset=100)
    _write_silver(spark, lake, RUN2_SECOND, offset=200)
    _run(spark, lake)
    _assert_gold(spark, lake, RUN1 + RUN2_FIRST + RUN2_SECOND)

    _write_silver(spark, lake, RUN3_LATE + RUN3_ON_TIME, offset=300)
    _run(spark, lake)
    # The late events are recorded, and gold does not include them yet, except the media
    # windows: their own query refreshes the window of every event, late or not.
    _assert_gold(spark, lake, RUN1 + RUN2_FIRST + RUN2_SECOND + RUN3_ON_TIME,
                 windows_rows=RUN1 + RUN2_FIRST + RUN2_SECOND + RUN3_LATE + RUN3_ON_TIME)
    assertDataFrameEqual(
        _ops(spark, lake, "late_events").select("event_id", "event_time", "reconciled_at"),
        spark.createDataFrame(
            [("e13", ts("2026-11-02 00:02:00"), None), ("e15", ts("2026-11-01 23:58:00"), None)],
            "event_id string, event_time timestamp, reconciled_at timestamp",
        ),
    )
    assertDataFrameEqual(
        _ops(spark, lake, "gold_progress").select("batch_id", "max_event_time"),
        spark.createDataFrame(
            [(0, ts("2026-11-02 00:10:00")), (1, ts("2026-11-02 00:50:00")),
             (2, ts("2026-11-02 01:00:00"))],
            "batch_id bigint, max_event_time timestamp",
        ),
    )

    everything = RUN1 + RUN2_FIRST + RUN2_SECOND + RUN3_LATE + RUN3_ON_TIME
    # e13: window (m1, 00:00), pair (u2, m1), user day (u2, Nov 2) (u2 has no actions on
    # Nov 1, the other day it could touch), day Nov 2; e15: window (m2, 23:55), pair
    # (u3, m2), user day (u3, Nov 1), day Nov 1.
    assert reconcile(spark, lake.settings) == {
        "duplicates": 0, "late_events": 2, "swept": 0, "windows": 2, "sessions": 2,
        "user_days": 2, "days": 2,
    }
    _assert_gold(spark, lake, everything)
    assert _ops(spark, lake, "late_events").filter(F.col("reconciled_at").isNull()).count() == 0
    # Nothing left: a second reconcile does nothing.
    assert reconcile(spark, lake.settings) == {
        "duplicates": 0, "late_events": 0, "swept": 0, "windows": 0, "sessions": 0,
        "user_days": 0, "days": 0,
    }

    # Replay: the batch of run 3 once more (its second run), as after a crash before the
    # checkpoint commit.
    conf = EngagementConf.from_settings(lake.settings)
    late_before = _ops(spark, lake, "late_events").collect()
    progress_before = _ops(spark, lake, "gold_progress").collect()
    silver = spark.read.format("delta").load(conf.silver)
    batch = silver.filter(F.col("event_id").isin([r[0] for r in RUN3_LATE + RUN3_ON_TIME]))
    process_batch(batch, 2, conf)
    process_windows_batch(batch, 2, conf)
    _assert_gold(spark, lake, everything)
    assertDataFrameEqual(_ops(spark, lake, "late_events"), late_before)
    assertDataFrameEqual(_ops(spark, lake, "gold_progress"), progress_before)

    # A full rebuild from silver lands on the same tables.
    expected_counts = {table: len(rows) for table, rows in _reference(everything).items()}
    assert recompute_all(spark, lake.settings) == expected_counts
    _assert_gold(spark, lake, everything)
