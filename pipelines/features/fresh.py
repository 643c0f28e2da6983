"""Served lists and item popularity stay fresh between retrains.

`keep_fresh` runs in every `gold_engagement` micro-batch:
- an item a user completes leaves their list at once (`drop_completed`; the list keeps
  its other items and ranks and is one shorter until the next retrain), in the Delta
  table and in the online store;
- features.item_popularity's `plays_7d` and `trending_score` of the batch's media are
  recounted from gold.media_engagement's windows (`refresh_popularity`), anchored at
  the batch's newest event; a media new since the retrain gets a row, its
  `unique_viewers_7d` the most viewers of one of its windows (a lower bound) until
  the retrain counts them. `unique_viewers_7d` and `completion_rate` of known media
  stay the retrain's.

A retrain also calls `drop_completed` once at its end, for completions that arrived
while it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import catalog
from pipelines.features.interactions import DECIMALS
from pipelines.settings import Settings

TS = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class FreshConf:
    recommendations: str
    popularity: str
    windows: str  # gold.media_engagement
    popularity_days: int
    trending_prior: float
    serving: Settings | None  # the online store's settings; None: not served there

    @classmethod
    def from_settings(cls, settings: Settings) -> FreshConf:
        return cls(
            recommendations=catalog.FEATURES_USER_RECOMMENDATIONS.path(settings),
            popularity=catalog.FEATURES_ITEM_POPULARITY.path(settings),
            windows=catalog.GOLD_MEDIA_ENGAGEMENT.path(settings),
            popularity_days=settings.features.popularity_days,
            trending_prior=settings.features.trending_prior,
            serving=settings if settings.serving.enabled else None,
        )


def completed(actions: DataFrame) -> DataFrame:
    """(user_id, media_id) of the `complete` actions among `actions`."""
    return (
        actions.filter(F.col("action") == "complete")
        .select("user_id", "media_id")
        .distinct()
    )


def drop_completed(spark: SparkSession, recommendations: str, pairs: DataFrame) -> int:
    """Delete the (user_id, media_id) `pairs` from the served lists at path
    `recommendations` (nothing before the first retrain); return rows deleted.
    Idempotent: a replayed batch deletes nothing more."""
    if not DeltaTable.isDeltaTable(spark, recommendations):
        return 0
    pairs = pairs.cache()
    try:
        if pairs.isEmpty():
            return 0
        table = DeltaTable.forPath(spark, recommendations)
        on = "r.user_id = c.user_id AND r.media_id = c.media_id"
        metrics = (
            table.alias("r").merge(F.broadcast(pairs).alias("c"), on)
            .whenMatchedDelete()
            .execute()
        )
        row = metrics.head()
        return int(row["num_deleted_rows"]) if row is not None else 0
    finally:
        pairs.unpersist()


def refresh_popularity(spark: SparkSession, conf: FreshConf, actions: DataFrame) -> int:
    """Recount plays and trending of the media of `actions` over the `popularity_days`
    before their newest event from gold's windows, into features.item_popularity;
    return rows written. Reads the window-date partitions of those days only."""
    if not (
        DeltaTable.isDeltaTable(spark, conf.popularity)
        and DeltaTable.isDeltaTable(spark, conf.windows)
    ):
        return 0
    newest = actions.agg(F.max("event_time")).head()
    if newest is None or newest[0] is None:
        return 0
    anchor, media = newest[0], actions.select("media_id")
    days = conf.popularity_days
    since, day = anchor - timedelta(days=days), anchor - timedelta(days=1)
    dates = [(since + timedelta(days=i)).date() for i in range(days + 2)]
    start = F.col("window_start")
    windows = (
        spark.read.format("delta").load(conf.windows)
        .filter(F.col("window_date").isin(dates))
        .filter(start > F.expr(f"timestamp'{since.strftime(TS)}'"))
        .filter(start <= F.expr(f"timestamp'{anchor.strftime(TS)}'"))
        .join(F.broadcast(media.distinct()), on="media_id", how="left_semi")
    )
    prior = float(conf.trending_prior)
    plays_1d = F.sum(F.when(start > F.expr(f"timestamp'{day.strftime(TS)}'"), F.col("plays"))
                     .otherwise(0))  # fmt: skip
    fresh = windows.groupBy("media_id").agg(
        F.sum("plays").cast("long").alias("plays_7d"),
        plays_1d.alias("plays_1d"),
        F.max("unique_viewers").cast("long").alias("viewers_floor"),
    ).select(
        "media_id", "plays_7d", "viewers_floor",
        F.round((F.col("plays_1d") + prior) / (F.col("plays_7d") / float(days) + prior),
                DECIMALS).alias("trending_score"),
    )  # fmt: skip
    metrics = (
        DeltaTable.forPath(spark, conf.popularity).alias("p")
        .merge(fresh.alias("f"), "p.media_id = f.media_id")
        .whenMatchedUpdate(set={"plays_7d": "f.plays_7d", "trending_score": "f.trending_score"})
        .whenNotMatchedInsert(values={
            "media_id": "f.media_id", "plays_7d": "f.plays_7d",
            "unique_viewers_7d": "f.viewers_floor", "completion_rate": "CAST(NULL AS DOUBLE)",
            "trending_score": "f.trending_score",
        })
        .execute()
    )  # fmt: skip
    row = metrics.head()
    return int(row["num_affected_rows"]) if row is not None else 0


def keep_fresh(spark: SparkSession, conf: FreshConf, batch: DataFrame) -> None:
    """The served lists and item popularity after a batch of silver.user_actions."""
    from pipelines.features.serving import refresh_users

    done = completed(batch)
    if drop_completed(spark, conf.recommendations, done) and conf.serving is not None:
        refresh_users(spark, conf.serving, done.select("user_id"))
    refresh_popularity(spark, conf, batch)
