"""Delta table helpers shared by the jobs: create, append once, MERGE.

Stream sources and sinks are in `pipelines.io.streams`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession

if TYPE_CHECKING:
    from pipelines.catalog import CatalogTable


class TableLayoutError(RuntimeError):
    """A table on disk is laid out differently from what this version writes."""


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def latest_commit(table: DeltaTable) -> Row:
    """The newest row of `table`'s history (`version`, `timestamp`, `operation`,
    `operationMetrics`, ...)."""
    commit = table.history(1).first()
    # A Delta table has at least the commit that created it.
    assert commit is not None
    return commit


def ensure_table(
    spark: SparkSession, path: str, like: DataFrame, layout: CatalogTable
) -> DeltaTable:
    """Create an empty Delta table with `like`'s schema if none exists at `path`,
    partitioned and with the table properties its catalog entry `layout` names; an
    existing table is left as it is."""
    if not table_exists(spark, path):
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(like.schema)
        if layout.partition_by:
            builder = builder.partitionedBy(*layout.partition_by)
        for key, value in layout.properties.items():
            builder = builder.property(key, value)
        builder.execute()
    return DeltaTable.forPath(spark, path)


def append_once(df: DataFrame, path: str, app_id: str, version: int) -> None:
    """Append `df` to the Delta table at `path` unless the writer `app_id` already
    committed `version` (or a later one) there: Delta's idempotent writes, recorded in
    the table's log, so a micro-batch replayed after a crash appends nothing twice.
    Cheaper than a MERGE: one write, no scan of the target."""
    (
        df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", version)
        .save(path)
    )


def merge_insert_new(
    target: DeltaTable, updates: DataFrame, keys: Sequence[str], extra_condition: str = ""
) -> int:
    """Insert the rows of `updates` whose `keys` are not yet in `target`; return how
    many were inserted.

    An insert-only MERGE is idempotent: replaying the same rows after a crash
    adds nothing, which is what makes foreachBatch sinks exactly-once.
    """
    condition = _same_keys(keys, "<=>")
    if extra_condition:
        condition = f"{condition} AND {extra_condition}"
    metrics = (
        target.alias("t")
        .merge(updates.alias("s"), condition)
        .whenNotMatchedInsertAll()
        .execute()
        .first()
    )
    # The metrics row of a MERGE; a MERGE that changed nothing may commit nothing.
    return int(metrics["num_inserted_rows"]) if metrics is not None else 0


def upsert(
    target: DeltaTable, updates: DataFrame, keys: Sequence[str], update_if: str = ""
) -> None:
    """Insert the rows of `updates` whose `keys` are not yet in `target` and overwrite
    (every column) the rows whose keys are, or only those where `update_if` holds (a
    condition on `t`, the target row, and `s`, the update).

    Keys compare with `=`, not the null-safe `<=>` of `merge_insert_new`: for tables
    whose keys are never null. Idempotent when `updates` is the same for a replayed
    batch: the second MERGE writes the values the first wrote.
    """
    (
        target.alias("t")
        .merge(updates.alias("s"), _same_keys(keys, "="))
        .whenMatchedUpdateAll(condition=update_if or None)
        .whenNotMatchedInsertAll()
        .execute()
    )


def _same_keys(keys: Sequence[str], op: str) -> str:
    """A MERGE condition: target `t` and source `s` rows whose `keys` compare equal with
    `op` (`=`, or `<=>` where nulls count as equal)."""
    return " AND ".join(f"t.`{k}` {op} s.`{k}`" for k in keys)
