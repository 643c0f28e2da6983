"""`lakehouse retrain`: batch retrain of the recommendation features, behind a gate.

Inputs, at pinned Delta versions: gold.playback_sessions and silver.user_actions,
and when they exist silver.content_uploads (each item's genre and creator) and
gold.notifications (who is a fan of which new upload).

Candidates: implicit-feedback ALS (its grid), the taste model (genre and creator
affinity times popularity, `pipelines.features.taste`), and popularity. Three
time splits: train, validation (`features.validation_days`), test
(`features.holdout_days`, the newest). Every candidate point is fit before the
validation split and judged on it; the best one is refit before the test split and
judged there against popularity and the served model (refit the same way). The
gate (`pipelines.features.gate`) then promotes it, keeps the served lists, or serves
popularity; features.training_runs records the decision and why.

Serving: a user's list is headed by up to `features.new_uploads.slots` new uploads
of creators the user follows, then the model's items, then popular ones; completed
items never appear (and the gold stream removes an item completed after the run).
A brand-new user gets the first K rows of features.item_popularity in the
`popular_items` order.

Reproducibility: `run(..., input_versions=<a training_runs row's input_versions>)`
time-travels to those versions; with the same settings, seed and served model it
rewrites the same recommendations (only `generated_at` differs). A run on the latest
versions also takes off its lists what was completed while it ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import catalog
from pipelines.features import gate, taste
from pipelines.features import interactions as ix
from pipelines.features import serving as serving_store
from pipelines.features.evaluate import EVAL_K, ranking_metrics, relevant_items, split_sessions
from pipelines.features.fresh import completed, drop_completed
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
UPLOADS_INPUT = catalog.SILVER_CONTENT_UPLOADS.name
NOTIFICATIONS_INPUT = catalog.GOLD_NOTIFICATIONS.name
INPUTS = (SESSIONS_INPUT, ACTIONS_INPUT)
# Read when they exist; without them items have no genre or creator, and no list
# is headed by new uploads.
OPTIONAL_INPUTS = (UPLOADS_INPUT, NOTIFICATIONS_INPUT)
METRICS = (f"ndcg_at_{EVAL_K}", f"precision_at_{EVAL_K}", f"recall_at_{EVAL_K}")
NDCG = METRICS[0]

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
PARAMS = T.MapType(T.StringType(), T.DoubleType())
CANDIDATE_POINT = T.StructType([
    T.StructField("candidate", T.StringType()),
    T.StructField("params", PARAMS),
    *(T.StructField(m, T.DoubleType()) for m in METRICS),
])
RUNS_SCHEMA = T.StructType([
    T.StructField("model_version", T.StringType(), False),
    T.StructField("trained_at", T.TimestampType(), False),
    T.StructField("input_versions", T.MapType(T.StringType(), T.LongType()), False),
    # The ALS grid's best point on the validation split (ALS is always a candidate).
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("reg_param", T.DoubleType(), False),
    T.StructField("alpha", T.DoubleType(), False),
    T.StructField("max_iter", T.IntegerType(), False),
    T.StructField("seed", T.LongType(), False),
    T.StructField("top_k", T.IntegerType(), False),
    T.StructField("holdout_start", T.TimestampType()),
    T.StructField("eval_users", T.LongType(), False),
    # The chosen candidate on the test split, and popularity there.
    *(T.StructField(m, T.DoubleType()) for m in METRICS),
    *(T.StructField(f"baseline_{m}", T.DoubleType()) for m in METRICS),
    T.StructField("grid", T.ArrayType(GRID_POINT), False),
    T.StructField("users", T.LongType(), False),
    T.StructField("items", T.LongType(), False),
    T.StructField("interactions", T.LongType(), False),
    T.StructField("candidate", T.StringType()),
    T.StructField("params", PARAMS),
    T.StructField("validation_start", T.TimestampType()),
    T.StructField("candidates", T.ArrayType(CANDIDATE_POINT)),
    T.StructField("served_before", T.StringType()),
    T.StructField(f"served_{NDCG}", T.DoubleType()),
    T.StructField("decision", T.StringType()),
    T.StructField("reason", T.StringType()),
    # What serves after this run (a kept run names the earlier lists).
    T.StructField("served_model_version", T.StringType()),
    T.StructField("served_candidate", T.StringType()),
    T.StructField("served_params", PARAMS),
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
    """The latest Delta version of every input table (optional ones if they exist)."""
    versions = {}
    for name in INPUTS + OPTIONAL_INPUTS:
        path = catalog.table(name).path(settings)
        if not DeltaTable.isDeltaTable(spark, path):
            if name in OPTIONAL_INPUTS:
                continue
            raise FileNotFoundError(f"{name}: no Delta table at {path}; run the streams first")
        versions[name] = int(latest_commit(DeltaTable.forPath(spark, path))["version"])
    return versions


@dataclass(frozen=True)
class Inputs:
    sessions: DataFrame
    actions: DataFrame
    meta: DataFrame  # media_id, genre, creator_id
    notifications: DataFrame  # user_id, media_id, created_at


def read_inputs(spark: SparkSession, settings: Settings, versions: dict[str, int]) -> Inputs:
    """The inputs as of `versions`, only the columns retraining uses; an optional
    input without a version is empty."""

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
    if UPLOADS_INPUT in versions:
        uploads = read(UPLOADS_INPUT).select("media_id", "creator_id", "genre", "event_time")
    else:
        uploads = spark.createDataFrame(
            [], "media_id string, creator_id string, genre string, event_time timestamp"
        )
    if NOTIFICATIONS_INPUT in versions:
        notified = read(NOTIFICATIONS_INPUT).select("user_id", "media_id", "created_at")
    else:
        notified = spark.createDataFrame(
            [], "user_id string, media_id string, created_at timestamp"
        )
    return Inputs(sessions, actions, taste.item_meta(uploads), notified)


def model_version(versions: dict[str, int], config: dict[str, Any]) -> str:
    """A name that depends only on what determines the lists: inputs, candidate,
    parameters, code constants. Two runs on the same versions and settings share it."""
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


# ---------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """A way to make lists: `als`, `taste` or `popularity`, with its parameters."""

    kind: str
    params: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, kind: str, params: Mapping[str, float] | None) -> Candidate:
        return cls(kind, tuple(sorted((k, float(v)) for k, v in (params or {}).items())))

    def as_dict(self) -> dict[str, float]:
        return dict(self.params)

    def label(self) -> str:
        inside = ",".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.kind}({inside})" if inside else self.kind


POPULARITY_ONLY = Candidate("popularity")


def candidates(feats: FeatureSettings) -> list[Candidate]:
    """Every point tried on the validation split, in conf order (ties go first)."""
    als = [Candidate.of("als", p.as_dict()) for p in param_grid(feats.als)]
    tastes = [Candidate.of("taste", p.as_dict()) for p in taste.taste_grid(feats.taste)]
    return als + tastes


def _als_params(candidate: Candidate) -> AlsParams:
    p = candidate.as_dict()
    return AlsParams(int(p["rank"]), p["reg_param"], p["alpha"])


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


def _candidates_per_user(exclude: DataFrame, k: int, items: int, max_extra: int) -> int:
    """How many scores to ask per user so k survive the exclusion of completed items.

    At most `max_extra` beyond k: a binge-watcher with 800 completions would make every
    user's candidate list 800 long; past the cap such a user's list is topped up from
    popularity instead."""
    row = _one_row(exclude.groupBy("user_id").count().agg(F.max("count")))
    most_completed = min(int(row[0] or 0), max_extra)
    return max(1, min(k + most_completed, items))


def _metrics(row: Row) -> dict[str, float | None]:
    return {m: (None if row[m] is None else float(row[m])) for m in METRICS}


@dataclass
class Fold:
    """What lists are made from and for whom. Training data is everything before
    `cut` (None: everything); the users are those with a relevant item in
    [cut, until), or `serve_to` when given (serving, nobody judged). New uploads lead a
    list if notified in the `new_uploads.days` before `cut` (or before `anchor`).
    Frames are cached; `release` frees them."""

    spark: SparkSession
    feats: FeatureSettings
    inputs: Inputs
    cut: datetime | None
    until: datetime | None
    k: int
    anchor: datetime | None = None
    serve_to: DataFrame | None = None
    _cached: list[DataFrame] = field(default_factory=list)
    _taste_inputs: taste.TasteInputs | None = None

    def __post_init__(self) -> None:
        feats, sessions, actions = self.feats, self.inputs.sessions, self.inputs.actions
        if self.cut is None:
            train = sessions
        else:
            train, after = split_sessions(sessions, self.cut)
            if self.until is not None:
                after = after.filter(F.col("session_start") < F.lit(self.until))
            actions = actions.filter(F.col("event_time") < F.lit(self.cut))
        self.train = self._keep(train)
        self.relevant: DataFrame | None = None
        if self.serve_to is None:
            self.relevant = self._keep(relevant_items(train, after, feats.relevant_watch_ms))
            self.users = self._keep(self.relevant.select("user_id").distinct())
        else:
            self.users = self._keep(self.serve_to)
        self.exclude = self._keep(ix.completed_pairs(train))
        self.popularity = self._keep(ix.item_popularity(
            actions, train, feats.popularity_days, feats.trending_prior
        ))  # fmt: skip
        interactions = ix.implicit_feedback(train, feats.weights)
        self.user_index = self._keep(ix.id_index(interactions, "user_id", "user_idx"))
        self.item_index = self._keep(ix.id_index(interactions, "media_id", "item_idx"))
        self.ratings = self._keep(ix.to_ratings(interactions, self.user_index, self.item_index))
        self.lead = taste.followed_uploads(
            self.inputs.notifications, self.cut or self.anchor, self.cut, feats.new_uploads.days
        )
        self.items = self.item_index.count()
        self.n = _candidates_per_user(
            self.exclude.join(self.users, on="user_id", how="inner"),
            self.k, max(self.items, 1), feats.max_extra_candidates,
        )  # fmt: skip
        self.popular = self._keep(ix.popular_items(self.popularity, self.n))
        self.can_fit = self.ratings.count() > 0

    def _keep(self, frame: DataFrame) -> DataFrame:
        self._cached.append(frame.cache())
        return frame

    def release(self) -> None:
        # Dependents before what they are built on: uncaching a frame re-plans the
        # cached frames that use it.
        for frame in reversed(self._cached):
            frame.unpersist()

    def scores(self, candidate: Candidate) -> DataFrame:
        """(user_id, media_id, score) of `candidate` for this fold's users."""
        feats = self.feats
        if candidate.kind == "popularity" or not self.can_fit:
            return self.spark.createDataFrame([], SCORES_SCHEMA)
        if candidate.kind == "als":
            model = fit(self.ratings, _als_params(candidate), feats.als.max_iter, feats.seed,
                        feats.als.blocks)  # fmt: skip
            return top_scores(model, self.users, self.user_index, self.item_index, self.n)
        if candidate.kind == "taste":
            params = taste.TasteParams(**candidate.as_dict())
            return taste.taste_scores(self._taste(), params, feats.taste.floor, self.n)
        raise ValueError(f"unknown candidate kind {candidate.kind!r}")

    def _taste(self) -> taste.TasteInputs:
        """The taste candidates' inputs for this fold's users, cached on first use."""
        if self._taste_inputs is None:
            feats = self.feats
            made = taste.taste_inputs(
                self.train.join(self.users, on="user_id", how="left_semi"),
                self.inputs.meta, self.popularity, self.exclude, feats.taste, feats.weights,
                self.k, feats.max_extra_candidates,
            )  # fmt: skip
            self._taste_inputs = taste.TasteInputs(
                self._keep(made.items), self._keep(made.genres), self._keep(made.creators),
                made.max_depth,
            )  # fmt: skip
        return self._taste_inputs

    def lists(self, candidate: Candidate) -> DataFrame:
        """The top-k lists `candidate` serves this fold's users (new uploads first,
        popularity filling, completed items excluded)."""
        scores = self.scores(candidate).cache()
        self._cached.append(scores)
        return ix.blend_recommendations(
            scores, self.popular, self.users, self.exclude, self.k,
            lead=self.lead, slots=self.feats.new_uploads.slots,
        )  # fmt: skip

    def judge(self, candidate: Candidate) -> dict[str, float | None]:
        if self.relevant is None:
            raise ValueError("a serving fold judges nobody")
        return _metrics(_one_row(ranking_metrics(self.lists(candidate), self.relevant)))


def _judge_all(
    fold: Fold, points: list[Candidate], timings: Timings, phase: str
) -> list[dict[str, Any]]:
    results = []
    for i, candidate in enumerate(points):
        with timings.phase(f"{phase}_{i}_{candidate.kind}"):
            results.append({"candidate": candidate, **fold.judge(candidate)})
    return results


def _best(results: list[dict[str, Any]], kind: str | None = None) -> Candidate:
    """Highest NDCG@10 (of `kind`, if given); the first in conf order on ties or
    without metrics."""
    pool = [r for r in results if kind is None or r["candidate"].kind == kind]
    best = max(range(len(pool)), key=lambda i: (pool[i][NDCG] or -1.0, -i))
    return pool[best]["candidate"]


# ---------------------------------------------------------------- the served model


@dataclass(frozen=True)
class Served:
    model_version: str
    candidate: Candidate


def served_model(spark: SparkSession, outputs: Outputs) -> Served | None:
    """What serves now: the newest training run's served model, if its lists exist.
    A run written before the gate served its ALS parameters."""
    if not (
        DeltaTable.isDeltaTable(spark, outputs.runs)
        and DeltaTable.isDeltaTable(spark, outputs.recommendations)
    ):
        return None
    runs = spark.read.format("delta").load(outputs.runs)
    last = runs.orderBy(F.col("trained_at").desc()).head()
    if last is None:
        return None
    row = last.asDict()
    if row.get("served_candidate"):
        return Served(
            row["served_model_version"],
            Candidate.of(row["served_candidate"], row.get("served_params")),
        )
    legacy = {"rank": row["rank"], "reg_param": row["reg_param"], "alpha": row["alpha"]}
    return Served(row["model_version"], Candidate.of("als", legacy))


# ---------------------------------------------------------------- the job


def run(
    spark: SparkSession, settings: Settings, input_versions: dict[str, int] | None = None
) -> dict[str, Any]:
    """Retrain, gate, write the features tables, return a summary of the run.

    `input_versions` ({"gold.playback_sessions": v, "silver.user_actions": v, ...})
    pins the inputs (Delta time travel); by default the latest versions are used.
    """
    started = time.monotonic()
    timings = Timings()
    feats = settings.features
    versions = dict(input_versions) if input_versions else current_versions(spark, settings)
    missing = set(INPUTS) - set(versions)
    if missing:
        raise ValueError(f"input_versions lacks {sorted(missing)}")
    versions = {name: int(v) for name, v in versions.items() if name in INPUTS + OPTIONAL_INPUTS}
    trained_at = datetime.now(UTC)
    outputs = Outputs.of(settings)
    served = served_model(spark, outputs)
    inputs = read_inputs(spark, settings, versions)
    inputs = Inputs(*(frame.cache() for frame in (
        inputs.sessions, inputs.actions, inputs.meta, inputs.notifications)))  # fmt: skip
    points = candidates(feats)
    try:
        with timings.phase("read_inputs"):
            if inputs.sessions.isEmpty():
                raise ValueError(
                    f"{SESSIONS_INPUT} has no sessions at version {versions[SESSIONS_INPUT]}"
                )
            inputs.actions.count()
        newest = _one_row(inputs.sessions.agg(F.max("session_end")))[0]
        test_cut = newest - timedelta(days=feats.holdout_days)
        valid_cut = test_cut - timedelta(days=feats.validation_days)

        with timings.phase("validation_prepare"):
            fold = Fold(spark, feats, inputs, valid_cut, test_cut, EVAL_K)
        try:
            tried = _judge_all(fold, points, timings, "validation")
        finally:
            fold.release()
        chosen = _best(tried)
        best_als = _best(tried, "als")

        with timings.phase("test_prepare"):
            fold = Fold(spark, feats, inputs, test_cut, None, EVAL_K)
        try:
            with timings.phase("test_popularity"):
                baseline = fold.judge(POPULARITY_ONLY)
                eval_users = fold.users.count()
            with timings.phase("test_candidate"):
                model = fold.judge(chosen)
            served_metrics: dict[str, float | None] | None = None
            if served is not None:
                with timings.phase("test_served"):
                    served_metrics = (
                        model if served.candidate == chosen
                        else baseline if served.candidate == POPULARITY_ONLY
                        else fold.judge(served.candidate)
                    )  # fmt: skip
        finally:
            fold.release()
        decision = gate.decide(
            model[NDCG], baseline[NDCG], None if served_metrics is None else served_metrics[NDCG],
            feats.gate.min_lift, served is not None,
        )  # fmt: skip
        log.info("retrain decision: %s (%s)", decision.outcome, decision.reason)

        serving = {gate.PROMOTED: chosen, gate.POPULARITY: POPULARITY_ONLY}.get(decision.outcome)
        with timings.phase("final"):
            written = _final(spark, feats, outputs, inputs, newest, serving, versions,
                             trained_at)  # fmt: skip
        if serving is not None and not input_versions:
            # Completions the stream took off the old lists while this run read its
            # pinned inputs: taken off the new ones too (the last day's partitions).
            with timings.phase("catch_up"):
                since = (newest - timedelta(days=1)).date()
                recent = spark.read.format("delta").load(
                    catalog.SILVER_USER_ACTIONS.path(settings)
                ).filter(F.col("event_date") >= F.lit(since))
                written["caught_up"] = drop_completed(
                    spark, outputs.recommendations, completed(recent)
                )
        if serving is None:
            assert served is not None  # `kept` needs served lists
            written["model_version"] = served.model_version
            serving = served.candidate
        run_row = {
            "model_version": written["model_version"],
            "trained_at": trained_at,
            "input_versions": versions,
            **_als_params(best_als).as_dict(),
            "max_iter": feats.als.max_iter,
            "seed": feats.seed,
            "top_k": feats.top_k,
            "holdout_start": test_cut,
            "eval_users": eval_users,
            **model,
            **{f"baseline_{m}": baseline[m] for m in METRICS},
            "grid": [_by_name(point, GRID_POINT) for point in _als_grid(tried)],
            "users": written["users"],
            "items": written["items"],
            "interactions": written["interactions"],
            "candidate": chosen.kind,
            "params": chosen.as_dict(),
            "validation_start": valid_cut,
            "candidates": [_by_name({"candidate": r["candidate"].kind,
                                     "params": r["candidate"].as_dict(),
                                     **{m: r[m] for m in METRICS}}, CANDIDATE_POINT)
                           for r in tried],
            "served_before": None if served is None else served.model_version,
            f"served_{NDCG}": None if served_metrics is None else served_metrics[NDCG],
            "decision": decision.outcome,
            "reason": decision.reason,
            "served_model_version": written["model_version"],
            "served_candidate": serving.kind,
            "served_params": serving.as_dict(),
        }  # fmt: skip
        with timings.phase("write_run"):
            run_df = spark.createDataFrame([_by_name(run_row, RUNS_SCHEMA)], RUNS_SCHEMA)
            # mergeSchema: a training_runs table from before the gate gains its columns.
            run_df.write.format("delta").mode("append").option("mergeSchema", "true").save(
                outputs.runs
            )
        if settings.serving.enabled:
            with timings.phase("publish"):
                written["published"] = serving_store.publish(spark, settings)
    finally:
        for frame in (inputs.sessions, inputs.actions, inputs.meta, inputs.notifications):
            frame.unpersist()
    return {
        "model_version": written["model_version"],
        "trained_at": trained_at.isoformat(),
        "input_versions": versions,
        "candidate": chosen.label(),
        "params": chosen.as_dict(),
        "decision": decision.outcome,
        "reason": decision.reason,
        "served": serving.label(),
        "holdout_start": test_cut.isoformat(),
        "validation_start": valid_cut.isoformat(),
        "eval_users": eval_users,
        "model": model,
        "baseline": baseline,
        "served_before": None if served_metrics is None else served_metrics,
        "candidates": [{"candidate": r["candidate"].label(), **{m: r[m] for m in METRICS}}
                       for r in tried],
        "grid": _als_grid(tried),
        **{k: v for k, v in written.items() if k != "model_version"},
        "timings_s": dict(timings),
        "total_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def _als_grid(tried: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ALS points of the validation results, as the `grid` column holds them."""
    return [
        {**_als_params(r["candidate"]).as_dict(), **{m: r[m] for m in METRICS}}
        for r in tried
        if r["candidate"].kind == "als"
    ]


def _config(feats: FeatureSettings, candidate: Candidate) -> dict[str, Any]:
    """What determines a candidate's lists beyond the inputs (for `model_version`)."""
    w, t = feats.weights, feats.taste
    return {
        "candidate": candidate.kind,
        "params": candidate.as_dict(),
        "max_iter": feats.als.max_iter,
        "seed": feats.seed,
        "top_k": feats.top_k,
        "popularity_days": feats.popularity_days,
        "blocks": feats.als.blocks,
        "weights": [w.play, w.complete, w.skip, w.watch_hour, w.watch_cap_hours,
                    feats.trending_prior],
        "taste": [t.floor, t.half_life_days],
        "new_uploads": [feats.new_uploads.days, feats.new_uploads.slots],
        "max_extra_candidates": feats.max_extra_candidates,
    }  # fmt: skip


def _final(
    spark: SparkSession,
    feats: FeatureSettings,
    outputs: Outputs,
    inputs: Inputs,
    newest: datetime,
    serving: Candidate | None,
    versions: dict[str, int],
    generated_at: datetime,
) -> dict[str, Any]:
    """Refit `serving` on all sessions and write its lists (None: the served lists
    stay); write item popularity."""
    everyone = inputs.sessions.select("user_id").unionByName(
        inputs.actions.select("user_id")
    ).distinct()
    fold = Fold(spark, feats, inputs, None, None, feats.top_k, anchor=newest, serve_to=everyone)
    try:
        version = None
        if serving is not None:
            version = model_version(versions, _config(feats, serving))
            recommendations = fold.lists(serving).select(
                "user_id", "rank", "media_id", "score",
                F.lit(version).alias("model_version"),
                F.lit(generated_at).cast("timestamp").alias("generated_at"),
            )  # fmt: skip
            recommendations.write.format("delta").mode("overwrite").save(
                outputs.recommendations
            )
        fold.popularity.write.format("delta").mode("overwrite").save(outputs.popularity)
        return {
            "model_version": version,
            "users": fold.user_index.count(),
            "items": fold.items,
            "interactions": fold.ratings.count(),
            "recommendation_rows": (
                _rows_written(spark, outputs.recommendations) if serving is not None else 0
            ),
            "popularity_rows": _rows_written(spark, outputs.popularity),
        }
    finally:
        fold.release()


def _rows_written(spark: SparkSession, path: str) -> int:
    """Rows of the last write to a Delta table, from its log (no scan)."""
    metrics = latest_commit(DeltaTable.forPath(spark, path))["operationMetrics"]
    return int(metrics.get("numOutputRows", 0))


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
