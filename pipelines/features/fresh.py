"""Served lists stay fresh between retrains: an item a user completes leaves their
list as soon as the stream sees the completion.

`drop_completed` runs in every `gold_engagement` micro-batch (and once at the end of
a retrain, for completions that arrived while it ran). The list keeps its other
items and their ranks; it is one shorter until the next retrain.
"""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


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
