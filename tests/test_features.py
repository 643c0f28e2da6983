"""Pure transforms of the recommendation features, on tiny hand-computed inputs."""

from __future__ import annotations

import math

from helpers import PLAYBACK_SESSIONS, ts, user_actions_df
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.features.evaluate import ranking_metrics, relevant_items, split_sessions
from pipelines.features.interactions import (
    blend_recommendations,
    completed_pairs,
    id_index,
    implicit_feedback,
    item_popularity,
    popular_items,
)
from pipelines.settings import FeatureWeights

# gold.playback_sessions as the contract defines it, every column non-null.
SESSIONS_SCHEMA = T.StructType(
    [T.StructField(f.name, f.dataType, False) for f in PLAYBACK_SESSIONS]
)
MIN = 60_000
HOUR = 60 * MIN
# The weights the hand-computed strengths below assume (conf/base.yaml has the same).
WEIGHTS = {"play": 1.0, "complete": 2.0, "skip": 1.5, "watch_hour": 1.0, "watch_cap_hours": 2.0}


def sessions_df(spark, rows: list[tuple]):  # noqa: ANN001, ANN201
    """rows: (user_id, media_id, session_start, watch_ms, outcome)."""
    return spark.createDataFrame(
        [
            (f"s{i}", user, media, ts(start), ts(start), 1, watch, outcome)
            for i, (user, media, start, watch, outcome) in enumerate(rows)
        ],
        SESSIONS_SCHEMA,
    )


def actions_df(spark, rows: list[tuple]):  # noqa: ANN001, ANN201
    """rows: (user_id, media_id, action, event_time) as silver.user_actions."""
    with_ids = [(f"e{i}", user, media, action, at)
                for i, (user, media, action, at) in enumerate(rows)]
    return user_actions_df(spark, with_ids, topic="t")


def test_implicit_feedback_weights_completions_watch_time_and_skips(spark) -> None:
    sessions = sessions_df(spark, [
        ("u1", "m1", "2026-11-01 10:00:00", 30 * MIN, "completed"),  # 1 + 2 + 0.5 = 3.5
        ("u1", "m1", "2026-11-02 10:00:00", 6 * MIN, "skipped"),  # 1 - 1.5 + 0.1 = -0.4
        ("u1", "m2", "2026-11-01 12:00:00", 3 * HOUR, "abandoned"),  # 1 + min(3, 2) = 3
        ("u2", "m1", "2026-11-01 12:00:00", 0, "skipped"),  # 1 - 1.5 = -0.5
    ])  # fmt: skip
    expected = spark.createDataFrame(
        [
            ("u1", "m1", 2, 1, 1, 36 * MIN, 3.1),
            ("u1", "m2", 1, 0, 0, 3 * HOUR, 3.0),
            ("u2", "m1", 1, 0, 1, 0, -0.5),
        ],
        "user_id string, media_id string, sessions long, completions long, skips long, "
        "watch_ms long, strength double",
    )
    assertDataFrameEqual(implicit_feedback(sessions, FeatureWeights(**WEIGHTS)), expected)


def test_id_index_is_dense_and_in_id_order(spark) -> None:
    ids = spark.createDataFrame([("b",), ("a",), ("c",), ("a",)], "user_id string")
    expected = spark.createDataFrame([("a", 0), ("b", 1), ("c", 2)], "user_id string, user_idx int")
    assertDataFrameEqual(id_index(ids, "user_id", "user_idx"), expected)


def test_completed_pairs(spark) -> None:
    sessions = sessions_df(spark, [
        ("u1", "m1", "2026-11-01 10:00:00", 0, "completed"),
        ("u1", "m1", "2026-11-02 10:00:00", 0, "completed"),
        ("u1", "m2", "2026-11-01 10:00:00", 0, "skipped"),
        ("u2", "m2", "2026-11-01 10:00:00", 0, "abandoned"),
    ])  # fmt: skip
    expected = spark.createDataFrame([("u1", "m1")], "user_id string, media_id string")
    assertDataFrameEqual(completed_pairs(sessions), expected)


def test_blend_excludes_completed_breaks_ties_and_fills_with_popular(spark) -> None:
    scores = spark.createDataFrame(
        [
            ("u1", "m1", 0.9),  # completed by u1: never shown
            ("u1", "m3", 0.8),
            ("u1", "m2", 0.8),  # tie with m3: media_id decides
            ("u1", "m4", 0.1),
            ("u1", "m5", 0.05),  # beyond k
            ("u2", "m5", 0.7),
        ],
        "user_id string, media_id string, score double",
    )
    popular = spark.createDataFrame(
        [("m1", 1), ("m5", 2), ("m2", 3), ("m6", 4)], "media_id string, pop_rank int"
    )
    users = spark.createDataFrame([("u1",), ("u2",), ("u3",)], "user_id string")
    exclude = spark.createDataFrame([("u1", "m1"), ("u2", "m2")], "user_id string, media_id string")
    expected = spark.createDataFrame(
        [
            ("u1", 1, "m2", 0.8),
            ("u1", 2, "m3", 0.8),
            ("u1", 3, "m4", 0.1),
            ("u2", 1, "m5", 0.7),  # the model's pick; popularity does not repeat it
            ("u2", 2, "m1", None),
            ("u2", 3, "m6", None),  # m2 was completed by u2
            ("u3", 1, "m1", None),  # unknown to the model: popularity only
            ("u3", 2, "m5", None),
            ("u3", 3, "m2", None),
        ],
        "user_id string, rank int, media_id string, score double",
    )
    assertDataFrameEqual(blend_recommendations(scores, popular, users, exclude, 3), expected)


def test_item_popularity_is_relative_to_the_newest_event(spark) -> None:
    # Anchor = 2026-11-10 12:00 (newest event); 2-day window = (11-08 12:00, anchor],
    # last day = (11-09 12:00, anchor].
    actions = actions_df(spark, [
        ("u1", "m1", "play", "2026-11-10 12:00:00"),  # window, last day
        ("u2", "m1", "play", "2026-11-10 10:00:00"),  # window, last day
        ("u2", "m1", "pause", "2026-11-10 10:30:00"),  # a viewer, not a play
        ("u1", "m1", "play", "2026-11-09 08:00:00"),  # window, not last day
        ("u3", "m1", "play", "2026-11-08 11:00:00"),  # before the window
        ("u4", "m2", "play", "2026-11-08 12:00:00"),  # exactly on the bound: out
        ("u3", "m2", "pause", "2026-11-09 13:00:00"),
        ("u1", "m3", "play", "2026-11-01 09:00:00"),
    ])  # fmt: skip
    sessions = sessions_df(spark, [
        ("u1", "m1", "2026-11-10 11:00:00", 0, "completed"),
        ("u2", "m1", "2026-11-10 10:00:00", 0, "abandoned"),
        ("u3", "m1", "2026-11-08 11:00:00", 0, "completed"),  # before the window
        ("u3", "m2", "2026-11-09 13:00:00", 0, "skipped"),
        ("u1", "m3", "2026-11-01 09:00:00", 0, "completed"),  # before the window
    ])  # fmt: skip
    # trending = (plays_1d + 1) / (plays_7d / 2 + 1)
    expected = spark.createDataFrame(
        [
            ("m1", 3, 2, 0.5, (2 + 1) / (3 / 2 + 1)),
            ("m2", 0, 1, 0.0, 1.0),
            ("m3", 0, 0, None, 1.0),
        ],
        "media_id string, plays_7d long, unique_viewers_7d long, completion_rate double, "
        "trending_score double",
    )
    assertDataFrameEqual(item_popularity(actions, sessions, 2, trending_prior=1.0), expected)


def test_popular_items_order_viewers_then_plays_then_id(spark) -> None:
    popularity = spark.createDataFrame(
        [("m1", 5, 2), ("m2", 9, 2), ("m3", 5, 3), ("m0", 9, 2)],
        "media_id string, plays_7d long, unique_viewers_7d long",
    )
    expected = spark.createDataFrame(
        [("m3", 1), ("m0", 2), ("m2", 3)], "media_id string, pop_rank int"
    )
    assertDataFrameEqual(popular_items(popularity, 3), expected)


def test_holdout_split_and_relevant_items(spark) -> None:
    sessions = sessions_df(spark, [
        ("u1", "m1", "2026-11-05 10:00:00", 0, "completed"),  # train
        ("u1", "m2", "2026-11-05 11:00:00", 0, "skipped"),  # train
        ("u1", "m1", "2026-11-09 10:00:00", 0, "completed"),  # done before: not relevant
        ("u1", "m2", "2026-11-09 11:00:00", 0, "completed"),  # relevant
        ("u1", "m3", "2026-11-09 12:00:00", 25 * MIN, "abandoned"),  # watched enough
        ("u1", "m4", "2026-11-09 13:00:00", 5 * MIN, "abandoned"),  # not enough
        ("u2", "m1", "2026-11-08 00:00:00", 0, "skipped"),  # on the cut: test
    ])  # fmt: skip
    train, test = split_sessions(sessions, ts("2026-11-08 00:00:00"))
    assert sorted(r["session_id"] for r in train.collect()) == ["s0", "s1"]
    assert sorted(r["session_id"] for r in test.collect()) == ["s2", "s3", "s4", "s5", "s6"]
    expected = spark.createDataFrame(
        [("u1", "m2"), ("u1", "m3")], "user_id string, media_id string"
    )
    assertDataFrameEqual(relevant_items(train, test, 20 * MIN), expected)


def test_ranking_metrics_on_a_hand_computed_example(spark) -> None:
    recs = spark.createDataFrame(
        [
            ("u1", 1, "a"), ("u1", 2, "b"), ("u1", 3, "c"), ("u1", 4, "d"),
            ("u2", 1, "x"), ("u2", 2, "y"), ("u2", 3, "z"),
            ("u5", 1, "a"),  # no relevant items: not evaluated
        ],
        "user_id string, rank int, media_id string",
    )  # fmt: skip
    relevant = spark.createDataFrame(
        [("u1", "b"), ("u1", "d"), ("u2", "x"), ("u2", "y"), ("u2", "w"), ("u2", "v"),
         ("u3", "q")],
        "user_id string, media_id string",
    )  # fmt: skip
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    ndcg_u1 = d2 / (1 + d2)  # hit at rank 2 (d at rank 4 is past k); ideal: 2 hits
    ndcg_u2 = (1 + d2) / (1 + d2 + d3)  # hits at 1 and 2; ideal: 3 hits (k caps 4)
    expected = spark.createDataFrame(
        [(3, (ndcg_u1 + ndcg_u2 + 0) / 3, (1 / 3 + 2 / 3 + 0) / 3, (1 / 2 + 2 / 4 + 0) / 3)],
        "users long, ndcg_at_3 double, precision_at_3 double, recall_at_3 double",
    )
    assertDataFrameEqual(ranking_metrics(recs, relevant, 3), expected)
