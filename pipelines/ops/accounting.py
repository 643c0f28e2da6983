"""The silver invariant: every bronze record is in exactly one silver table or in
quarantine. Checked per topic by counting."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from pipelines.io.delta import table_exists
from pipelines.settings import Settings
from pipelines.silver.tables import LAYER, QUARANTINE, TABLES


def _counts(spark: SparkSession, path: str, topic_col: str) -> dict[str, int]:
    if not table_exists(spark, path):
        return {}
    df: DataFrame = spark.read.format("delta").load(path)
    return {r[0]: r[1] for r in df.groupBy(topic_col).count().collect()}


def accounting(spark: SparkSession, settings: Settings) -> list[dict[str, object]]:
    """Per source topic: bronze rows, silver rows, quarantine rows, balanced or not."""
    lake = settings.lakehouse
    bronze = _counts(spark, lake.table_path("bronze", "events"), "topic")
    quarantine = _counts(spark, lake.table_path(LAYER, QUARANTINE), "topic")
    silver: dict[str, int] = {}
    for table in TABLES:
        for topic, n in _counts(spark, lake.table_path(LAYER, table.table), "source_topic").items():
            silver[topic] = silver.get(topic, 0) + n
    rows = []
    for topic in sorted(set(bronze) | set(silver) | set(quarantine)):
        b, s, q = bronze.get(topic, 0), silver.get(topic, 0), quarantine.get(topic, 0)
        rows.append({"topic": topic, "bronze": b, "silver": s, "quarantine": q,
                     "balanced": b == s + q})
    return rows


def unbalanced_topics(report: list[dict[str, object]]) -> list[str]:
    return [str(r["topic"]) for r in report if not r["balanced"]]



