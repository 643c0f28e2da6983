"""Pure transforms from playback sessions and user actions to recommendation inputs.

Nothing here reads or writes: every function is `DataFrame -> DataFrame` (plus
plain values), so the tests run them on three-row inputs.
"""

from __future__ import annotations

from pyspark.ml.feature import StringIndexer
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.settings import FeatureWeights

MS_PER_HOUR = 3_600_000
# Float sums depend on the order rows meet in an aggregation; rounding removes
# that noise so identical inputs give bit-identical model inputs and outputs.
DECIMALS = 6


def session_weight(weights: FeatureWeights) -> F.Column:
    """Implicit feedback of one gold.playback_sessions row (`features.weights`).

    `play` for starting it, `complete` more if completed, minus `skip` if
    skipped, plus `watch_hour` per hour watched (capped at `watch_cap_hours`,
    so a 3-hour film left running is not a super-like). A quick skip is
    negative: implicit ALS reads a negative total as "preference 0, with
    confidence", i.e. a dislike.
    """
    watch_hours = F.least(F.col("watch_ms") / MS_PER_HOUR, F.lit(float(weights.watch_cap_hours)))
    is_completed = F.col("outcome") == "completed"
    is_skipped = F.col("outcome") == "skipped"
    return (
        F.lit(float(weights.play))
        + F.when(is_completed, float(weights.complete)).otherwise(0.0)
        - F.when(is_skipped, float(weights.skip)).otherwise(0.0)
        + float(weights.watch_hour) * watch_hours
    )


def implicit_feedback(sessions: DataFrame, weights: FeatureWeights) -> DataFrame:
    """Sessions -> one row per (user_id, media_id) with its summed `strength`,
    each session weighted by `session_weight` with these weights."""
    return (
        sessions.withColumn("weight", session_weight(weights))
        .groupBy("user_id", "media_id")
        .agg(
            F.count(F.lit(1)).alias("sessions"),
            F.sum(F.when(F.col("outcome") == "completed", 1).otherwise(0)).alias("completions"),
            F.sum(F.when(F.col("outcome") == "skipped", 1).otherwise(0)).alias("skips"),
            F.sum("watch_ms").alias("watch_ms"),
            F.round(F.sum("weight"), DECIMALS).alias("strength"),
        )
        .select(
            F.col("user_id"),
            F.col("media_id"),
            F.col("sessions"),
            F.col("completions").cast("long").alias("completions"),
            F.col("skips").cast("long").alias("skips"),
            F.col("watch_ms").cast("long").alias("watch_ms"),
            F.col("strength"),
        )
    )


def completed_pairs(sessions: DataFrame) -> DataFrame:
    """(user_id, media_id) the user has completed at least once: never recommended."""
    return (
        sessions.filter(F.col("outcome") == "completed")
        .select("user_id", "media_id")
        .distinct()
    )


def id_index(ids: DataFrame, id_col: str, index_col: str) -> DataFrame:
    """A dense 0-based int index of the distinct ids, in id order.

    ALS needs int ids. StringIndexer's default (by frequency) may break ties
    differently between runs; in alphabetical order the index depends only on the
    set of ids, so the same input versions always give the same index. The ids are
    counted by a distributed aggregation and indexed by a projection (no window
    over one partition).
    """
    distinct = ids.select(id_col).distinct()
    indexer = StringIndexer(
        inputCol=id_col, outputCol=index_col, stringOrderType="alphabetAsc"
    ).fit(distinct)
    return indexer.transform(distinct).select(id_col, F.col(index_col).cast("int"))


def to_ratings(interactions: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Interactions with the int ids ALS wants: (user_idx, item_idx, strength)."""
    return (
        interactions.join(users, on="user_id", how="inner")
        .join(items, on="media_id", how="inner")
        .select("user_idx", "item_idx", "strength")
    )


def item_popularity(
    actions: DataFrame, sessions: DataFrame, days: int, trending_prior: float
) -> DataFrame:
    """Per media_id seen in `actions`: popularity over the last `days` days.

    "Last days" is relative to the newest `event_time` in `actions` (the anchor),
    not to the wall clock, so the same input always gives the same numbers.
    - `plays_7d`: play actions in the window (as gold.media_engagement counts plays);
    - `unique_viewers_7d`: distinct users with any action in the window;
    - `completion_rate`: completed / all sessions that started in the window
      (null when none did);
    - `trending_score`: plays in the last day over the window's average plays per
      day, both smoothed by `trending_prior` (plays per day; it keeps an item with
      one play yesterday and none before from outranking a steadily watched hit):
      `(plays_1d + prior) / (plays_7d / days + prior)`. 1 is steady, above 1 rising,
      below 1 fading; an item with no plays in the window scores `prior / prior = 1`
      only if it has none in the last day either, i.e. it is neutral, not trending.
    Columns keep the `_7d` names of the contract whatever `days` is.
    """
    anchor = actions.agg(F.max("event_time").alias("anchor"))
    window_start = F.col("anchor") - F.expr(f"INTERVAL {int(days)} DAYS")
    day_start = F.col("anchor") - F.expr("INTERVAL 1 DAYS")
    is_play = F.col("action") == "play"
    in_window = F.col("event_time") > window_start
    in_last_day = F.col("event_time") > day_start
    per_action = (
        actions.crossJoin(anchor)
        .groupBy("media_id")
        .agg(
            F.count(F.when(is_play & in_window, True)).alias("plays_7d"),
            F.countDistinct(F.when(in_window, F.col("user_id"))).alias("unique_viewers_7d"),
            F.count(F.when(is_play & in_last_day, True)).alias("plays_1d"),
        )
    )
    session_in_window = F.col("session_start") > window_start
    per_session = (
        sessions.crossJoin(anchor)
        .filter(session_in_window)
        .groupBy("media_id")
        .agg(
            F.count(F.lit(1)).alias("window_sessions"),
            F.count(F.when(F.col("outcome") == "completed", True)).alias("window_completed"),
        )
    )
    prior = float(trending_prior)
    trending = (F.col("plays_1d") + prior) / (F.col("plays_7d") / float(days) + prior)
    return (
        per_action.join(per_session, on="media_id", how="left")
        .select(
            F.col("media_id"),
            F.col("plays_7d").cast("long").alias("plays_7d"),
            F.col("unique_viewers_7d").cast("long").alias("unique_viewers_7d"),
            F.round(F.col("window_completed") / F.col("window_sessions"), DECIMALS).alias(
                "completion_rate"
            ),
            F.round(trending, DECIMALS).alias("trending_score"),
        )
    )


def popular_items(popularity: DataFrame, n: int) -> DataFrame:
    """The `n` most popular items with their `pop_rank` (1 = most popular).

    This order is how anyone without a model row is served, a brand-new user
    included: most distinct viewers in the window first, then most plays, then
    media_id so ties are stable.
    """
    order = [F.col("unique_viewers_7d").desc(), F.col("plays_7d").desc(), F.col("media_id")]
    # Structs compare field by field: a smaller key is ahead in `order`.
    key = F.struct(-F.col("unique_viewers_7d"), -F.col("plays_7d"), F.col("media_id"))
    top = popularity.orderBy(*order).limit(n).select("media_id", key.alias("key"))
    # A rank is 1 + the number of the top n ahead of an item: n x n rows, where a
    # window over them would run in one partition (Spark drops a literal partition key).
    ahead = F.col("b.key") < F.col("a.key")
    return (
        top.alias("a").join(top.alias("b"), on=ahead, how="left")
        .groupBy(F.col("a.media_id").alias("media_id"))
        .agg((F.count(F.col("b.media_id")) + 1).cast("int").alias("pop_rank"))
    )


def blend_recommendations(
    model_scores: DataFrame,
    popular: DataFrame,
    users: DataFrame,
    exclude: DataFrame,
    k: int,
    lead: DataFrame | None = None,
    slots: int = 0,
) -> DataFrame:
    """Top-`k` per user of `users`: model items by score, then popular items to fill.

    `lead` (user_id, media_id, lead_rank), e.g. new uploads of creators the user
    follows, takes up to `slots` places at the head of the list (null score).

    `model_scores` (user_id, media_id, score) may be empty for a user (no
    factors: unknown to the model); `popular` (media_id, pop_rank) then fills
    the list, so every user gets `k` rows as long as enough items remain.
    Items in `exclude` (user_id, media_id: completed ones) never appear. Rows
    that come from popularity have a null `score`: it is not a model score.
    Ties are broken by media_id so the ranking is deterministic.
    """
    model = (
        model_scores.join(exclude, on=["user_id", "media_id"], how="left_anti")
        .withColumn(
            "tier_rank",
            F.row_number().over(
                Window.partitionBy("user_id").orderBy(F.col("score").desc(), F.col("media_id"))
            ),
        )
        .filter(F.col("tier_rank") <= k)
        .select("user_id", "media_id", "score", F.lit(0).alias("tier"), "tier_rank")
    )
    full = model.groupBy("user_id").count().filter(F.col("count") >= k).select("user_id")
    fill = (
        users.select("user_id")
        .distinct()
        .join(full, on="user_id", how="left_anti")
        .crossJoin(popular)
        .join(exclude, on=["user_id", "media_id"], how="left_anti")
        .select(
            "user_id",
            "media_id",
            F.lit(None).cast("double").alias("score"),
            F.lit(1).alias("tier"),
            F.col("pop_rank").alias("tier_rank"),
        )
    )
    candidates = model.unionByName(fill)
    if lead is not None and slots > 0:
        candidates = candidates.unionByName(
            lead.filter(F.col("lead_rank") <= slots)
            .join(users.select("user_id").distinct(), on="user_id", how="inner")
            .join(exclude, on=["user_id", "media_id"], how="left_anti")
            .select(
                "user_id",
                "media_id",
                F.lit(None).cast("double").alias("score"),
                F.lit(-1).alias("tier"),
                F.col("lead_rank").alias("tier_rank"),
            )
        )
    first_seen = Window.partitionBy("user_id", "media_id").orderBy("tier", "tier_rank")
    by_rank = Window.partitionBy("user_id").orderBy("tier", "tier_rank", "media_id")
    return (
        candidates
        .withColumn("seen", F.row_number().over(first_seen))
        .filter(F.col("seen") == 1)
        .withColumn("rank", F.row_number().over(by_rank))
        .filter(F.col("rank") <= k)
        .select(
            F.col("user_id"),
            F.col("rank").cast("int").alias("rank"),
            F.col("media_id"),
            F.col("score"),
        )
    )
