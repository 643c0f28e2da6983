"""`lakehouse status` read from the Delta logs and checkpoint files (LogReader), without
Spark or Kafka: small tables written with `deltalake`, fake checkpoint folders."""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from helpers import free_port, metric_samples
from prometheus_client.parser import text_string_to_metric_families

from pipelines.catalog import BY_NAME, STREAMS
from pipelines.ops.readers import LogReader
from pipelines.ops.status import collect_status, stream_status
from pipelines.settings import Settings, load_settings

DAY1, DAY2 = date(2026, 11, 3), date(2026, 11, 4)


def _bronze(rows: list[tuple[str, int, int]], day: date) -> pa.Table:
    """bronze.events rows (topic, partition, offset); key and value are opaque bytes."""
    return pa.table({
        "topic": [r[0] for r in rows],
        "partition": pa.array([r[1] for r in rows], pa.int32()),
        "offset": pa.array([r[2] for r in rows], pa.int64()),
        "key": pa.array([b"k"] * len(rows), pa.binary()),
        "value": pa.array([b"\xff{"] * len(rows), pa.binary()),
        "ingest_date": pa.array([day] * len(rows), pa.date32()),
    })


def _silver(topic: str, offsets: list[int], day: date) -> pa.Table:
    return pa.table({
        "event_id": [f"{topic}-{o}" for o in offsets],
        "source_topic": [topic] * len(offsets),
        "source_partition": pa.array([0] * len(offsets), pa.int32()),
        "source_offset": pa.array(offsets, pa.int64()),
        "event_date": pa.array([day] * len(offsets), pa.date32()),
    })


def _quarantine(rows: list[tuple[str, int, str]]) -> pa.Table:
    return pa.table({
        "topic": [r[0] for r in rows],
        "partition": pa.array([0] * len(rows), pa.int32()),
        "offset": pa.array([r[1] for r in rows], pa.int64()),
        "value": pa.array([b"\xff"] * len(rows), pa.binary()),
        "error_code": [r[2] for r in rows],
        "error_detail": ["-"] * len(rows),
    })


def _write(settings: Settings, name: str, data: pa.Table) -> None:
    table = BY_NAME[name]
    write_deltalake(table.path(settings), data, mode="append",
                    partition_by=list(table.partition_by) or None)


def _checkpoint(settings: Settings, query: str, offsets: dict[int, dict],
                committed: list[int]) -> None:
    """A streaming checkpoint as Spark writes it: `offsets/<n>` (version, batch metadata,
    one line per source) and an empty-ish `commits/<n>` per committed batch."""
    root = Path(settings.lakehouse.checkpoint(query))
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    for batch, source in offsets.items():
        (root / "offsets" / str(batch)).write_text(
            f'v1\n{{"batchWatermarkMs":0,"batchTimestampMs":0,"conf":{{}}}}\n'
            f"{json.dumps(source)}")
    for batch in committed:
        (root / "commits" / str(batch)).write_text('v1\n{"nextBatchWatermarkMs":0}')


def _delta_offset(version: int, index: int = -1) -> dict:
    return {"sourceVersion": 1, "reservoirId": "r", "reservoirVersion": version,
            "index": index, "isStartingVersion": False}


def _disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


@pytest.fixture
def lake(lake, unused_port: int):  # noqa: ANN001, ANN201 - conftest's Lake
    """conftest's `lake` with a Kafka bootstrap address nothing listens on (the session
    broker of other tests may be up)."""
    env = {**lake.env, "LAKEHOUSE_KAFKA_BOOTSTRAP": f"localhost:{unused_port}"}
    return type(lake)(load_settings(env=env), env)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def settings(lake) -> Settings:
    """A small lakehouse; nothing listens on its Kafka bootstrap address."""
    settings = lake.settings
    ua, se, cu = (settings.topic(t).name
                  for t in ("user_actions", "system_events", "content_uploads"))
    # bronze: 8 records in two commits and two date partitions.
    _write(settings, "bronze.events",
           _bronze([(ua, 0, 0), (ua, 0, 1), (ua, 1, 0), (ua, 1, 1), (se, 0, 0), (se, 0, 1)],
                   DAY1))
    _write(settings, "bronze.events", _bronze([(ua, 0, 2), (cu, 0, 0)], DAY2))
    _write(settings, "silver.user_actions", _silver(ua, [0, 1], DAY1))
    _write(settings, "silver.user_actions", _silver(ua, [2], DAY2))
    _write(settings, "silver.quarantine",
           _quarantine([(ua, 0, "invalid_json"), (ua, 1, "duplicate")]))
    system = BY_NAME["silver.system_events"].path(settings)
    _write(settings, "silver.system_events", _silver(se, [0], DAY1))
    _write(settings, "silver.system_events", _silver(se, [1], DAY1))
    # Versions 2-4: OPTIMIZE, VACUUM START, VACUUM END; none adds rows. The vacuum leaves
    # only live files on disk, so their size is the table's bytes.
    DeltaTable(system).optimize.compact()
    DeltaTable(system).vacuum(retention_hours=0, enforce_retention_duration=False,
                              dry_run=False)
    # silver.content_uploads is never written: gold_notifications has no source yet.

    # bronze: batch 0 committed, batch 1 planned only (still lag).
    _checkpoint(settings, "bronze_events", {0: {ua: {"0": 2, "1": 2}, se: {"0": 2}},
                                            1: {ua: {"0": 3, "1": 2}, se: {"0": 2}}}, [0])
    _checkpoint(settings, "silver_events", {0: _delta_offset(1)}, [0])
    _checkpoint(settings, "gold_engagement", {0: _delta_offset(0), 1: _delta_offset(1, 0)},
                [0, 1])
    _checkpoint(settings, "gold_health", {0: _delta_offset(1), 1: _delta_offset(4)}, [0])
    return settings


def test_status_from_the_delta_logs(settings: Settings) -> None:
    ua, se, cu = (settings.topic(t).name
                  for t in ("user_actions", "system_events", "content_uploads"))
    path = {name: BY_NAME[name].path(settings) for name in BY_NAME}
    before = datetime.now(UTC)
    started = time.monotonic()
    report = collect_status(LogReader(), settings)
    took = time.monotonic() - started

    # A refused connection answers at once, not after kafka.admin_timeout_s.
    assert took < settings.kafka.admin_timeout_s, took
    commits = [t.pop("last_commit") for t in report["tables"]]
    # Commit times are whole milliseconds.
    assert all(before - timedelta(seconds=1) <= c <= datetime.now(UTC) for c in commits), commits
    assert report.pop("generated_at") >= before
    refused = f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"
    absent = {"processed": None, "latest": None, "lag_records": None, "lag_versions": None}
    assert report == {
        "root": settings.lakehouse.root,
        "tables": [
            {"layer": "bronze", "table": "events", "version": 1, "rows": 8, "files": 2,
             "bytes": _disk_bytes(path["bronze.events"]), "last_operation": "WRITE"},
            {"layer": "silver", "table": "user_actions", "version": 1, "rows": 3, "files": 2,
             "bytes": _disk_bytes(path["silver.user_actions"]), "last_operation": "WRITE"},
            {"layer": "silver", "table": "system_events", "version": 4, "rows": 2, "files": 1,
             "bytes": _disk_bytes(path["silver.system_events"]),
             "last_operation": "VACUUM END"},
            {"layer": "silver", "table": "quarantine", "version": 0, "rows": 2, "files": 1,
             "bytes": _disk_bytes(path["silver.quarantine"]), "last_operation": "WRITE"},
        ],
        "accounting": [
            {"topic": cu, "bronze": 1, "silver": 0, "quarantine": 0, "balanced": False},
            {"topic": se, "bronze": 2, "silver": 2, "quarantine": 0, "balanced": True},
            {"topic": ua, "bronze": 5, "silver": 3, "quarantine": 2, "balanced": True},
        ],
        "quarantine": {"duplicate": 1, "invalid_json": 1},
        "streams": [
            {"query": "bronze_events", "source": "kafka", "target": "bronze.events",
             "last_batch": 0, **absent, "processed": {ua: {"0": 2, "1": 2}, se: {"0": 2}},
             "reason": f"Kafka at {settings.kafka.bootstrap}: {refused}"},
            # Processed version 0; version 1 added 2 bronze rows.
            {"query": "silver_events", "source": "bronze.events", "target": "silver.*",
             "last_batch": 0, "processed": 0, "latest": 1, "lag_records": 2,
             "lag_versions": 1, "reason": None},
            # No checkpoint: everything is lag.
            {"query": "gold_media_engagement", "source": "silver.user_actions",
             "target": "gold.media_engagement", "last_batch": None, "processed": -1,
             "latest": 1, "lag_records": 3, "lag_versions": 2,
             "reason": "no committed batch yet"},
            {"query": "gold_engagement", "source": "silver.user_actions",
             "target": "gold.playback_sessions, ...", "last_batch": 1, "processed": 1,
             "latest": 1, "lag_records": 0, "lag_versions": 0, "reason": None},
            {"query": "gold_notifications", "source": "silver.content_uploads",
             "target": "gold.notifications", "last_batch": None, **absent,
             "reason": "source table silver.content_uploads does not exist yet"},
            # Batch 1 (up to version 4) is not committed. Of versions 1-4 only the write
            # of version 1 added a row.
            {"query": "gold_health", "source": "silver.system_events",
             "target": "ops.host_status, ...", "last_batch": 0, "processed": 0, "latest": 4,
             "lag_records": 1, "lag_versions": 4, "reason": None},
        ],
    }


def test_kafka_lag_against_the_committed_offsets(settings: Settings) -> None:
    ua, se, cu = (settings.topic(t).name
                  for t in ("user_actions", "system_events", "content_uploads"))
    # (beginning, end) per partition, as kafka_offsets gives them. Partition 1 of user
    # actions starts at 1; content uploads are not in the checkpoint yet.
    offsets = {ua: {0: (0, 5), 1: (1, 3)}, se: {0: (0, 2)}, cu: {0: (0, 1)}}
    row = stream_status(LogReader(), settings, STREAMS[0], kafka=(offsets, None))
    assert row == {
        "query": "bronze_events", "source": "kafka", "target": "bronze.events",
        "last_batch": 0, "processed": {ua: {"0": 2, "1": 2}, se: {"0": 2}},
        "latest": {ua: {0: 5, 1: 3}, se: {0: 2}, cu: {0: 1}},
        "lag_records": 3 + 1 + 0 + 1, "lag_versions": None, "reason": None,
    }


def test_rows_without_log_statistics_are_counted_by_a_scan(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"x": [1, 2, 3]}))
    write_deltalake(path, pa.table({"x": [4, 5]}), mode="append")
    for log in (tmp_path / "t" / "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in log.read_text().splitlines()]
        for action in actions:
            action.get("add", {}).pop("stats", None)
        log.write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    facts = LogReader().table_facts(path)
    assert (facts["version"], facts["rows"], facts["files"]) == (1, 5, 2)


def test_checkpoints_on_remote_storage_need_spark() -> None:
    with pytest.raises(ValueError, match="--spark"):
        LogReader().batch_ids("s3a://bucket/lake/_checkpoints/bronze_events/offsets")


def test_cli_status_and_metrics_without_spark(settings: Settings, lake, tmp_path: Path) -> None:
    prom = tmp_path / "lakehouse.prom"
    result = lake.cli("status", "--metrics-file", str(prom), timeout=60)
    assert "Bronze -> silver accounting" in result.stdout
    samples = {
        key: value
        for key, value in metric_samples(text_string_to_metric_families(prom.read_text())).items()
        if key[0] in ("lakehouse_table_rows", "lakehouse_stream_lag_records",
                      "lakehouse_quarantine_rows")
    }
    assert samples == {
        ("lakehouse_table_rows", (("layer", "bronze"), ("table", "events"))): 8.0,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "user_actions"))): 3.0,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "system_events"))): 2.0,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "quarantine"))): 2.0,
        ("lakehouse_stream_lag_records", (("query", "silver_events"),)): 2.0,
        ("lakehouse_stream_lag_records", (("query", "gold_media_engagement"),)): 3.0,
        ("lakehouse_stream_lag_records", (("query", "gold_engagement"),)): 0.0,
        ("lakehouse_stream_lag_records", (("query", "gold_health"),)): 1.0,
        ("lakehouse_quarantine_rows", (("error_code", "duplicate"),)): 1.0,
        ("lakehouse_quarantine_rows", (("error_code", "invalid_json"),)): 1.0,
    }
