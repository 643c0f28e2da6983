"""Offline evaluation on a time-based holdout: the split, the relevant items, the metrics."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Metrics are reported at 10 whatever features.top_k is: the contract names them *_at_10.
EVAL_K = 10


def split_sessions(sessions: DataFrame, cut: datetime) -> tuple[DataFrame, DataFrame]:
    """(train, test): sessions that started before `cut`, and the others."""
    starts_before = F.col("session_start") < F.lit(cut)
    return sessions.filter(starts_before), sessions.filter(~starts_before)


def relevant_items(train: DataFrame, test: DataFrame, min_watch_ms: int) -> DataFrame:
    """(user_id, media_id) a user completed or watched `min_watch_ms` of in the
    holdout, and had not completed before it: what a good list would have shown.

    Watching counts too because v1 players never send `complete` and long films
    are rarely finished (`features.relevant_watch_ms`)."""
    engaged = (F.col("outcome") == "completed") | (F.col("watch_ms") >= min_watch_ms)
    completed_before = (
        train.filter(F.col("outcome") == "completed").select("user_id", "media_id").distinct()
    )
    return (
        test.filter(engaged)
        .select("user_id", "media_id")
        .distinct()
        .join(completed_before, on=["user_id", "media_id"], how="left_anti")
    )


def ranking_metrics(recommendations: DataFrame, relevant: DataFrame, k: int = EVAL_K) -> DataFrame:
    """One row: mean NDCG@k, precision@k, recall@k over the users with a relevant item.

    Binary relevance: DCG = sum over hits of 1 / log2(rank + 1), ideal DCG the same
    with the min(|relevant|, k) hits at the top. A user with relevant items and no
    recommendations scores 0. Precision divides by k, recall by |relevant|.
    Columns: users, ndcg_at_<k>, precision_at_<k>, recall_at_<k> (null without users).
    """
    per_user_relevant = relevant.groupBy("user_id").agg(F.count(F.lit(1)).alias("n_relevant"))
    hits = (
        recommendations.filter(F.col("rank") <= k)
        .join(relevant, on=["user_id", "media_id"], how="inner")
        .groupBy("user_id")
        .agg(
            F.count(F.lit(1)).alias("hits"),
            F.sum(1.0 / F.log2(F.col("rank") + 1)).alias("dcg"),
        )
    )
    ideal_dcg = F.aggregate(
        F.sequence(F.lit(1), F.least(F.col("n_relevant"), F.lit(k))),
        F.lit(0.0),
        lambda acc, i: acc + 1.0 / F.log2(i + 1),
    )
    per_user = (
        per_user_relevant.join(hits, on="user_id", how="left")
        .fillna({"hits": 0, "dcg": 0.0})
        .select(
            "user_id",
            (F.col("dcg") / ideal_dcg).alias("ndcg"),
            (F.col("hits") / F.lit(float(k))).alias("precision"),
            (F.col("hits") / F.col("n_relevant")).alias("recall"),
        )
    )
    return per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.avg("ndcg").alias(f"ndcg_at_{k}"),
        F.avg("precision").alias(f"precision_at_{k}"),
        F.avg("recall").alias(f"recall_at_{k}"),
    )
