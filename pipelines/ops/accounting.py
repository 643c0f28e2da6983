"""The silver invariant: every bronze record is in exactly one silver table or in
quarantine. Checked per topic by counting."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from pipelines import catalog
from pipelines.ops.readers import SparkReader
from pipelines.settings import Settings
from pipelines.silver.tables import QUARANTINE, TABLES

# (table path, column) -> rows per value of the column, {} when there is no table.
Counts = Callable[[str, str], dict[str, int]]


def accounting(spark: SparkSession, settings: Settings) -> list[dict[str, object]]:
    """Per source topic: bronze rows, silver rows, quarantine rows, balanced or not."""
    return accounting_from(SparkReader(spark).counts, settings)


def accounting_from(counts: Counts, settings: Settings) -> list[dict[str, object]]:
    """`accounting` with the rows per topic of each table counted by `counts`."""
    bronze = counts(catalog.BRONZE_EVENTS.path(settings), "topic")
    quarantine = counts(QUARANTINE.path(settings), "topic")
    silver: dict[str, int] = {}
    for table in TABLES:
        for topic, n in counts(table.entry.path(settings), "source_topic").items():
            silver[topic] = silver.get(topic, 0) + n
    rows = []
    for topic in sorted(set(bronze) | set(silver) | set(quarantine)):
        b, s, q = bronze.get(topic, 0), silver.get(topic, 0), quarantine.get(topic, 0)
        rows.append({"topic": topic, "bronze": b, "silver": s, "quarantine": q,
                     "balanced": b == s + q})
    return rows


def unbalanced_topics(report: list[dict[str, object]]) -> list[str]:
    return [str(r["topic"]) for r in report if not r["balanced"]]
