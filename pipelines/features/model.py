"""Implicit-feedback ALS: the estimator, its parameter grid and its top-n scores."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.features.interactions import DECIMALS
from pipelines.settings import AlsGrid


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def param_grid(grid: AlsGrid) -> list[AlsParams]:
    """Every combination of the configured lists, in conf order (ties go to the first)."""
    return [
        AlsParams(rank, float(reg), float(alpha))
        for rank, reg, alpha in itertools.product(grid.rank, grid.reg_param, grid.alpha)
    ]


def als(params: AlsParams, max_iter: int, seed: int, blocks: int) -> ALS:
    """The estimator on (user_idx, item_idx, strength).

    `blocks` (`features.als.blocks`) fixes how ALS partitions its factors, and so
    (with the seed) its result: configured, not the core count, so the same inputs
    give the same model anywhere.

    No checkpointing (`checkpointInterval=-1`): lineage of 10-20 iterations is
    short, and a checkpoint dir would be one more thing to configure and clean.
    `coldStartStrategy='drop'`: a user or item without factors gets no score
    (popularity serves them) instead of a NaN.
    """
    return ALS(
        rank=params.rank,
        maxIter=max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        implicitPrefs=True,
        nonnegative=True,
        coldStartStrategy="drop",
        seed=seed,
        userCol="user_idx",
        itemCol="item_idx",
        ratingCol="strength",
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        checkpointInterval=-1,
    )


def deterministic_order(ratings: DataFrame, blocks: int) -> DataFrame:
    """Ratings in `blocks` partitions and a fixed order, whatever the upstream plan was.

    ALS sums float normal equations in the order ratings arrive; a fixed order
    keeps retrains of the same input bit-identical.
    """
    return ratings.repartition(blocks, "user_idx").sortWithinPartitions(
        "user_idx", "item_idx"
    )


def fit(
    ratings: DataFrame, params: AlsParams, max_iter: int, seed: int, blocks: int
) -> ALSModel:
    return als(params, max_iter, seed, blocks).fit(deterministic_order(ratings, blocks))


def top_scores(
    model: ALSModel, users: DataFrame, user_index: DataFrame, item_index: DataFrame, n: int
) -> DataFrame:
    """The model's `n` best items for each of `users` (user_id) it has factors for:
    (user_id, media_id, score), score rounded so float noise cannot reorder ties."""
    subset = users.join(user_index, on="user_id", how="inner").select("user_idx")
    return (
        model.recommendForUserSubset(subset, n)
        .select("user_idx", F.explode("recommendations").alias("rec"))
        .select("user_idx", F.col("rec.item_idx").alias("item_idx"), F.col("rec.rating"))
        .join(user_index, on="user_idx", how="inner")
        .join(item_index, on="item_idx", how="inner")
        .select(
            F.col("user_id"),
            F.col("media_id"),
            F.round(F.col("rating").cast("double"), DECIMALS).alias("score"),
        )
    )
