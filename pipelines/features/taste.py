"""The taste candidate: what a user watches of a genre or creator, times popularity.

Pure transforms (`DataFrame -> DataFrame`), like `interactions`:
- `item_meta`: each media's genre and creator, from silver.content_uploads;
- `user_shares`: a user's share of positive watch strength per genre (or creator),
  recent sessions weighing more (`features.taste.half_life_days`);
- `taste_inputs` then `taste_scores`: per user, the most popular items of the
  genres and creators they watch, scored
  `(genre share + creator_weight * creator share + floor) * pop^power`, where `pop`
  is an item's unique viewers over the most-viewed item's. An item outside every
  taste keeps `floor * pop`, so with no tastes the order is popularity.
- `followed_uploads`: uploads of creators a user is a fan of (gold.notifications),
  recent enough to lead the user's list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.features.interactions import DECIMALS, session_weight
from pipelines.settings import FeatureWeights, TasteGrid

MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class TasteParams:
    creator_weight: float
    popularity_power: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def taste_grid(grid: TasteGrid) -> list[TasteParams]:
    """Every combination of the configured lists, in conf order."""
    return [
        TasteParams(float(c), float(p))
        for c in grid.creator_weight
        for p in grid.popularity_power
    ]


def item_meta(uploads: DataFrame) -> DataFrame:
    """(media_id, genre, creator_id): the newest upload event of each media wins."""
    return uploads.groupBy("media_id").agg(
        F.max_by("genre", "event_time").alias("genre"),
        F.max_by("creator_id", "event_time").alias("creator_id"),
    )


def user_shares(
    sessions: DataFrame, meta: DataFrame, key: str, weights: FeatureWeights, half_life_days: float
) -> DataFrame:
    """(user_id, `key`, share): the user's positive session strength on items of each
    `key` (genre or creator_id) over all of it. A session `half_life_days` older than
    the newest session weighs half. Items without `key` count in the total only."""
    newest = sessions.agg(F.max("session_start").alias("newest"))
    age_days = (
        F.col("newest").cast("long") - F.col("session_start").cast("long")
    ) * 1000 / MS_PER_DAY
    strength = F.greatest(session_weight(weights), F.lit(0.0)) * F.pow(
        F.lit(0.5), age_days / float(half_life_days)
    )
    weighted = (
        sessions.crossJoin(newest)
        .withColumn("w", strength)
        .join(meta.select("media_id", key), on="media_id", how="left")
    )
    totals = weighted.groupBy("user_id").agg(F.sum("w").alias("total"))
    return (
        weighted.filter(F.col(key).isNotNull())
        .groupBy("user_id", key)
        .agg(F.sum("w").alias("w"))
        .join(totals, on="user_id")
        .filter(F.col("total") > 0)
        .select("user_id", key, (F.col("w") / F.col("total")).alias("share"))
        .filter(F.col("share") > 0)
    )


@dataclass(frozen=True)
class TasteInputs:
    """What every taste candidate of one training set reads (cache them once):
    - `items`: media_id, `viewers` (unique viewers over the most-viewed item's),
      genre, creator_id;
    - `genres`, `creators`: user_id, the key, `share`, and `depth`: how many of the
      key's most popular items the user may need, k plus the user's completed items
      of that key (they are excluded later), at most k + `max_extra`."""

    items: DataFrame
    genres: DataFrame
    creators: DataFrame
    max_depth: int


def taste_inputs(
    sessions: DataFrame,
    meta: DataFrame,
    popularity: DataFrame,
    exclude: DataFrame,
    grid: TasteGrid,
    weights: FeatureWeights,
    k: int,
    max_extra: int,
) -> TasteInputs:
    most = popularity.agg(F.max("unique_viewers_7d").alias("most"))
    items = (
        popularity.crossJoin(most)
        .filter(F.col("most") > 0)
        .select("media_id", (F.col("unique_viewers_7d") / F.col("most")).alias("viewers"))
        .join(meta, on="media_id", how="left")
    )

    def with_depth(key: str) -> DataFrame:
        done = (
            exclude.join(meta.select("media_id", key), on="media_id")
            .groupBy("user_id", key)
            .agg(F.count(F.lit(1)).alias("done"))
        )
        depth = F.lit(k) + F.least(F.coalesce(F.col("done"), F.lit(0)), F.lit(max_extra))
        return (
            user_shares(sessions, meta, key, weights, grid.half_life_days)
            .join(done, on=["user_id", key], how="left")
            .select("user_id", key, "share", depth.cast("int").alias("depth"))
        )

    return TasteInputs(items, with_depth("genre"), with_depth("creator_id"), k + max_extra)


def _candidates(shares: DataFrame, items: DataFrame, key: str, max_depth: int) -> DataFrame:
    """(user_id, media_id): the `depth` most popular items of each of a user's `key`s
    (ties by media_id), joined by rank: rows as many as the depths add up to."""
    order = Window.partitionBy(key).orderBy(F.col("viewers").desc(), F.col("media_id"))
    ranked = (
        items.filter(F.col(key).isNotNull())
        .withColumn("r", F.row_number().over(order))
        .filter(F.col("r") <= max_depth)
        .select(key, "r", "media_id")
    )
    wanted = shares.select("user_id", key, F.explode(F.sequence(F.lit(1), "depth")).alias("r"))
    return wanted.join(F.broadcast(ranked), on=[key, "r"]).select("user_id", "media_id")


def taste_scores(inputs: TasteInputs, params: TasteParams, floor: float, n: int) -> DataFrame:
    """Up to `n` scored items per user with a taste: (user_id, media_id, score).

    Candidates are the most popular items of each of the user's genres (and
    creators, when `creator_weight` > 0), as deep as the user needs
    (`TasteInputs`); `blend_recommendations` fills the rest of a list from
    popularity, the order `floor * pop` gives."""
    items = inputs.items.withColumn("pop", F.pow("viewers", F.lit(params.popularity_power)))
    candidates = _candidates(inputs.genres, items, "genre", inputs.max_depth)
    if params.creator_weight > 0:
        candidates = candidates.unionByName(
            _candidates(inputs.creators, items, "creator_id", inputs.max_depth)
        )
    rows = (
        candidates.distinct()
        .join(F.broadcast(items), on="media_id")
        .join(
            inputs.genres.select("user_id", "genre", F.col("share").alias("g_share")),
            on=["user_id", "genre"],
            how="left",
        )
        .join(
            inputs.creators.select("user_id", "creator_id", F.col("share").alias("c_share")),
            on=["user_id", "creator_id"],
            how="left",
        )
    )
    score = (
        F.coalesce(F.col("g_share"), F.lit(0.0))
        + F.lit(params.creator_weight) * F.coalesce(F.col("c_share"), F.lit(0.0))
        + F.lit(floor)
    ) * F.col("pop")
    best = Window.partitionBy("user_id").orderBy(F.col("score").desc(), F.col("media_id"))
    return (
        rows.select("user_id", "media_id", F.round(score, DECIMALS).alias("score"))
        .withColumn("r", F.row_number().over(best))
        .filter(F.col("r") <= n)
        .drop("r")
    )


def followed_uploads(
    notifications: DataFrame, anchor: datetime | None, until: datetime | None, days: int
) -> DataFrame:
    """(user_id, media_id, lead_rank): uploads a user was notified of (a fan of its
    creator) in the `days` before `anchor`, and before `until` if given; newest first."""
    recent = notifications
    if anchor is not None:
        since = F.lit(anchor) - F.expr(f"INTERVAL {int(days)} DAYS")
        recent = recent.filter(F.col("created_at") >= since)
    if until is not None:
        recent = recent.filter(F.col("created_at") < F.lit(until))
    newest = Window.partitionBy("user_id").orderBy(F.col("created_at").desc(), F.col("media_id"))
    return recent.select(
        "user_id", "media_id", F.row_number().over(newest).alias("lead_rank")
    )
