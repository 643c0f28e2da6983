"""`lakehouse status`: every table (version, rows, size, last commit), the bronze ->
silver accounting, quarantine by error code, and the lag of every streaming query.

What it reads comes from a `LakeReader` (pipelines.ops.readers): the Delta logs and
local checkpoint files by default, or Spark (`lakehouse status --spark`).

Stream lag is read from the query's checkpoint, so it works whether the query runs
or not, from any process:
- Kafka source (bronze): end offsets of the source topics minus the offsets of the
  latest *committed* batch (`offsets/<n>` is written when batch n is planned, `commits/<n>`
  when it is done; an uncommitted batch is still lag). A broker that refuses the
  connection, fails, or does not answer within `kafka.admin_timeout_s` gives lag None
  with the reason, never an error.
- Delta source (silver, gold): the table's current version minus the
  `reservoirVersion` of the committed offset; `lag_records` counts the rows added by
  the unprocessed commits (OPTIMIZE and VACUUM commits add none).
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from pyspark.sql import SparkSession
from rich.console import Group
from rich.table import Table

from pipelines import catalog
from pipelines.catalog import STREAMS, TABLES, CatalogTable, StreamSource
from pipelines.ops.accounting import accounting_from
from pipelines.ops.readers import LakeReader, SparkReader
from pipelines.settings import Settings

QUARANTINE = catalog.SILVER_QUARANTINE


# --- tables ---------------------------------------------------------------------------


def table_status(reader: LakeReader, table: CatalogTable, path: str) -> dict[str, Any]:
    """Version, rows, files, bytes and last commit of one Delta table."""
    return {"layer": table.layer, "table": table.table, **reader.table_facts(path)}


def quarantine_by_code(reader: LakeReader, settings: Settings) -> dict[str, int]:
    return dict(sorted(reader.counts(QUARANTINE.path(settings), "error_code").items()))


# --- checkpoints ----------------------------------------------------------------------


def parse_offsets(text: str) -> list[dict[str, Any]]:
    """The per-source offsets of a checkpoint `offsets/<n>` file: line 1 is the format
    version, line 2 the batch metadata, then one JSON line per source ("-" when a source
    has no offset yet)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) if line.strip() != "-" else {} for line in lines[2:]]


def committed_offsets(reader: LakeReader, checkpoint: str) -> tuple[int, dict[str, Any]] | None:
    """(batch id, offsets of its single source) of the latest committed batch of a
    checkpoint, or None when no batch has committed."""
    done = reader.batch_ids(f"{checkpoint}/commits") & reader.batch_ids(f"{checkpoint}/offsets")
    if not done:
        return None
    batch = max(done)
    sources = parse_offsets(reader.read_text(f"{checkpoint}/offsets/{batch}"))
    return batch, (sources[0] if sources else {})


# --- Kafka lag ------------------------------------------------------------------------


def _unreachable(bootstrap: str, timeout_s: float) -> str | None:
    """Why no bootstrap server accepts a TCP connection, or None when one does. A
    refused connection fails here at once, where the Kafka client retries it until its
    timeout."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return None
        except ValueError:  # not host:port; the client reports what it makes of it
            return None
        except OSError as exc:
            errors.append(str(exc))
    return "; ".join(dict.fromkeys(errors))


def kafka_offsets(
    bootstrap: str, topics: list[str], timeout_s: float
) -> tuple[dict[str, dict[int, tuple[int, int]]] | None, str | None]:
    """({topic: {partition: (beginning, end)}}, None), or (None, reason) when the broker
    refuses, fails or does not answer within `timeout_s`."""
    unreachable = _unreachable(bootstrap, timeout_s)
    if unreachable:
        return None, f"Kafka at {bootstrap}: {unreachable}"
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                client_id="lakehouse-status",
                enable_auto_commit=False,
                # Asking about a topic must never create it.
                allow_auto_create_topics=False,
                request_timeout_ms=int(timeout_s * 1000),
                bootstrap_timeout_ms=int(timeout_s * 1000),
            )
            try:
                parts = [
                    TopicPartition(t, p)
                    for t in topics
                    for p in sorted(consumer.partitions_for_topic(t) or ())
                ]
                begin = consumer.beginning_offsets(parts)
                end = consumer.end_offsets(parts)
            finally:
                consumer.close()
            offsets: dict[str, dict[int, tuple[int, int]]] = {t: {} for t in topics}
            for tp in parts:
                offsets[tp.topic][tp.partition] = (int(begin[tp]), int(end[tp]))
            result["offsets"] = offsets
        except Exception as exc:  # reported, never raised: status must always answer
            result["error"] = f"Kafka at {bootstrap}: {type(exc).__name__}: {exc}"

    # A daemon thread bounds the wait even where the client itself would block.
    worker = threading.Thread(target=fetch, name="lakehouse-status-kafka", daemon=True)
    worker.start()
    worker.join(timeout_s + 1)
    if worker.is_alive():
        return None, f"Kafka at {bootstrap} did not answer within {timeout_s:g}s"
    if "error" in result:
        return None, result["error"]
    return result["offsets"], None


def kafka_lag(
    offsets: dict[str, dict[int, tuple[int, int]]], committed: dict[str, Any] | None
) -> int:
    """Records in Kafka past the committed checkpoint offsets. A partition the checkpoint
    does not know yet (or no checkpoint) counts from its beginning (startingOffsets
    earliest)."""
    committed = committed or {}
    lag = 0
    for topic, partitions in offsets.items():
        done = committed.get(topic, {})
        for partition, (begin, end) in partitions.items():
            position = int(done.get(str(partition), begin))
            lag += max(0, end - max(position, begin))
    return lag


# --- Delta lag ------------------------------------------------------------------------


def _rows_added(metrics: dict[str, Any] | None) -> int:
    metrics = metrics or {}
    # A MERGE's numOutputRows also counts the rows it copied; its inserts are the new data.
    if "numTargetRowsInserted" in metrics:
        return int(metrics["numTargetRowsInserted"])
    # Spark names the rows a write added numOutputRows; delta-rs (`deltalake`) num_added_rows.
    return int(metrics.get("numOutputRows", metrics.get("num_added_rows", 0)))


def processed_version(offset: dict[str, Any] | None) -> int:
    """The last source version a Delta source offset has fully processed (-1: none).
    index -1 means 'before the first file of reservoirVersion'."""
    if not offset:
        return -1
    version = int(offset["reservoirVersion"])
    return version - 1 if int(offset.get("index", -1)) == -1 else version


def delta_lag(reader: LakeReader, path: str, processed: int) -> tuple[int, int, int]:
    """(current version, versions behind, rows added by those versions)."""
    ((current, _),) = reader.history(path, 1)
    behind = max(0, current - processed)
    if behind == 0:
        return current, 0, 0
    rows = sum(
        _rows_added(metrics)
        for version, metrics in reader.history(path, behind)
        if version > processed
    )
    return current, behind, rows


# --- the report -----------------------------------------------------------------------


def stream_status(
    reader: LakeReader,
    settings: Settings,
    stream: StreamSource,
    kafka: tuple[dict[str, dict[int, tuple[int, int]]] | None, str | None] | None = None,
) -> dict[str, Any]:
    """The lag of one streaming query; `kafka` ((offsets, reason) as `kafka_offsets`
    gives them) spares asking the broker."""
    checkpoint = settings.lakehouse.checkpoint(stream.query)
    committed = committed_offsets(reader, checkpoint)
    row: dict[str, Any] = {
        "query": stream.query,
        "source": stream.source,
        "target": stream.target,
        "last_batch": committed[0] if committed else None,
        "processed": None,
        "latest": None,
        "lag_records": None,
        "lag_versions": None,
        "reason": None if committed else "no committed batch yet",
    }
    offset = committed[1] if committed else None
    if stream.is_kafka:
        offsets, reason = kafka or kafka_offsets(
            settings.kafka.bootstrap, settings.kafka.source_topics, settings.kafka.admin_timeout_s
        )
        row["processed"] = offset
        if offsets is None:
            row["reason"] = reason
        else:
            row["latest"] = {t: {p: e for p, (_, e) in ps.items()} for t, ps in offsets.items()}
            row["lag_records"] = kafka_lag(offsets, offset)
        return row
    path = catalog.table(stream.source).path(settings)
    if not reader.is_table(path):
        row["reason"] = f"source table {stream.source} does not exist yet"
        return row
    processed = processed_version(offset)
    current, behind, rows = delta_lag(reader, path, processed)
    row.update(processed=processed, latest=current, lag_versions=behind, lag_records=rows)
    return row


def collect_status(reader: LakeReader, settings: Settings) -> dict[str, Any]:
    """Everything `lakehouse status` shows, as plain data (also the input of the
    Prometheus metrics), read through `reader`: a `LogReader` or a `SparkReader`."""
    existing = [t for t in TABLES if reader.is_table(t.path(settings))]
    return {
        "generated_at": datetime.now(UTC),
        "root": settings.lakehouse.root,
        "tables": [table_status(reader, t, t.path(settings)) for t in existing],
        "accounting": accounting_from(reader.counts, settings),
        "quarantine": quarantine_by_code(reader, settings),
        "streams": [stream_status(reader, settings, s) for s in STREAMS],
    }


def status(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    """`collect_status` through a SparkSession (from a notebook that has one)."""
    return collect_status(SparkReader(spark), settings)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


def render_status(report: dict[str, Any]) -> Group:
    """Rich tables of a `status` report."""
    tables = Table(title=f"Tables under {report['root']}")
    for col in ("table", "version", "rows", "files", "size", "last commit"):
        tables.add_column(col, justify="left" if col in ("table", "last commit") else "right")
    for t in report["tables"]:
        tables.add_row(f"{t['layer']}.{t['table']}", str(t["version"]), f"{t['rows']:,}",
                       str(t["files"]), _size(t["bytes"]),
                       f"{t['last_commit']:%Y-%m-%d %H:%M:%S} {t['last_operation']}")
    streams = Table(title="Streams (lag from checkpoints)")
    for col in ("query", "source", "last batch", "lag records", "lag versions", "note"):
        streams.add_column(col)
    for s in report["streams"]:
        streams.add_row(s["query"], s["source"], _opt(s["last_batch"]), _opt(s["lag_records"]),
                        _opt(s["lag_versions"]), s["reason"] or "")
    balance = Table(title="Bronze -> silver accounting")
    for col in ("topic", "bronze", "silver", "quarantine", "balanced"):
        balance.add_column(col)
    for a in report["accounting"]:
        balance.add_row(str(a["topic"]), str(a["bronze"]), str(a["silver"]),
                        str(a["quarantine"]), "yes" if a["balanced"] else "[red]NO[/red]")
    quarantine = Table(title="Quarantine by error code")
    quarantine.add_column("error_code")
    quarantine.add_column("rows", justify="right")
    for code, n in report["quarantine"].items():
        quarantine.add_row(code, f"{n:,}")
    return Group(tables, streams, balance, quarantine)
