"""`lakehouse maintain`: compaction, vacuum, logging, conflicts, and a running stream."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path

import pytest
from delta.exceptions import ConcurrentAppendException, ConcurrentDeleteReadException
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.catalog import BY_NAME, TABLES
from pipelines.io.conflicts import ConflictRetriesExhausted, with_conflict_retries
from pipelines.ops import maintenance
from pipelines.ops.maintenance import existing_tables, maintain

D1, D2 = date(2026, 11, 1), date(2026, 11, 2)
SCHEMA = "user_id string, media_id string, event_date date"


def _append_small_files(spark, path: str, batches: int, partitioned: bool) -> list[tuple]:
    """`batches` appends of one row per partition: many tiny files."""
    rows = []
    for i in range(batches):
        batch = [(f"u{i}", f"m{i}-{d}", d) for d in ((D1, D2) if partitioned else (D1,))]
        writer = spark.createDataFrame(batch, SCHEMA).write
        writer = writer.partitionBy("event_date") if partitioned else writer
        writer.format("delta").mode("append").save(path)
        rows.extend(batch)
    return rows


def _num_files(spark, path: str) -> int:
    return DeltaTable.forPath(spark, path).detail().first()["numFiles"]


def _parquet_on_disk(path: str) -> int:
    return len(list(Path(path).rglob("*.parquet")))


def _with_retention(settings, hours: int):
    return settings.model_copy(update={
        "maintenance": settings.maintenance.model_copy(update={"vacuum_retention_hours": hours})
    })


def _log(spark, settings):
    return spark.read.format("delta").load(settings.lakehouse.table_path("ops", "maintenance_log"))


def test_catalog_lists_every_table_the_jobs_declare() -> None:
    """The tables each job writes, as its module names them, are the catalog's tables
    of that job; the catalog's streams are the jobs' queries; keys and layout name
    columns the tables have."""
    from pipelines import bronze, cli
    from pipelines.catalog import STREAMS
    from pipelines.features import retrain
    from pipelines.gold import engagement, health, notifications
    from pipelines.quality import run as quality
    from pipelines.silver import job as silver_job
    from pipelines.silver import sweep
    from pipelines.silver import tables as silver

    gold = engagement.GOLD_TABLES
    declared = {
        bronze.QUERY_NAME: [bronze.TABLE],
        silver_job.QUERY_NAME: [*(t.entry for t in silver.TABLES), silver.QUARANTINE],
        engagement.WINDOWS_QUERY_NAME: [gold[engagement.MEDIA_ENGAGEMENT]],
        engagement.QUERY_NAME: [
            gold[engagement.PLAYBACK_SESSIONS], gold[engagement.USER_DAILY],
            gold[engagement.DAILY_ACTIVE], engagement.PROGRESS, engagement.LATE_EVENTS,
        ],
        health.QUERY_NAME: [health.HOST_STATUS, health.SERVICE_MINUTE, health.ALERTS],
        notifications.QUERY_NAME: [notifications.TABLE],
        "retrain": [retrain.RECOMMENDATIONS, retrain.POPULARITY, retrain.RUNS],
        "reconcile": [sweep.SWEEPS],
        "quality": [quality.RESULTS],
        "maintain": [maintenance.TABLE],
    }
    assert {t.name for tables in declared.values() for t in tables} <= set(BY_NAME)
    for job, tables in declared.items():
        assert {t.name for t in tables} == {t.name for t in TABLES if t.job == job}, job
    # Listed before this version; nothing writes it yet.
    assert {t.name for t in TABLES if t.job is None} == {"ops.stream_progress"}
    commands = {c.name or c.callback.__name__ for c in cli.app.registered_commands
                if c.callback is not None}
    assert {"retrain", "reconcile", "quality", "maintain"} <= commands
    queries = {bronze.QUERY_NAME, silver_job.QUERY_NAME, engagement.WINDOWS_QUERY_NAME,
               engagement.QUERY_NAME, health.QUERY_NAME, notifications.QUERY_NAME}
    assert {s.query for s in STREAMS} == queries
    assert {s.source for s in STREAMS if not s.is_kafka} <= set(BY_NAME)
    assert len(BY_NAME) == len(TABLES)
    for table in TABLES:
        assert not set(table.zorder_by) & set(table.partition_by), table.name
    for table, (column, _) in engagement.PARTITION_DATE.items():
        assert gold[table].partition_by == (column,)
    # Schemas a job declares without Spark (gold's come from its transforms and are
    # checked stored in tests/test_gold_engagement.py).
    schemas = {
        **{t.entry.name: silver.silver_schema(t.event_type) for t in silver.TABLES},
        silver.QUARANTINE.name: silver.QUARANTINE_SCHEMA,
        engagement.PROGRESS.name: engagement.PROGRESS_SCHEMA,
        engagement.LATE_EVENTS.name: engagement.LATE_EVENTS_SCHEMA,
        health.HOST_STATUS.name: health.HOST_STATUS_SCHEMA,
        health.SERVICE_MINUTE.name: health.SERVICE_MINUTE_SCHEMA,
        health.ALERTS.name: health.ALERT_SCHEMA,
        notifications.TABLE.name: notifications.SCHEMA,
        sweep.SWEEPS.name: sweep.SWEEPS_SCHEMA,
        retrain.RUNS.name: retrain.RUNS_SCHEMA,
        quality.RESULTS.name: quality.RESULTS_SCHEMA,
        maintenance.TABLE.name: maintenance.SCHEMA,
    }
    for name, schema in schemas.items():
        table = BY_NAME[name]
        named = {*table.keys, *table.partition_by, *table.zorder_by, *table.stats_columns}
        assert named <= set(schema.fieldNames()), name


def test_conflicts_are_retried_with_backoff_then_reported() -> None:
    sleeps: list[float] = []
    calls = iter([ConcurrentAppendException("x"), ConcurrentDeleteReadException("y"), "done"])

    def flaky() -> str:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert with_conflict_retries(flaky, retries=3, backoff_s=0.5, sleep=sleeps.append) == (
        "done", 3)
    assert sleeps == [0.5, 1.0]

    sleeps.clear()

    def always_conflicts() -> None:
        raise ConcurrentAppendException("files were added")

    with pytest.raises(ConflictRetriesExhausted, match="after 3 attempts"):
        with_conflict_retries(always_conflicts, retries=2, backoff_s=1, sleep=sleeps.append)
    assert sleeps == [1, 2]

    def broken() -> None:
        raise ValueError("not a conflict")

    with pytest.raises(ValueError):
        with_conflict_retries(broken, retries=3, backoff_s=1, sleep=sleeps.append)
    assert sleeps == [1, 2]


def test_stream_batches_run_again_after_a_conflict(monkeypatch) -> None:
    """The foreachBatch wrapper of every MERGE/append sink: a batch that loses a commit
    conflict (to OPTIMIZE, say) runs again with the same batch id; other errors fail."""
    from pipelines.io import conflicts
    from pipelines.settings import load_settings

    sleeps: list[float] = []
    monkeypatch.setattr(conflicts.time, "sleep", sleeps.append)
    calls: list[tuple[str, int]] = []
    outcomes = iter([ConcurrentDeleteReadException("optimize removed a file"), None])

    def process(batch, batch_id: int) -> None:  # noqa: ANN001
        calls.append((batch, batch_id))
        if (outcome := next(outcomes)) is not None:
            raise outcome

    streaming = load_settings().streaming.model_copy(
        update={"conflict_retries": 3, "conflict_backoff_s": 2})
    conflicts.retrying_batches(process, streaming)("df", 7)
    assert calls == [("df", 7), ("df", 7)]
    assert sleeps == [2]

    def broken(batch, batch_id: int) -> None:  # noqa: ANN001
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        conflicts.retrying_batches(broken, streaming)("df", 8)
    assert sleeps == [2]


def test_maintain_compacts_vacuums_and_logs_each_action(spark, lake, monkeypatch) -> None:
    settings = lake.settings
    actions = BY_NAME["silver.user_actions"].path(settings)
    broken = BY_NAME["features.item_popularity"].path(settings)
    action_rows = _append_small_files(spark, actions, 5, partitioned=True)
    _append_small_files(spark, broken, 1, partitioned=False)
    size_before = DeltaTable.forPath(spark, actions).detail().first()["sizeInBytes"]
    assert _num_files(spark, actions) == 10

    # One table whose OPTIMIZE fails: reported, and the others still maintained.
    real_optimize = maintenance.optimize_table

    def optimize_or_fail(spark_, table, path, zorder_min_bytes):
        if path == broken:
            raise RuntimeError("disk on fire")
        return real_optimize(spark_, table, path, zorder_min_bytes)

    monkeypatch.setattr(maintenance, "optimize_table", optimize_or_fail)
    # zorder_min_bytes=0: user_actions (which has a Z-order hint) is Z-ordered.
    rows = maintain(spark, settings, vacuum=True, progress=False, zorder_min_bytes=0)
    monkeypatch.undo()

    assert _num_files(spark, actions) == 2  # one file per event_date partition
    assertDataFrameEqual(spark.read.format("delta").load(actions),
                         spark.createDataFrame(action_rows, SCHEMA))
    # Default retention (168 h): the files just compacted away stay on disk.
    assert _parquet_on_disk(actions) == 12

    def summary(r) -> tuple:
        return (r["table"], r["operation"], r["status"], r["files_added"], r["files_removed"])

    expected = [
        ("silver.user_actions", "zorder", "ok", 2, 10),
        ("silver.user_actions", "vacuum", "ok", 0, 0),
        ("features.item_popularity", "optimize", "failed", None, None),
        ("features.item_popularity", "vacuum", "ok", 0, 0),
    ]
    assert [summary(r) for r in rows] == expected
    assert rows[2]["error"] == "disk on fire"
    assert rows[0]["bytes_before"] == size_before
    assert rows[0]["note"] == "zorder by user_id, media_id"
    logged = _log(spark, settings)
    assert sorted(summary(r) for r in logged.collect()) == sorted(expected)
    assert {r["run_id"] for r in logged.collect()} == {rows[0]["run_id"]}

    # Retention 0 h, below Delta's safety check: the compacted-away files go.
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    check_before = spark.conf.get(check, None)
    on_disk = _parquet_on_disk(actions)
    started = time.monotonic()
    again = maintain(spark, _with_retention(settings, 0), vacuum=True, progress=False,
                     only=["silver.user_actions"])
    took = time.monotonic() - started
    # VACUUM counts the data files it deletes (Hadoop's .crc sidecars go with them).
    assert [summary(r) for r in again] == [
        ("silver.user_actions", "optimize", "ok", 0, 0),
        ("silver.user_actions", "vacuum", "ok", 0, on_disk - _parquet_on_disk(actions)),
    ]
    assert on_disk - _parquet_on_disk(actions) == 10
    assert "below Delta's 168h safety check" in again[1]["note"]
    assert again[1]["bytes_after"] < again[1]["bytes_before"]
    assert _parquet_on_disk(actions) == 2
    assert spark.conf.get(check, None) == check_before
    assertDataFrameEqual(spark.read.format("delta").load(actions),
                         spark.createDataFrame(action_rows, SCHEMA))
    assert _log(spark, settings).count() == 6
    # VACUUM's listing parallelism is capped (Spark's default of 10000 tasks takes ~1 min).
    assert took < 30, took


def test_maintain_beside_a_running_stream(spark, lake) -> None:
    """A Delta -> Delta append stream runs (1 s trigger) while both its tables are
    compacted; a second stream reads the compacted target. Every row arrives once."""
    settings = lake.settings
    source = BY_NAME["bronze.events"].path(settings)
    target = BY_NAME["silver.system_events"].path(settings)
    _append_small_files(spark, source, 3, partitioned=True)
    upstream = downstream = None
    feeder_errors: list[BaseException] = []
    try:
        upstream = (
            spark.readStream.format("delta").load(source)
            .writeStream.format("delta")
            .option("checkpointLocation", settings.lakehouse.checkpoint("maint_upstream"))
            .partitionBy("event_date")
            .trigger(processingTime="1 second")
            .start(target)
        )
        upstream.processAllAvailable()
        downstream = (
            spark.readStream.format("delta").load(target)
            .writeStream.format("memory").queryName("maint_downstream")
            .option("checkpointLocation", settings.lakehouse.checkpoint("maint_downstream"))
            .trigger(processingTime="1 second")
            .start()
        )
        downstream.processAllAvailable()

        def feed() -> None:  # new input while maintenance runs
            try:
                for i in range(4):
                    spark.createDataFrame([(f"late{i}", "m", D2)], SCHEMA).write.format(
                        "delta").mode("append").partitionBy("event_date").save(source)
                    time.sleep(0.7)
            except BaseException as exc:  # reported by the assertion below
                feeder_errors.append(exc)

        feeder = threading.Thread(target=feed)
        feeder.start()
        log = maintain(spark, settings, vacuum=False, progress=False)
        feeder.join()
        upstream.processAllAvailable()
        downstream.processAllAvailable()

        assert not feeder_errors
        assert upstream.isActive and upstream.exception() is None
        assert downstream.isActive and downstream.exception() is None
        assert [(r["table"], r["operation"], r["status"]) for r in log] == [
            ("bronze.events", "optimize", "ok"), ("silver.system_events", "optimize", "ok")]
        assert log[0]["files_removed"] >= 6  # the 3 initial appends x 2 partitions
        expected = spark.read.format("delta").load(source)
        assert expected.count() == 10
        assertDataFrameEqual(spark.read.format("delta").load(target), expected)
        # The downstream reader got every row exactly once: OPTIMIZE's rewritten files
        # (dataChange=false) were not delivered again.
        assertDataFrameEqual(spark.table("maint_downstream"), expected)
    finally:
        for query in (upstream, downstream):
            if query is not None:
                query.stop()
    assert [t.name for t in existing_tables(spark, settings)] == [
        "bronze.events", "silver.system_events", "ops.maintenance_log"]
    assert _log(spark, settings).filter(F.col("status") != "ok").count() == 0
