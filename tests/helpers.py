"""Plain helpers shared by several test files; the fixtures live in conftest.py.

Test modules import this as `helpers` (pytest puts tests/ on sys.path, as it does for
`conftest`)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from kafka import KafkaProducer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipelines.silver.tables import silver_schema

# ---------------------------------------------------------------- gold tables
# The contract's gold schemas, written out here rather than imported from the code under
# test: an expected frame built from the job's own schema would prove nothing.

MEDIA_ENGAGEMENT = T.StructType([
    T.StructField("media_id", T.StringType()),
    T.StructField("window_start", T.TimestampType()),
    T.StructField("window_end", T.TimestampType()),
    *(T.StructField(c, T.LongType()) for c in ("plays", "pauses", "skips", "seeks", "completes")),
    T.StructField("unique_viewers", T.LongType()),
    T.StructField("skip_rate", T.DoubleType()),
])
PLAYBACK_SESSIONS = T.StructType([
    T.StructField("session_id", T.StringType()),
    T.StructField("user_id", T.StringType()),
    T.StructField("media_id", T.StringType()),
    T.StructField("session_start", T.TimestampType()),
    T.StructField("session_end", T.TimestampType()),
    T.StructField("actions", T.LongType()),
    T.StructField("watch_ms", T.LongType()),
    T.StructField("outcome", T.StringType()),
])
USER_DAILY_ENGAGEMENT = T.StructType([
    T.StructField("event_date", T.DateType()),
    T.StructField("user_id", T.StringType()),
    *(T.StructField(c, T.LongType())
      for c in ("plays", "skips", "completes", "distinct_media", "watch_ms")),
])
DAILY_ACTIVE_USERS = T.StructType([
    T.StructField("event_date", T.DateType()),
    T.StructField("active_users", T.LongType()),
])
GOLD_SCHEMAS = {
    "media_engagement": MEDIA_ENGAGEMENT,
    "playback_sessions": PLAYBACK_SESSIONS,
    "user_daily_engagement": USER_DAILY_ENGAGEMENT,
    "daily_active_users": DAILY_ACTIVE_USERS,
}

# ---------------------------------------------------------------- rows


def ts(text: str) -> datetime:
    """'2026-11-01 10:00:30' as an aware UTC datetime (independent of the machine's zone)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def user_actions_df(
    spark: SparkSession, rows: Iterable[tuple[str, str, str, str, str]], offset: int = 0,
    topic: str = "media.user-actions",
) -> DataFrame:
    """(event_id, user_id, media_id, action, event_time) -> silver.user_actions rows of a
    v2 web client, at source offsets `offset`, `offset` + 1, ... of partition 0."""
    full = [
        (eid, user, action, ts(t), media, None, None, "web", 2, topic, 0, offset + i,
         ts(t), ts(t).date())
        for i, (eid, user, media, action, t) in enumerate(rows)
    ]
    return spark.createDataFrame(full, silver_schema("user_action"))


def bronze_df(spark: SparkSession, rows: Iterable[tuple[str, int, int, str | bytes]]) -> DataFrame:
    """Bronze rows (topic, partition, offset, value); a str value is sent as UTF-8."""
    return spark.createDataFrame(
        [(t, p, o, v.encode() if isinstance(v, str) else v) for t, p, o, v in rows],
        "topic string, partition int, offset long, value binary",
    )


# ---------------------------------------------------------------- Delta, Kafka, processes


def delta_table(lake: Any, layer: str, name: str) -> DeltaTable:
    """A table of `lake` (conftest's Lake) opened with deltalake: the Rust reader, no Spark."""
    return DeltaTable(lake.settings.lakehouse.table_path(layer, name))


def delta_rows(lake: Any, layer: str, name: str, columns: list[str] | None = None) -> list[dict]:
    """Every row of a table of `lake` (conftest's Lake) as a dict, read without Spark."""
    return delta_table(lake, layer, name).to_pyarrow_table(columns=columns).to_pylist()


def delta_versions(path: str | Path) -> int:
    """How many commits a Delta table's log holds (0 before the table exists)."""
    log = Path(path) / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) records in order, acknowledged by every replica."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    for topic, key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def free_port() -> int:
    """A localhost TCP port nothing listens on (free when asked)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_while_running(
    proc: subprocess.Popen, ready: Callable[[], bool], deadline: float, poll_s: float
) -> None:
    """Poll `ready()` until it holds or time.monotonic() passes `deadline`; `proc` must
    keep running meanwhile (its output is the failure message)."""
    while not ready() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(poll_s)


def sigkill_stream(lake: Any, layer: str, ready: Callable[[], bool], poll_s: float) -> None:
    """`lakehouse stream --layers LAYER --available-now` in a child process, SIGKILLed as
    soon as `ready()` holds (five minutes at most); it must not end before."""
    proc = lake.popen("stream", "--layers", layer, "--available-now")
    try:
        wait_while_running(proc, ready, time.monotonic() + 300, poll_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def await_available_now(queries: Iterable[StreamingQuery], timeout_s: float = 120) -> None:
    """Wait for each available-now query to end without error; stop it in any case."""
    for query in queries:
        try:
            assert query.awaitTermination(timeout_s), "the available-now run did not finish"
            assert query.exception() is None, query.exception()
        finally:
            query.stop()


def metric_samples(families: Iterable[Any]) -> dict[tuple, float]:
    """Prometheus samples by (name, sorted labels), from a registry's `collect()` or a
    parsed text file."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
