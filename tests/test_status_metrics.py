"""`lakehouse status`, the Prometheus metrics built from it and from stream progress,
and the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import yaml
from delta.tables import DeltaTable
from helpers import free_port, metric_samples, produce
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from pipelines import bronze
from pipelines.catalog import BY_NAME
from pipelines.ops.metrics import MetricsListener, collect_metrics, write_textfile
from pipelines.ops.status import render_status, status
from pipelines.settings import PROJECT_ROOT, load_settings

DASHBOARD = PROJECT_ROOT / "conf" / "monitoring" / "grafana" / "lakehouse-dashboard.json"
PROMETHEUS = PROJECT_ROOT / "conf" / "monitoring" / "prometheus.yml"


def _without_broker(settings):
    kafka = settings.kafka.model_copy(update={"bootstrap": f"localhost:{free_port()}"})
    return settings.model_copy(update={"kafka": kafka})


def _append(spark, path: str, rows: list[tuple], schema: str) -> None:
    spark.createDataFrame(rows, schema).coalesce(1).write.format("delta").mode("append").save(path)


def _samples(registry: CollectorRegistry, prefix: str = "lakehouse_") -> dict[tuple, float]:
    return {k: v for k, v in metric_samples(registry.collect()).items() if k[0].startswith(prefix)}


# --- status on tiny tables ------------------------------------------------------------


def test_status_tables_accounting_quarantine_and_delta_lag(spark, lake) -> None:
    settings = _without_broker(lake.settings)
    path = {name: BY_NAME[name].path(settings) for name in BY_NAME}
    _append(spark, path["bronze.events"],
            [("A", 0, 0), ("A", 0, 1), ("A", 0, 2), ("B", 0, 0), ("B", 0, 1)],
            "topic string, partition int, offset long")
    event_schema = "event_id string, source_topic string"
    _append(spark, path["silver.user_actions"], [("e1", "A")], event_schema)
    _append(spark, path["silver.user_actions"], [("e2", "A")], event_schema)
    _append(spark, path["silver.quarantine"], [("A", "invalid_json"), ("B", "duplicate")],
            "topic string, error_code string")
    system = path["silver.system_events"]
    _append(spark, system, [("s1", "C"), ("s2", "C")], event_schema)
    # A real Delta-source checkpoint under gold_health's name: it processes version 0.
    query = (
        spark.readStream.format("delta").load(system).writeStream.format("noop")
        .option("checkpointLocation", settings.lakehouse.checkpoint("gold_health"))
        .trigger(availableNow=True).start()
    )
    query.awaitTermination()
    _append(spark, system, [("s3", "C")], event_schema)
    _append(spark, system, [("s4", "C"), ("s5", "C")], event_schema)
    DeltaTable.forPath(spark, system).optimize().executeCompaction()  # version 3, no new rows

    started = time.monotonic()
    report = status(spark, settings)
    took = time.monotonic() - started

    def table_row(t: dict) -> tuple:
        return (t["layer"], t["table"], t["version"], t["rows"], t["files"], t["last_operation"])

    assert [table_row(t) for t in report["tables"]] == [
        ("bronze", "events", 0, 5, 1, "WRITE"),
        ("silver", "user_actions", 1, 2, 2, "WRITE"),
        ("silver", "system_events", 3, 5, 1, "OPTIMIZE"),
        ("silver", "quarantine", 0, 2, 1, "WRITE"),
    ]
    (bronze_file,) = Path(path["bronze.events"]).glob("*.parquet")
    assert report["tables"][0]["bytes"] == bronze_file.stat().st_size
    assert report["accounting"] == [
        {"topic": "A", "bronze": 3, "silver": 2, "quarantine": 1, "balanced": True},
        {"topic": "B", "bronze": 2, "silver": 0, "quarantine": 1, "balanced": False},
        # Silver rows whose topic bronze never saw are an imbalance too, and are listed.
        {"topic": "C", "bronze": 0, "silver": 5, "quarantine": 0, "balanced": False},
    ]
    assert report["quarantine"] == {"duplicate": 1, "invalid_json": 1}

    def lag(s: dict) -> tuple:
        return (s["query"], s["last_batch"], s["processed"], s["latest"], s["lag_versions"],
                s["lag_records"])

    streams = {s["query"]: s for s in report["streams"]}
    assert [lag(s) for s in report["streams"][1:]] == [
        ("silver_events", None, -1, 0, 1, 5),
        ("gold_media_engagement", None, -1, 1, 2, 2),
        ("gold_engagement", None, -1, 1, 2, 2),
        ("gold_notifications", None, None, None, None, None),
        ("gold_health", 0, 0, 3, 3, 3),
    ]
    assert streams["gold_notifications"]["reason"] == (
        "source table silver.content_uploads does not exist yet")
    # No broker at the configured address: lag unknown, with the reason, in bounded time.
    assert streams["bronze_events"]["lag_records"] is None
    assert streams["bronze_events"]["reason"].startswith(f"Kafka at {settings.kafka.bootstrap}")
    assert took < 40, took

    console = Console(record=True, width=200)
    console.print(render_status(report))
    text = console.export_text()
    for expected in ("silver.system_events", "gold_health", "invalid_json", "NO"):
        assert expected in text

    samples = _samples(collect_metrics(report))
    picked = {k: v for k, v in samples.items() if k[0] in (
        "lakehouse_table_rows", "lakehouse_table_version", "lakehouse_stream_lag_records",
        "lakehouse_stream_lag_known", "lakehouse_accounting_balanced",
        "lakehouse_quarantine_rows")}
    assert picked == {
        ("lakehouse_table_rows", (("layer", "bronze"), ("table", "events"))): 5,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "user_actions"))): 2,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "system_events"))): 5,
        ("lakehouse_table_rows", (("layer", "silver"), ("table", "quarantine"))): 2,
        ("lakehouse_table_version", (("layer", "bronze"), ("table", "events"))): 0,
        ("lakehouse_table_version", (("layer", "silver"), ("table", "user_actions"))): 1,
        ("lakehouse_table_version", (("layer", "silver"), ("table", "system_events"))): 3,
        ("lakehouse_table_version", (("layer", "silver"), ("table", "quarantine"))): 0,
        ("lakehouse_stream_lag_records", (("query", "silver_events"),)): 5,
        ("lakehouse_stream_lag_records", (("query", "gold_media_engagement"),)): 2,
        ("lakehouse_stream_lag_records", (("query", "gold_engagement"),)): 2,
        ("lakehouse_stream_lag_records", (("query", "gold_health"),)): 3,
        ("lakehouse_stream_lag_known", (("query", "bronze_events"),)): 0,
        ("lakehouse_stream_lag_known", (("query", "silver_events"),)): 1,
        ("lakehouse_stream_lag_known", (("query", "gold_media_engagement"),)): 1,
        ("lakehouse_stream_lag_known", (("query", "gold_engagement"),)): 1,
        ("lakehouse_stream_lag_known", (("query", "gold_notifications"),)): 0,
        ("lakehouse_stream_lag_known", (("query", "gold_health"),)): 1,
        ("lakehouse_accounting_balanced", (("topic", "A"),)): 1,
        ("lakehouse_accounting_balanced", (("topic", "B"),)): 0,
        ("lakehouse_accounting_balanced", (("topic", "C"),)): 0,
        ("lakehouse_quarantine_rows", (("error_code", "duplicate"),)): 1,
        ("lakehouse_quarantine_rows", (("error_code", "invalid_json"),)): 1,
    }


# --- bronze lag from a real Kafka checkpoint ------------------------------------------


def _produce(settings, records: list[tuple[str, str]]) -> None:
    produce(settings.kafka.bootstrap,
            [(settings.topic(topic).name, b"k", value.encode()) for topic, value in records])


def test_bronze_lag_from_its_checkpoint_and_listener_metrics(spark, kafka_lake) -> None:
    settings = kafka_lake.settings
    _produce(settings, [("user_actions", f"a{i}") for i in range(4)]
             + [("system_events", "s0"), ("content_uploads", "c0")])
    registry = CollectorRegistry()
    listener = MetricsListener(registry)
    spark.streams.addListener(listener)
    try:
        for query in bronze.start(spark, settings, True):
            query.awaitTermination()
        # Progress events reach Python asynchronously.
        deadline = time.monotonic() + 15
        key = ("lakehouse_stream_input_rows_total", (("query", "bronze_events"),))
        while _samples(registry).get(key) != 6 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        spark.streams.removeListener(listener)
    samples = _samples(registry)
    assert samples[key] == 6
    assert samples[("lakehouse_stream_last_batch_id", (("query", "bronze_events"),))] == 0
    assert samples[("lakehouse_stream_batch_duration_seconds", (("query", "bronze_events"),))] > 0

    _produce(settings, [("user_actions", f"b{i}") for i in range(3)]
             + [("content_uploads", "c1"), ("system_events", "s1")])
    report = status(spark, settings)
    streams = {s["query"]: s for s in report["streams"]}
    assert (streams["bronze_events"]["last_batch"], streams["bronze_events"]["lag_records"],
            streams["bronze_events"]["reason"]) == (0, 5, None)
    names = {t: settings.topic(t).name for t in ("user_actions", "content_uploads",
                                                  "system_events")}
    processed = streams["bronze_events"]["processed"]
    assert {t: sum(p.values()) for t, p in processed.items()} == {
        names["user_actions"]: 4, names["content_uploads"]: 1, names["system_events"]: 1}
    latest = streams["bronze_events"]["latest"]
    assert {t: sum(p.values()) for t, p in latest.items()} == {
        names["user_actions"]: 7, names["content_uploads"]: 2, names["system_events"]: 2}
    # Bronze rows not yet seen by silver: all of them, no silver checkpoint yet. Two
    # versions: the empty table bronze creates up front (0) and its first batch (1).
    assert (streams["silver_events"]["lag_versions"], streams["silver_events"]["lag_records"]) \
        == (2, 6)
    lag = _samples(collect_metrics(report))
    assert lag[("lakehouse_stream_lag_records", (("query", "bronze_events"),))] == 5


# --- metrics without Spark ------------------------------------------------------------


def _report() -> dict:
    commit = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    return {
        "generated_at": datetime(2026, 11, 3, 12, 5, tzinfo=UTC),
        "root": "/lake",
        "tables": [{"layer": "gold", "table": "notifications", "version": 7, "rows": 42,
                    "files": 3, "bytes": 9000, "last_commit": commit,
                    "last_operation": "MERGE"}],
        "accounting": [{"topic": "t", "bronze": 10, "silver": 8, "quarantine": 2,
                        "balanced": True}],
        "quarantine": {"oversize": 2},
        "streams": [
            {"query": "bronze_events", "source": "kafka", "lag_records": 12,
             "lag_versions": None},
            {"query": "gold_health", "source": "silver.system_events", "lag_records": None,
             "lag_versions": None},
        ],
    }


def test_metrics_of_a_report_and_their_textfile(tmp_path: Path) -> None:
    registry = collect_metrics(_report())
    table = (("layer", "gold"), ("table", "notifications"))
    expected = {
        ("lakehouse_table_rows", table): 42.0,
        ("lakehouse_table_version", table): 7.0,
        ("lakehouse_table_bytes", table): 9000.0,
        ("lakehouse_table_files", table): 3.0,
        ("lakehouse_table_last_commit_timestamp_seconds", table): 1793707200.0,
        ("lakehouse_stream_lag_records", (("query", "bronze_events"),)): 12.0,
        ("lakehouse_stream_lag_known", (("query", "bronze_events"),)): 1.0,
        ("lakehouse_stream_lag_known", (("query", "gold_health"),)): 0.0,
        ("lakehouse_accounting_balanced", (("topic", "t"),)): 1.0,
        ("lakehouse_accounting_records", (("stage", "bronze"), ("topic", "t"))): 10.0,
        ("lakehouse_accounting_records", (("stage", "silver"), ("topic", "t"))): 8.0,
        ("lakehouse_accounting_records", (("stage", "quarantine"), ("topic", "t"))): 2.0,
        ("lakehouse_quarantine_rows", (("error_code", "oversize"),)): 2.0,
        ("lakehouse_status_timestamp_seconds", ()): 1793707500.0,
    }
    assert _samples(registry) == expected

    out = tmp_path / "lakehouse.prom"
    write_textfile(registry, str(out))
    parsed = metric_samples(text_string_to_metric_families(out.read_text()))
    assert parsed == expected


def _progress(name: str, batch: int, rows: int, seconds: float, rate: float):
    return SimpleNamespace(progress=SimpleNamespace(
        id="q-1", name=name, batchId=batch, numInputRows=rows,
        batchDuration=int(seconds * 1000), processedRowsPerSecond=rate))


def test_listener_metrics_from_progress_events() -> None:
    registry = CollectorRegistry()
    listener = MetricsListener(registry)
    listener.onQueryStarted(SimpleNamespace(id="q-1", name="silver_events"))
    listener.onQueryProgress(_progress("silver_events", 0, 100, 2.5, 40.0))
    listener.onQueryProgress(_progress("silver_events", 1, 0, 0.25, math.nan))
    listener.onQueryTerminated(SimpleNamespace(id="q-1"))
    samples = {k: v for k, v in _samples(registry).items()
               if not k[0].endswith(("_created", "_timestamp_seconds"))}
    q = (("query", "silver_events"),)
    assert samples == {
        ("lakehouse_stream_input_rows_total", q): 100.0,
        ("lakehouse_stream_rows_per_second", q): 0.0,
        ("lakehouse_stream_batch_duration_seconds", q): 0.25,
        ("lakehouse_stream_last_batch_id", q): 1.0,
        ("lakehouse_stream_active", q): 0.0,
    }


# --- dashboard and scrape config ------------------------------------------------------


def _exprs(panels: list[dict]) -> list[str]:
    out = []
    for panel in panels:
        out += [t["expr"] for t in panel.get("targets", []) if "expr" in t]
        out += _exprs(panel.get("panels", []))
    return out


def test_dashboard_only_uses_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    exprs = _exprs(dashboard["panels"])
    queries = [v["query"]["query"] for v in variables.values() if v["type"] == "query"]
    used = {m for e in exprs + queries for m in re.findall(r"\blakehouse_[a-z0-9_]+", e)}

    registry = collect_metrics(_report())
    listener = MetricsListener(registry)
    listener.onQueryProgress(_progress("bronze_events", 0, 1, 1.0, 1.0))
    exported = {name for name, _ in _samples(registry)}
    assert used - exported == set()
    # The panels the brief asks for are there.
    for metric in ("lakehouse_stream_input_rows_total", "lakehouse_stream_lag_records",
                   "lakehouse_stream_batch_duration_seconds", "lakehouse_table_rows",
                   "lakehouse_quarantine_rows", "lakehouse_accounting_balanced"):
        assert metric in used, metric
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_prometheus_scrapes_the_configured_metrics_port() -> None:
    conf = yaml.safe_load(PROMETHEUS.read_text())
    targets = [t for job in conf["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert targets == [f"localhost:{load_settings(env={}).metrics.port}"]
