"""`lakehouse maintain`: compaction (OPTIMIZE, Z-order for large tables) and VACUUM of
every existing lakehouse table, logged to ops.maintenance_log.

Beside running streams:
- OPTIMIZE commits its rewritten files with dataChange=false, so a Delta streaming
  source reading the table skips that commit: no row is delivered twice.
- OPTIMIZE does not conflict with blind appends (the Delta sink of bronze). It does
  conflict with a transaction that READ the files it removes (an insert-only MERGE of
  the silver/gold foreachBatch sinks reads the whole target). Whichever commits second
  loses: when it is OPTIMIZE it is retried here with backoff, then reported `failed` for
  that table; the run goes on with the next table.
- VACUUM only deletes files older than the retention that no current version
  references; a retention below Delta's 168 h safety check can delete files of a
  concurrent writer's uncommitted transaction, so it is taken only when the conf
  says so, and the log says that it was.

ops.maintenance_log, one row per (run_id, table, operation), insert-only:
run_id, table (layer.table), operation (optimize | zorder | vacuum), started_at,
seconds, attempts, files_added, files_removed, bytes_before, bytes_after,
status (ok | failed), error (null when ok), note. For optimize/zorder the bytes are the
table's live data (DESCRIBE DETAIL sizeInBytes); for vacuum they are everything stored
under the table path (live files, removed-but-retained files, the log), which is what
VACUUM shrinks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pipelines import catalog
from pipelines.catalog import CatalogTable
from pipelines.io.conflicts import ConflictRetriesExhausted, one_line, with_conflict_retries
from pipelines.io.delta import ensure_table, latest_commit, merge_insert_new
from pipelines.settings import Settings

TABLE = catalog.OPS_MAINTENANCE_LOG
OPTIMIZE, ZORDER, VACUUM = "optimize", "zorder", "vacuum"
OK, FAILED = "ok", "failed"

# Delta's default delta.deletedFileRetentionDuration; VACUUM refuses less unless told.
DELTA_SAFE_RETENTION_HOURS = 168

_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_MAX_FILE_SIZE = "spark.databricks.delta.optimize.maxFileSize"
# VACUUM lists the table with this many tasks (Spark default 10000): about a minute of
# empty tasks per table on a 2-core machine. Capped at a few tasks per core.
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"

SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("table", T.StringType(), False),
    T.StructField("operation", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("seconds", T.DoubleType(), False),
    T.StructField("attempts", T.IntegerType(), False),
    T.StructField("files_added", T.LongType(), True),
    T.StructField("files_removed", T.LongType(), True),
    T.StructField("bytes_before", T.LongType(), True),
    T.StructField("bytes_after", T.LongType(), True),
    T.StructField("status", T.StringType(), False),
    T.StructField("error", T.StringType(), True),
    T.StructField("note", T.StringType(), True),
])

@contextmanager
def session_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    """Set SQL confs for the duration of a block, then restore what was there.
    (Session-wide: a stream of the same session sees them meanwhile; the ones set here
    only affect OPTIMIZE, VACUUM and file listing.)"""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def _detail(spark: SparkSession, path: str) -> dict[str, Any]:
    detail = DeltaTable.forPath(spark, path).detail().first()
    assert detail is not None  # DESCRIBE DETAIL answers one row
    return detail.asDict()


def storage_bytes(spark: SparkSession, path: str) -> int:
    """Bytes stored under `path` on any Hadoop filesystem (local, s3a, abfs, ...)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # set while a SparkContext runs
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return int(fs.getContentSummary(hpath).getLength())


def zorder_columns(
    table: CatalogTable,
    columns: list[str],
    partition_columns: list[str],
    size_bytes: int,
    min_bytes: int,
) -> list[str]:
    """The catalog's Z-order hint, when the table is large enough, keeping only columns
    the table has that are not partition columns (Delta refuses those)."""
    if size_bytes < min_bytes:
        return []
    return [c for c in table.zorder_by if c in columns and c not in partition_columns]


def optimize_table(
    spark: SparkSession, table: CatalogTable, path: str, zorder_min_bytes: int
) -> dict[str, Any]:
    """Compact one table (Z-ordered when large); returns the maintenance_log fields."""
    dt = DeltaTable.forPath(spark, path)
    before = _detail(spark, path)
    columns = zorder_columns(
        table,
        dt.toDF().columns,
        list(before["partitionColumns"]),
        int(before["sizeInBytes"]),
        zorder_min_bytes,
    )
    builder = dt.optimize()
    result = builder.executeZOrderBy(*columns) if columns else builder.executeCompaction()
    summary = result.first()
    assert summary is not None  # OPTIMIZE answers one row, even when it rewrote nothing
    metrics = summary["metrics"]
    after = _detail(spark, path)
    return {
        "operation": ZORDER if columns else OPTIMIZE,
        "files_added": int(metrics["numFilesAdded"]),
        "files_removed": int(metrics["numFilesRemoved"]),
        "bytes_before": int(before["sizeInBytes"]),
        "bytes_after": int(after["sizeInBytes"]),
        "note": f"zorder by {', '.join(columns)}" if columns else None,
    }


def _vacuumed_files(dt: DeltaTable, since_version: int) -> int | None:
    """numDeletedFiles of the VACUUM END commit after `since_version` (Delta logs VACUUM
    as commits); None when the store does not log vacuums."""
    latest = int(latest_commit(dt)["version"])
    if latest <= since_version:
        return None
    for row in dt.history(latest - since_version).collect():
        if row["operation"] == "VACUUM END" and row["operationMetrics"]:
            return int(row["operationMetrics"].get("numDeletedFiles", 0))
    return None


def _vacuum_confs(spark: SparkSession, retention_hours: int) -> tuple[dict[str, str], str | None]:
    """The SQL confs a VACUUM with `retention_hours` runs with, and the note to log."""
    confs = {_LISTING_PARALLELISM: str(max(2, 4 * spark.sparkContext.defaultParallelism))}
    note = None
    if retention_hours < DELTA_SAFE_RETENTION_HOURS:
        confs[_RETENTION_CHECK] = "false"
        note = (
            f"retention {retention_hours}h is below Delta's {DELTA_SAFE_RETENTION_HOURS}h "
            "safety check: check disabled for this call (maintenance.vacuum_retention_hours)"
        )
    return confs, note


def vacuum_table(spark: SparkSession, path: str, retention_hours: int) -> dict[str, Any]:
    """VACUUM one table with `retention_hours`; returns the maintenance_log fields."""
    confs, note = _vacuum_confs(spark, retention_hours)
    dt = DeltaTable.forPath(spark, path)
    version = int(latest_commit(dt)["version"])
    bytes_before = storage_bytes(spark, path)
    with session_conf(spark, confs):
        dt.vacuum(float(retention_hours))
    return {
        "operation": VACUUM,
        "files_added": 0,
        "files_removed": _vacuumed_files(dt, version),
        "bytes_before": bytes_before,
        "bytes_after": storage_bytes(spark, path),
        "note": note,
    }


def _run_action(
    name: str,
    operation: str,
    action: Callable[[], dict[str, Any]],
    retries: int,
    backoff_s: float,
) -> dict[str, Any]:
    """One logged action: never raises, a failure becomes a `failed` row."""
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    attempts = 1
    try:
        fields, attempts = with_conflict_retries(action, retries, backoff_s)
        row = {**fields, "status": OK, "error": None}
    except ConflictRetriesExhausted as exc:
        attempts = retries + 1
        row = {"operation": operation, "status": FAILED, "error": one_line(exc)}
    except Exception as exc:  # one broken table must not stop the run
        row = {"operation": operation, "status": FAILED, "error": one_line(exc)}
    empty = dict.fromkeys(SCHEMA.fieldNames())
    return {
        **empty,
        **row,
        "table": name,
        "started_at": started_at,
        "seconds": round(time.monotonic() - clock, 3),
        "attempts": attempts,
    }


def _write_log(spark: SparkSession, settings: Settings, rows: list[dict[str, Any]]) -> None:
    target = ensure_table(spark, TABLE.path(settings), spark.createDataFrame([], SCHEMA), TABLE)
    updates = spark.createDataFrame([tuple(r[c] for c in SCHEMA.fieldNames()) for r in rows],
                                    SCHEMA)
    # Keyed on (run, table, operation): a retried log write adds nothing twice.
    with_conflict_retries(
        lambda: merge_insert_new(target, updates, TABLE.keys),
        settings.maintenance.conflict_retries, settings.maintenance.conflict_backoff_s,
    )


def existing_tables(spark: SparkSession, settings: Settings) -> Iterator[CatalogTable]:
    """The catalog tables that exist as Delta tables under the configured root, in
    catalog order."""
    for table in catalog.TABLES:
        if DeltaTable.isDeltaTable(spark, table.path(settings)):
            yield table


def maintain(
    spark: SparkSession,
    settings: Settings,
    vacuum: bool,
    progress: bool = True,
    zorder_min_bytes: int | None = None,
    only: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """OPTIMIZE (then, with `vacuum`, VACUUM) every existing catalog table; log each
    action to ops.maintenance_log and return the rows
    (`started_at` a UTC-aware datetime, so Spark stores the right instant whatever the
    machine's time zone).
    A failing table is a `failed` row, never an exception. `only`: restrict the run to
    these table names ("silver.user_actions"). `zorder_min_bytes` overrides the conf's
    `maintenance.zorder_min_mb`.
    """
    conf = settings.maintenance
    if zorder_min_bytes is None:
        zorder_min_bytes = conf.zorder_min_mb * 1024 * 1024
    retries, backoff_s = conf.conflict_retries, conf.conflict_backoff_s
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    tables = [t for t in existing_tables(spark, settings) if only is None or t.name in only]
    retention = settings.maintenance.vacuum_retention_hours
    # Set once for the whole run: the tables below run in threads of one session, and
    # each action's own `session_conf` then sets and restores these same values.
    confs = {_MAX_FILE_SIZE: str(settings.maintenance.target_file_mb * 1024 * 1024)}
    if vacuum:
        confs.update(_vacuum_confs(spark, retention)[0])
    rows: list[dict[str, Any]] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())

    def maintain_one(table: CatalogTable, bar: Progress, task: TaskID) -> list[dict[str, Any]]:
        """OPTIMIZE, then VACUUM, one table: in this order, since the VACUUM removes
        the files the OPTIMIZE replaced (once they are older than the retention)."""
        path = table.path(settings)
        done = [_run_action(
            table.name, OPTIMIZE, partial(optimize_table, spark, table, path, zorder_min_bytes),
            retries, backoff_s,
        )]
        bar.advance(task)
        if vacuum:
            done.append(_run_action(
                table.name, VACUUM, partial(vacuum_table, spark, path, retention),
                retries, backoff_s,
            ))
            bar.advance(task)
        return done

    # The log is written once, at the end (or on the way out of an interrupted run):
    # a MERGE per table would cost a few seconds each for no gain, since every OPTIMIZE
    # and VACUUM is also in its table's Delta history.
    try:
        with (
            session_conf(spark, confs),
            Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
            ThreadPoolExecutor(conf.parallel_tables, thread_name_prefix="maintain") as pool,
        ):
            task = bar.add_task(f"maintain {len(tables)} tables",
                                total=len(tables) * (2 if vacuum else 1))
            # In catalog order, whatever finishes first.
            for done in pool.map(lambda t: maintain_one(t, bar, task), tables):
                rows.extend(done)
    finally:
        for row in rows:
            row["run_id"] = run_id
        if rows:
            _write_log(spark, settings, rows)
    return rows
