"""Batch retrain on simulated traffic: the model learns the planted genre tastes,
the outputs keep their invariants, and a retrain from recorded versions reproduces."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.features import retrain
from pipelines.gold.transforms import sessionize
from pipelines.schemas.registry import classify
from pipelines.settings import Settings, load_settings
from pipelines.silver.tables import silver_schema
from pipelines.simulate.generator import generate

# A small world with the simulator's strong genre tastes, and a small model: the file
# runs two retrains (about 2 minutes on 2 cores), the second one from the recorded
# versions of the first after more traffic arrived.
SMALL = {
    "LAKEHOUSE_SIMULATE__USERS": "300",
    "LAKEHOUSE_SIMULATE__MEDIA": "150",
    "LAKEHOUSE_SIMULATE__CREATORS": "16",
    "LAKEHOUSE_SIMULATE__UPLOAD_RATIO": "0.001",
    "LAKEHOUSE_FEATURES__ALS__RANK": "[4, 8]",
    "LAKEHOUSE_FEATURES__ALS__REG_PARAM": "[0.05]",
    "LAKEHOUSE_FEATURES__ALS__ALPHA": "[20.0]",
    "LAKEHOUSE_FEATURES__ALS__MAX_ITER": "5",
}
EVENTS, SEED = 40_000, 7


def silver_rows(settings: Settings, events: int, seed: int) -> list[tuple]:
    """The valid user actions of a simulated stream, as silver.user_actions rows."""
    limit = settings.streaming.max_record_bytes
    rows = []
    for offset, record in enumerate(generate(settings.simulate, events, seed, limit)):
        if record.kind != "valid" or record.topic_kind != "user_actions":
            continue
        verdict = classify(record.event_type, record.value, limit)
        e = verdict.event
        at = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        rows.append((
            e["eventId"], e["userId"], e["action"], at, e["mediaId"], e.get("sessionId"),
            e.get("positionMs"), e["device"], verdict.schema_version, "media.user-actions", 0,
            offset + seed * 10_000_000, at, at.date(),
        ))  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def world() -> dict[int, list[tuple]]:
    """Two simulated streams over the same calendar: the first, then "more traffic"."""
    settings = load_settings(env=SMALL)
    return {seed: silver_rows(settings, EVENTS, seed) for seed in (SEED, SEED + 1)}


def write_inputs(spark: SparkSession, settings: Settings, rows: list[tuple]) -> None:
    """Append actions to silver.user_actions and their sessions to gold.playback_sessions
    (the gold engineer's `sessionize`, applied to this batch of actions)."""
    actions = spark.createDataFrame(rows, silver_schema("user_action"))
    actions.write.format("delta").mode("append").partitionBy("event_date").save(
        settings.lakehouse.table_path("silver", "user_actions")
    )
    sessionize(actions, settings.gold.session_gap).write.format("delta").mode("append").save(
        settings.lakehouse.table_path("gold", "playback_sessions")
    )


def read(spark: SparkSession, settings: Settings, table: str) -> DataFrame:
    return spark.read.format("delta").load(settings.lakehouse.table_path("features", table))


@pytest.fixture(scope="module")
def first(spark, broker_env, world, tmp_path_factory) -> dict:  # noqa: ANN001
    """One lakehouse with the first stream in it, retrained once; what the tests check
    is collected right away (a later retrain replaces the features tables)."""
    root = tmp_path_factory.mktemp("retrain") / "lake"
    settings = load_settings(env={**broker_env, **SMALL, "LAKEHOUSE_ROOT": str(root)})
    write_inputs(spark, settings, world[SEED])
    summary = retrain.run(spark, settings)
    print("retrain summary:", summary)
    return {
        "settings": settings,
        "summary": summary,
        # Collected, not cached: a cached Delta read would be served again for the
        # same path after the table is overwritten, making comparisons vacuous.
        "recommendations": read(spark, settings, "user_recommendations").collect(),
        "popularity": read(spark, settings, "item_popularity").collect(),
        "runs": read(spark, settings, "training_runs").collect(),
    }


def test_als_beats_popularity_and_outputs_keep_their_invariants(
    spark: SparkSession, first: dict, world: dict[int, list[tuple]]
) -> None:
    settings, summary = first["settings"], first["summary"]
    model, baseline = summary["model"], summary["baseline"]
    assert summary["eval_users"] >= 100
    assert model["ndcg_at_10"] > baseline["ndcg_at_10"] * 1.2, (model, baseline)
    assert [(g["rank"], g["reg_param"], g["alpha"]) for g in summary["grid"]] == [
        (4, 0.05, 20.0), (8, 0.05, 20.0)
    ]  # fmt: skip
    best = max(summary["grid"], key=lambda g: g["ndcg_at_10"])
    assert summary["params"] == {"rank": best["rank"], "reg_param": 0.05, "alpha": 20.0}

    k = settings.features.top_k
    recs = spark.createDataFrame(first["recommendations"])
    sessions = spark.read.format("delta").load(
        settings.lakehouse.table_path("gold", "playback_sessions")
    )
    users = {r["user_id"] for r in sessions.select("user_id").distinct().collect()}
    per_user = recs.groupBy("user_id").agg(
        F.sort_array(F.collect_list("rank")).alias("ranks"),
        F.count_distinct("media_id").alias("distinct_media"),
    ).collect()
    assert {r["user_id"] for r in per_user} == users
    assert {tuple(r["ranks"]) for r in per_user} == {tuple(range(1, k + 1))}
    assert {r["distinct_media"] for r in per_user} == {k}
    completed = sessions.filter(F.col("outcome") == "completed")
    assert recs.join(completed, on=["user_id", "media_id"], how="inner").count() == 0
    assert {r["model_version"] for r in first["recommendations"]} == {summary["model_version"]}
    # Within a user, model rows come first and never score more at a later rank;
    # popularity fills (null score) only follow them.
    by_user: dict[str, list] = {}
    for r in sorted(first["recommendations"], key=lambda r: (r["user_id"], r["rank"])):
        by_user.setdefault(r["user_id"], []).append(r["score"])
    for scores in by_user.values():
        model_part = [s for s in scores if s is not None]
        assert scores[: len(model_part)] == sorted(model_part, reverse=True)

    media = sorted({row[4] for row in world[SEED]})  # media_id of every action
    assert sorted(r["media_id"] for r in first["popularity"]) == media

    (run,) = first["runs"]
    assert run["model_version"] == summary["model_version"]
    assert run["input_versions"] == {"gold.playback_sessions": 0, "silver.user_actions": 0}
    assert (run["ndcg_at_10"], run["baseline_ndcg_at_10"]) == (
        model["ndcg_at_10"], baseline["ndcg_at_10"]
    )  # fmt: skip
    assert [(g["rank"], g["ndcg_at_10"]) for g in run["grid"]] == [
        (g["rank"], g["ndcg_at_10"]) for g in summary["grid"]
    ]


def test_retrain_from_recorded_versions_reproduces_the_recommendations(
    spark: SparkSession, first: dict, world: dict[int, list[tuple]]
) -> None:
    settings = first["settings"]
    # More traffic arrives; then the recorded versions are retrained.
    write_inputs(spark, settings, world[SEED + 1])
    assert retrain.current_versions(spark, settings) != first["summary"]["input_versions"]
    again = retrain.run(spark, settings, input_versions=first["summary"]["input_versions"])

    assert again["model_version"] == first["summary"]["model_version"]
    assert again["grid"] == first["summary"]["grid"]
    assertDataFrameEqual(
        read(spark, settings, "user_recommendations").drop("generated_at"),
        [Row(**{k: v for k, v in r.asDict().items() if k != "generated_at"})
         for r in first["recommendations"]],
        rtol=0, atol=0,
    )  # fmt: skip
    assertDataFrameEqual(
        read(spark, settings, "item_popularity"), first["popularity"], rtol=0, atol=0
    )
    runs = read(spark, settings, "training_runs").collect()
    assert [r["model_version"] for r in runs] == [first["summary"]["model_version"]] * 2
