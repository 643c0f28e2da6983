"""Prometheus metrics of the lakehouse (scraped by conf/monitoring/prometheus.yml;
dashboard: conf/monitoring/grafana/lakehouse-dashboard.json).

Two sources:
- a `status` report (pipelines.ops.status): table sizes and versions, stream lag,
  accounting, quarantine. `collect_metrics(report)` gives a registry for a one-shot
  export (`write_textfile`, for node_exporter's textfile collector from cron);
  a long-running process registers one `ReportCollector` and `update()`s it.
- `MetricsListener`, a StreamingQueryListener added to the session that runs the
  streams: per-query input rows, rates, batch durations, as batches complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pyspark.sql.streaming import StreamingQueryListener

TABLE_LABELS = ["layer", "table"]


def _families(report: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    rows = GaugeMetricFamily("lakehouse_table_rows", "Rows of a Delta table", labels=TABLE_LABELS)
    version = GaugeMetricFamily(
        "lakehouse_table_version", "Latest Delta version of a table", labels=TABLE_LABELS
    )
    size = GaugeMetricFamily(
        "lakehouse_table_bytes", "Bytes of a table's live data files", labels=TABLE_LABELS
    )
    files = GaugeMetricFamily(
        "lakehouse_table_files", "Live data files of a table", labels=TABLE_LABELS
    )
    last_commit = GaugeMetricFamily(
        "lakehouse_table_last_commit_timestamp_seconds",
        "Unix time of a table's latest commit", labels=TABLE_LABELS,
    )
    for t in report.get("tables", []):
        labels = [t["layer"], t["table"]]
        rows.add_metric(labels, t["rows"])
        version.add_metric(labels, t["version"])
        size.add_metric(labels, t["bytes"])
        files.add_metric(labels, t["files"])
        if t.get("last_commit") is not None:
            last_commit.add_metric(labels, t["last_commit"].timestamp())
    yield from (rows, version, size, files, last_commit)

    lag = GaugeMetricFamily(
        "lakehouse_stream_lag_records",
        "Source records not yet processed by a streaming query (from its checkpoint)",
        labels=["query"],
    )
    lag_versions = GaugeMetricFamily(
        "lakehouse_stream_lag_versions",
        "Source Delta versions not yet processed by a streaming query", labels=["query"],
    )
    lag_known = GaugeMetricFamily(
        "lakehouse_stream_lag_known",
        "1 when the lag of a query could be measured (0: broker down, no source)",
        labels=["query"],
    )
    for s in report.get("streams", []):
        lag_known.add_metric([s["query"]], 0 if s["lag_records"] is None else 1)
        if s["lag_records"] is not None:
            lag.add_metric([s["query"]], s["lag_records"])
        if s.get("lag_versions") is not None:
            lag_versions.add_metric([s["query"]], s["lag_versions"])
    yield from (lag, lag_versions, lag_known)

    balanced = GaugeMetricFamily(
        "lakehouse_accounting_balanced",
        "1 when every bronze record of the topic is in silver or quarantine",
        labels=["topic"],
    )
    records = GaugeMetricFamily(
        "lakehouse_accounting_records", "Records of a source topic per stage",
        labels=["topic", "stage"],
    )
    for a in report.get("accounting", []):
        balanced.add_metric([a["topic"]], 1 if a["balanced"] else 0)
        for stage in ("bronze", "silver", "quarantine"):
            records.add_metric([a["topic"], stage], a[stage])
    yield from (balanced, records)

    quarantine = GaugeMetricFamily(
        "lakehouse_quarantine_rows", "Rows in silver.quarantine", labels=["error_code"]
    )
    for code, n in report.get("quarantine", {}).items():
        quarantine.add_metric([code], n)
    yield quarantine

    if report.get("generated_at") is not None:
        yield GaugeMetricFamily(
            "lakehouse_status_timestamp_seconds", "Unix time the status report was taken",
            value=report["generated_at"].timestamp(),
        )


class ReportCollector(Collector):
    """Exposes the latest `status` report; `update` swaps it atomically."""

    def __init__(self, report: dict[str, Any] | None = None) -> None:
        self._report = report or {}

    def update(self, report: dict[str, Any]) -> None:
        self._report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from _families(self._report)


def collect_metrics(
    report: dict[str, Any], registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """A registry (a new one unless given) exposing the metrics of a `status` report."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(ReportCollector(report))
    return registry


class MetricsListener(StreamingQueryListener):
    """Per-query streaming metrics from the progress events of the session's queries.

    `spark.streams.addListener(MetricsListener())`; metrics go to the default registry
    (the one `serve` exposes) unless another is given.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.input_rows = Counter(
            "lakehouse_stream_input_rows", "Input rows processed by a streaming query",
            ["query"], registry=registry,
        )
        self.rows_per_second = Gauge(
            "lakehouse_stream_rows_per_second",
            "Rows per second processed in a query's latest batch", ["query"], registry=registry,
        )
        self.batch_duration = Gauge(
            "lakehouse_stream_batch_duration_seconds",
            "Wall-clock duration of a query's latest batch", ["query"], registry=registry,
        )
        self.last_batch_id = Gauge(
            "lakehouse_stream_last_batch_id", "Id of a query's latest batch", ["query"],
            registry=registry,
        )
        self.last_progress = Gauge(
            "lakehouse_stream_last_progress_timestamp_seconds",
            "Unix time of a query's latest progress event", ["query"], registry=registry,
        )
        self.active = Gauge(
            "lakehouse_stream_active", "1 while a query runs", ["query"], registry=registry
        )
        self._names: dict[str, str] = {}

    def _query(self, query_id: Any, name: str | None) -> str:
        key = str(query_id)
        if name:
            self._names[key] = name
        return self._names.get(key, key)

    def onQueryStarted(self, event: Any) -> None:  # noqa: N802 - Spark's listener API
        self.active.labels(self._query(event.id, event.name)).set(1)

    def onQueryProgress(self, event: Any) -> None:  # noqa: N802
        p = event.progress
        query = self._query(p.id, p.name)
        self.input_rows.labels(query).inc(p.numInputRows)
        # NaN when a batch had no input (Spark reports 0 rows in 0 time).
        rate = p.processedRowsPerSecond
        self.rows_per_second.labels(query).set(rate if rate == rate else 0.0)
        self.batch_duration.labels(query).set(p.batchDuration / 1000)
        self.last_batch_id.labels(query).set(p.batchId)
        self.last_progress.labels(query).set(time.time())

    def onQueryIdle(self, event: Any) -> None:  # noqa: N802
        self.last_progress.labels(self._query(event.id, None)).set(time.time())

    def onQueryTerminated(self, event: Any) -> None:  # noqa: N802
        self.active.labels(self._query(event.id, None)).set(0)


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> tuple[Any, Any]:
    """Expose `registry` on http://0.0.0.0:<port>/metrics from a daemon thread; returns
    (server, thread) so a caller can `server.shutdown()`."""
    return start_http_server(port, registry=registry)


def write_textfile(registry: CollectorRegistry, path: str) -> None:
    """Write the registry in the text exposition format, atomically (write + rename), for
    node_exporter's textfile collector."""
    write_to_textfile(path, registry)
