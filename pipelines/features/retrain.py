"""`lakehouse retrain`: batch retrain of the recommendation features.

Reads gold.playback_sessions and silver.user_actions at pinned Delta versions,
picks ALS parameters on a time-based holdout, refits on everything, and writes
features.user_recommendations, features.item_popularity (both replaced) and
one features.training_runs row (appended).

Serving: a user in the inputs gets the model's top-K (completed items
excluded), filled up with popular items when the model has fewer than K for
them (or no factors at all). A brand-new user, unknown to every table, is
served the first K rows of features.item_popularity in the `popular_items`
order: most unique viewers, then most plays, then media_id.

Reproducibility: `run(..., input_versions=<a training_runs row's input_versions>)`
time-travels to those versions; with the same settings and seed it rewrites the
same recommendations (only `generated_at` differs) under the same model_version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import catalog
from pipelines.features import interactions as ix
from pipelines.features.evaluate import EVAL_K, ranking_metrics, relevant_items, split_sessions
from pipelines.features.model import AlsParams, fit, param_grid, top_scores
from pipelines.io.delta import latest_commit
from pipelines.settings import FeatureSettings, Settings

log = logging.getLogger(__name__)

RECOMMENDATIONS = catalog.FEATURES_USER_RECOMMENDATIONS
POPULARITY = catalog.FEATURES_ITEM_POPULARITY
RUNS = catalog.FEATURES_TRAINING_RUNS
# Inputs by catalog name: the keys of a training run's `input_versions`.
SESSIONS_INPUT = catalog.GOLD_PLAYBACK_SESSIONS.name
ACTIONS_INPUT = catalog.SILVER_USER_ACTIONS.name
INPUTS = (SESSIONS_INPUT, ACTIONS_INPUT)
METRICS = (f"ndcg_at_{EVAL_K}", f"precision_at_{EVAL_K}", f"recall_at_{EVAL_K}")

SCORES_SCHEMA = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("media_id", T.StringType()),
    T.StructField("score", T.DoubleType()),
])
GRID_POINT = T.StructType([
    T.StructField("rank", T.IntegerType()),
    T.StructField("reg_param", T.DoubleType()),
    T.StructField("alpha", T.DoubleType()),
    *(T.StructField(m, T.DoubleType()) for m in METRICS),
])
RUNS_SCHEMA = T.StructType([
    T.StructField("model_version", T.StringType(), False),
    T.StructField("trained_at", T.TimestampType(), False),
    T.StructField("input_versions", T.MapType(T.StringType(), T.LongType()), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("reg_param", T.DoubleType(), False),
    T.StructField("alpha", T.DoubleType(), False),
    T.StructField("max_iter", T.IntegerType(), False),
    T.StructField("seed", T.LongType(), False),
    T.StructField("top_k", T.IntegerType(), False),
    T.StructField("holdout_start", T.TimestampType()),
    T.StructField("eval_users", T.LongType(), False),
    *(T.StructField(m, T.DoubleType()) for m in METRICS),
    *(T.StructField(f"baseline_{m}", T.DoubleType()) for m in METRICS),
    T.StructField("grid", T.ArrayType(GRID_POINT), False),
    T.StructField("users", T.LongType(), False),
    T.StructField("items", T.LongType(), False),
    T.StructField("interactions", T.LongType(), False),
])


# ---------------------------------------------------------------- inputs


def missing_input(settings: Settings) -> str | None:
    """Why a retrain cannot start, found before a Spark session is built (a second,
    not a JVM start): the first input table missing from a local lakehouse. Remote
    roots (a URI) are left to `current_versions`."""
    for name in INPUTS:
        path = catalog.table(name).path(settings)
        if "://" not in path and not (Path(path) / "_delta_log").is_dir():
            return f"{name}: no Delta table at {path}; run the streams first"
    return None


def current_versions(spark: SparkSession, settings: Settings) -> dict[str, int]:
    """The latest Delta version of every input table."""
    versions = {}
    for name in INPUTS:
        path = catalog.table(name).path(settings)
        if not DeltaTable.isDeltaTable(spark, path):
            raise FileNotFoundError(f"{name}: no Delta table at {path}; run the streams first")
        versions[name] = int(latest_commit(DeltaTable.forPath(spark, path))["version"])
    return versions


def read_inputs(
    spark: SparkSession, settings: Settings, versions: dict[str, int]
) -> tuple[DataFrame, DataFrame]:
    """(sessions, actions) as of `versions`, only the columns retraining uses."""

    def read(name: str) -> DataFrame:
        return (
            spark.read.format("delta")
            .option("versionAsOf", versions[name])
            .load(catalog.table(name).path(settings))
        )

    sessions = read(SESSIONS_INPUT).select(
        "user_id", "media_id", "session_start", "session_end", "watch_ms", "outcome"
    )
    actions = read(ACTIONS_INPUT).select("user_id", "media_id", "action", "event_time")
    return sessions, actions


def model_version(versions: dict[str, int], config: dict[str, Any]) -> str:
    """A name that depends only on what determines the model: inputs, parameters, code
    constants. Two runs on the same versions and settings share it."""
    blob = json.dumps({"inputs": versions, "config": config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Outputs:
    """Where a retrain writes: the paths of the three features tables."""

    recommendations: str
    popularity: str
    runs: str

    @classmethod
    def of(cls, settings: Settings) -> Outputs:
        return cls(
            recommendations=RECOMMENDATIONS.path(settings),
            popularity=POPULARITY.path(settings),
            runs=RUNS.path(settings),
        )


# ---------------------------------------------------------------- helpers with actions


class Timings(dict):
    """Seconds per phase of a run, reported in the summary (and by the benchmark)."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.monotonic() - started, 2)
            log.info("retrain %s: %.1fs", name, self[name])



def _one_row(aggregate: DataFrame) -> Row:
    """The row of an aggregate without grouping (ranking_metrics is one too)."""
    row = aggregate.head()
    assert row is not None  # such an aggregate has one row, even over no input
    return row


def _candidates(exclude: DataFrame, k: int, items: int, max_extra: int) -> int:
    """How many scores to ask per user so k survive the exclusion of completed items.

    At most `max_extra` beyond k: a binge-watcher with 800 completions would make every
    user's candidate list 800 long; past the cap such a user's list is topped up from
    popularity instead."""
    row = _one_row(exclude.groupBy("user_id").count().agg(F.max("count")))
    most_completed = min(int(row[0] or 0), max_extra)
    return max(1, min(k + most_completed, items))


def _metrics(row: Row) -> dict[str, float | None]:
    return {m: (None if row[m] is None else float(row[m])) for m in METRICS}


def _indexed(interactions: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    users = ix.id_index(interactions, "user_id", "user_idx").cache()
    items = ix.id_index(interactions, "media_id", "item_idx").cache()
    ratings = ix.to_ratings(interactions, users, items).cache()
    return users, items, ratings


# ---------------------------------------------------------------- evaluation


def evaluate_grid(
    spark: SparkSession,
    sessions: DataFrame,
    actions: DataFrame,
    grid: list[AlsParams],
    feats: FeatureSettings,
    timings: Timings | None = None,
) -> dict[str, Any]:
    """Holdout metrics of every grid point and of the popularity baseline.

    The last `feats.holdout_days` days (before the newest session_end) are the test
    set; each model is fit on the rest and judged on its top-10 for the users with a
    relevant holdout item, completed training items excluded. Users the model
    cannot score get popularity, as in production, for the model and the baseline.
    """
    timings = Timings() if timings is None else timings
    newest = _one_row(sessions.agg(F.max("session_end")))[0]
    cut = newest - timedelta(days=feats.holdout_days)
    train, test = split_sessions(sessions, cut)
    relevant = relevant_items(train, test, feats.relevant_watch_ms).cache()
    eval_users = relevant.select("user_id").distinct().cache()
    exclude = ix.completed_pairs(train).cache()
    train_popularity = ix.item_popularity(
        actions.filter(F.col("event_time") < F.lit(cut)),
        train,
        feats.popularity_days,
        feats.trending_prior,
    )
    interactions = ix.implicit_feedback(train, feats.weights)
    users, items, ratings = _indexed(interactions)
    popular = None
    try:
        with timings.phase("holdout_prepare"):
            n_items = items.count()
            n = _candidates(
                exclude.join(eval_users, on="user_id", how="inner"),
                EVAL_K,
                max(n_items, 1),
                feats.max_extra_candidates,
            )
            popular = ix.popular_items(train_popularity, n).cache()
            can_fit = eval_users.count() > 0 and ratings.count() > 0
        with timings.phase("holdout_baseline"):
            empty = spark.createDataFrame([], SCORES_SCHEMA)
            baseline = _one_row(ranking_metrics(
                ix.blend_recommendations(empty, popular, eval_users, exclude, EVAL_K), relevant
            ))
        results = []
        for i, params in enumerate(grid):
            if not can_fit:
                results.append({**params.as_dict(), **dict.fromkeys(METRICS)})
                continue
            with timings.phase(f"holdout_fit_{i}"):
                model = fit(ratings, params, feats.als.max_iter, feats.seed, feats.als.blocks)
            with timings.phase(f"holdout_score_{i}"):
                # Cached: the blend reads the scores twice (candidates and counts).
                scores = top_scores(model, eval_users, users, items, n).cache()
                recs = ix.blend_recommendations(scores, popular, eval_users, exclude, EVAL_K)
                metrics = _metrics(_one_row(ranking_metrics(recs, relevant)))
                scores.unpersist()
            results.append({**params.as_dict(), **metrics})
        return {
            "holdout_start": cut,
            "eval_users": int(baseline["users"]),
            "baseline": _metrics(baseline),
            "grid": results,
        }
    finally:
        # Dependents before what they are built on: uncaching a frame re-plans the
        # cached frames that use it.
        for df in (popular, ratings, items, users, exclude, eval_users, relevant):
            if df is not None:
                df.unpersist()


def _chosen(results: list[dict[str, Any]], best: AlsParams) -> dict[str, Any]:
    return next(r for r in results if all(r[k] == v for k, v in best.as_dict().items()))


def best_params(grid: list[AlsParams], results: list[dict[str, Any]]) -> AlsParams:
    """Highest holdout NDCG@10; the first in conf order on ties or without metrics."""
    key = f"ndcg_at_{EVAL_K}"
    best = max(range(len(grid)), key=lambda i: (results[i][key] or -1.0, -i))
    return grid[best]


# ---------------------------------------------------------------- the job


def run(
    spark: SparkSession, settings: Settings, input_versions: dict[str, int] | None = None
) -> dict[str, Any]:
    """Retrain, write the three features tables, return a summary of the run.

    `input_versions` ({"gold.playback_sessions": v, "silver.user_actions": v})
    pins the inputs (Delta time travel); by default the latest versions are used.
    """
    started = time.monotonic()
    timings = Timings()
    feats = settings.features
    versions = dict(input_versions) if input_versions else current_versions(spark, settings)
    missing = set(INPUTS) - set(versions)
    if missing:
        raise ValueError(f"input_versions lacks {sorted(missing)}")
    versions = {name: int(versions[name]) for name in INPUTS}
    trained_at = datetime.now(UTC)
    sessions, actions = read_inputs(spark, settings, versions)
    sessions, actions = sessions.cache(), actions.cache()
    outputs = Outputs.of(settings)
    grid = param_grid(feats.als)
    try:
        with timings.phase("read_inputs"):
            if sessions.isEmpty():
                raise ValueError(
                    f"{SESSIONS_INPUT} has no sessions at version {versions[SESSIONS_INPUT]}"
                )
            actions.count()
        evaluation = evaluate_grid(spark, sessions, actions, grid, feats, timings)
        best = best_params(grid, evaluation["grid"])
        w = feats.weights
        config = {
            "params": best.as_dict(),
            "grid": [p.as_dict() for p in grid],
            "max_iter": feats.als.max_iter,
            "seed": feats.seed,
            "top_k": feats.top_k,
            "holdout_days": feats.holdout_days,
            "popularity_days": feats.popularity_days,
            "blocks": feats.als.blocks,
            "relevant_watch_ms": feats.relevant_watch_ms,
            "weights": [w.play, w.complete, w.skip, w.watch_hour, w.watch_cap_hours,
                        feats.trending_prior],
            "max_extra_candidates": feats.max_extra_candidates,
        }  # fmt: skip
        version = model_version(versions, config)
        written = _final(
            spark, feats, outputs, sessions, actions, best, version, trained_at, timings
        )
        run_row = _run_row(version, trained_at, versions, best, feats, evaluation, written)
        with timings.phase("write_run"):
            run_df = spark.createDataFrame([_by_name(run_row, RUNS_SCHEMA)], RUNS_SCHEMA)
            run_df.write.format("delta").mode("append").save(outputs.runs)
    finally:
        sessions.unpersist()
        actions.unpersist()
    return {
        "model_version": version,
        "trained_at": trained_at.isoformat(),
        "input_versions": versions,
        "params": best.as_dict(),
        "holdout_start": evaluation["holdout_start"].isoformat(),
        "eval_users": evaluation["eval_users"],
        "model": _chosen(evaluation["grid"], best),
        "baseline": evaluation["baseline"],
        "grid": evaluation["grid"],
        **written,
        "timings_s": dict(timings),
        "total_s": round(time.monotonic() - started, 1),
    }


def _final(
    spark: SparkSession,
    feats: FeatureSettings,
    outputs: Outputs,
    sessions: DataFrame,
    actions: DataFrame,
    params: AlsParams,
    version: str,
    generated_at: datetime,
    timings: Timings,
) -> dict[str, int]:
    """Refit on all sessions with `params`; write recommendations and popularity."""
    exclude = ix.completed_pairs(sessions).cache()
    popularity = ix.item_popularity(
        actions, sessions, feats.popularity_days, feats.trending_prior
    ).cache()
    users_all = sessions.select("user_id").unionByName(actions.select("user_id")).distinct()
    interactions = ix.implicit_feedback(sessions, feats.weights)
    users, items, ratings = _indexed(interactions)
    scores = None
    try:
        with timings.phase("final_prepare"):
            n_items = items.count()
            n = _candidates(exclude, feats.top_k, n_items, feats.max_extra_candidates)
        with timings.phase("final_fit"):
            model = fit(ratings, params, feats.als.max_iter, feats.seed, feats.als.blocks)
        with timings.phase("final_recommend"):
            scores = top_scores(model, users_all, users, items, n).cache()
            recommendations = ix.blend_recommendations(
                scores, ix.popular_items(popularity, n), users_all, exclude, feats.top_k
            ).select(
                "user_id", "rank", "media_id", "score",
                F.lit(version).alias("model_version"),
                F.lit(generated_at).cast("timestamp").alias("generated_at"),
            )  # fmt: skip
            recommendations.write.format("delta").mode("overwrite").save(
                outputs.recommendations
            )
        with timings.phase("final_popularity"):
            popularity.write.format("delta").mode("overwrite").save(outputs.popularity)
        return {
            "users": users.count(),
            "items": n_items,
            "interactions": ratings.count(),
            "recommendation_rows": _rows_written(spark, outputs.recommendations),
            "popularity_rows": _rows_written(spark, outputs.popularity),
        }
    finally:
        for df in (scores, popularity, ratings, items, users, exclude):
            if df is not None:
                df.unpersist()


def _rows_written(spark: SparkSession, path: str) -> int:
    """Rows of the last write to a Delta table, from its log (no scan)."""
    metrics = latest_commit(DeltaTable.forPath(spark, path))["operationMetrics"]
    return int(metrics.get("numOutputRows", 0))


def _run_row(
    version: str,
    trained_at: datetime,
    versions: dict[str, int],
    best: AlsParams,
    feats: FeatureSettings,
    evaluation: dict[str, Any],
    written: dict[str, int],
) -> dict[str, Any]:
    """The features.training_runs row of this run, by RUNS_SCHEMA field name."""
    chosen = _chosen(evaluation["grid"], best)
    return {
        "model_version": version,
        "trained_at": trained_at,
        "input_versions": versions,
        "rank": best.rank,
        "reg_param": best.reg_param,
        "alpha": best.alpha,
        "max_iter": feats.als.max_iter,
        "seed": feats.seed,
        "top_k": feats.top_k,
        "holdout_start": evaluation["holdout_start"],
        "eval_users": evaluation["eval_users"],
        **{m: chosen[m] for m in METRICS},
        **{f"baseline_{m}": evaluation["baseline"][m] for m in METRICS},
        "grid": [_by_name(point, GRID_POINT) for point in evaluation["grid"]],
        "users": written["users"],
        "items": written["items"],
        "interactions": written["interactions"],
    }


def _by_name(row: Mapping[str, Any], schema: T.StructType) -> tuple[Any, ...]:
    """`row` as the tuple `schema` expects: its values in field order.

    createDataFrame reads a tuple by position; a row built as a dict and ordered
    here keeps each value with its name when the schema's order changes, and a
    misspelt or forgotten name fails instead of shifting or nulling a column."""
    names = schema.fieldNames()
    if sorted(row) != sorted(names):
        missing, unknown = sorted(set(names) - set(row)), sorted(set(row) - set(names))
        raise ValueError(f"row does not match its schema: missing {missing}, unknown {unknown}")
    return tuple(row[name] for name in names)
