"""ops.host_status, ops.service_health_minute, ops.health_alerts from silver.system_events."""

from __future__ import annotations

import hashlib
from datetime import datetime

from helpers import await_available_now
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.health import (
    HealthConf,
    alerts,
    ensure_tables,
    host_status,
    process_batch,
    service_minutes,
    start,
)
from pipelines.silver.tables import silver_schema

EVENTS = silver_schema("system_event")
DAY = "2026-11-01"
STATUS = T.StructType([
    T.StructField("host", T.StringType()), T.StructField("service", T.StringType()),
    T.StructField("status", T.StringType()), T.StructField("cpu_pct", T.DoubleType()),
    T.StructField("memory_pct", T.DoubleType()), T.StructField("instances", T.LongType()),
    T.StructField("last_event_time", T.TimestampType()),
    T.StructField("last_event_id", T.StringType()),
])
MINUTES = T.StructType([
    T.StructField("service", T.StringType()), T.StructField("minute", T.TimestampType()),
    T.StructField("hosts_up", T.LongType()), T.StructField("hosts_degraded", T.LongType()),
    T.StructField("hosts_down", T.LongType()), T.StructField("avg_cpu_pct", T.DoubleType()),
    T.StructField("avg_memory_pct", T.DoubleType()), T.StructField("events", T.LongType()),
])
ALERTS = T.StructType([
    T.StructField("alert_id", T.StringType()), T.StructField("service", T.StringType()),
    T.StructField("minute", T.TimestampType()), T.StructField("kind", T.StringType()),
    T.StructField("detail", T.StringType()), T.StructField("raised_at", T.TimestampType()),
])


def ts(clock: str) -> datetime:
    return datetime.fromisoformat(f"{DAY} {clock}")


def status(eid: str, host: str, service: str, clock: str, state: str,
           cpu: float | None = None, mem: float | None = None) -> tuple:
    t = ts(clock)
    return (eid, host, service, "server_status", t, state, cpu, mem, None, 1,
            "media.system-events", 0, 0, t, t.date())


def allocation(eid: str, service: str, clock: str, instances: int) -> tuple:
    t = ts(clock)
    return (eid, "autoscaler", service, "resource_allocation", t, None, None, None, instances, 1,
            "media.system-events", 0, 0, t, t.date())


def events_df(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, EVENTS)


def minutes_df(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame([(s, ts(m), *rest) for s, m, *rest in rows], MINUTES)


def status_df(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(
        [(*head, ts(clock), eid) for *head, clock, eid in rows], STATUS
    )


def alerts_df(spark: SparkSession, rows: list[tuple[str, str, str, str]]) -> DataFrame:
    """(service, minute, kind, detail); ids by hand from Spark's timestamp-as-string."""
    return spark.createDataFrame([
        (hashlib.sha256(f"{s}|{k}|{DAY} {m}".encode()).hexdigest(), s, ts(m), k, d, ts(m))
        for s, m, k, d in rows
    ], ALERTS)


# ------------------------------------------------------------------ pure transforms


def test_host_status_keeps_the_newest_event(spark):
    events = events_df(spark, [
        status("e1", "h1", "api", "10:00:00", "up", 10.0, 20.0),
        status("e3", "h1", "api", "10:02:00", "degraded", 80.0, 30.0),
        status("e2", "h1", "api", "10:01:00", "down"),
        status("e-a", "h2", "api", "10:00:00", "up", 1.0, 2.0),  # same time: larger id wins
        status("e-b", "h2", "api", "10:00:00", "down"),
        allocation("e7", "api", "10:00:00", 3),  # the autoscaler: one row per service
        allocation("e8", "web", "10:00:00", 2),
        allocation("e9", "api", "10:03:00", 4),
    ])
    expected = status_df(spark, [
        ("h1", "api", "degraded", 80.0, 30.0, None, "10:02:00", "e3"),
        ("h2", "api", "down", None, None, None, "10:00:00", "e-b"),
        ("autoscaler", "api", None, None, None, 4, "10:03:00", "e9"),
        ("autoscaler", "web", None, None, None, 2, "10:00:00", "e8"),
    ])
    assertDataFrameEqual(host_status(events), expected)


def test_service_minutes_counts_distinct_hosts_per_status(spark):
    events = events_df(spark, [
        status("e1", "h1", "api", "10:00:10", "up", 50.0, 40.0),
        status("e2", "h1", "api", "10:00:40", "up", 70.0, 60.0),  # same host: counted once
        status("e3", "h2", "api", "10:00:20", "down"),
        status("e4", "h3", "api", "10:00:59", "degraded", 90.0, 50.0),
        allocation("e5", "api", "10:00:30", 3),
        status("e6", "h1", "api", "10:01:00", "up", 20.0, 10.0),
        allocation("e7", "web", "10:00:00", 2),
    ])
    expected = minutes_df(spark, [
        ("api", "10:00:00", 1, 1, 1, 70.0, 50.0, 5),
        ("api", "10:01:00", 1, 0, 0, 20.0, 10.0, 1),
        ("web", "10:00:00", 0, 0, 0, None, None, 1),
    ])
    assertDataFrameEqual(service_minutes(events), expected)


def test_alerts_on_down_hosts_and_on_the_minute_a_hot_run_is_long_enough(spark):
    def m(service: str, minute: int, cpu: float | None, down: int = 0) -> tuple:
        return (service, f"10:{minute:02d}:00", 1, 0, down, cpu, 50.0, 1)

    minutes = minutes_df(spark, [
        m("a", 0, 95.0), m("a", 1, 91.0), m("a", 2, 90.0),  # run of 3 reached at 10:02
        m("a", 3, 96.0), m("a", 4, 50.0),  # the run goes on: no second alert
        m("a", 5, 95.0), m("a", 6, 95.0),  # run of 2: nothing
        m("b", 0, 99.0), m("b", 1, 99.0), m("b", 3, 99.0),  # 10:02 missing breaks the run
        m("b", 4, 99.0), m("b", 5, 99.0),  # 10:03..10:05: alert at 10:05
        m("c", 0, None, down=2), m("c", 1, 89.9), m("c", 2, 99.0), m("c", 3, 99.0),
    ])
    expected = alerts_df(spark, [
        ("a", "10:02:00", "high_cpu", "avg cpu >= 90% for 3 consecutive minutes (now 90.0%)"),
        ("b", "10:05:00", "high_cpu", "avg cpu >= 90% for 3 consecutive minutes (now 99.0%)"),
        ("c", "10:00:00", "hosts_down", "2 host(s) down"),
    ])
    assertDataFrameEqual(alerts(minutes, 90.0, 3), expected)


# ------------------------------------------------------------------ stream


def _path(lake, layer: str, table: str) -> str:
    return lake.settings.lakehouse.table_path(layer, table)


def _append(spark, lake, rows: list[tuple]) -> None:
    events_df(spark, rows).write.format("delta").mode("append").partitionBy("event_date").save(
        _path(lake, "silver", "system_events")
    )


def _assert_tables(spark, lake, host_rows, minute_rows, alert_rows) -> None:
    def read(table: str) -> DataFrame:
        return spark.read.format("delta").load(_path(lake, "ops", table))

    assertDataFrameEqual(read("host_status"), status_df(spark, host_rows))
    assertDataFrameEqual(read("service_health_minute"), minutes_df(spark, minute_rows))
    assertDataFrameEqual(read("health_alerts"), alerts_df(spark, alert_rows))


FIRST = [
    status("e01", "h1", "api", "10:00:05", "up", 95.0, 50.0),
    status("e02", "h1", "api", "10:01:05", "up", 96.0, 50.0),
    status("e03", "h1", "api", "10:03:05", "up", 97.0, 50.0),  # 10:02 missing: no run yet
    status("e04", "h2", "api", "10:03:30", "down"),
    allocation("e06", "api", "10:04:00", 2),
    status("e05", "h2", "api", "10:05:00", "up", 40.0, 30.0),
]
HOSTS_FIRST = [
    ("h1", "api", "up", 97.0, 50.0, None, "10:03:05", "e03"),
    ("h2", "api", "up", 40.0, 30.0, None, "10:05:00", "e05"),
    ("autoscaler", "api", None, None, None, 2, "10:04:00", "e06"),
]
MINUTES_FIRST = [
    ("api", "10:00:00", 1, 0, 0, 95.0, 50.0, 1),
    ("api", "10:01:00", 1, 0, 0, 96.0, 50.0, 1),
    ("api", "10:03:00", 1, 0, 1, 97.0, 50.0, 2),
    ("api", "10:04:00", 0, 0, 0, None, None, 1),
    ("api", "10:05:00", 1, 0, 0, 40.0, 30.0, 1),
]
DOWN_AT_3 = ("api", "10:03:00", "hosts_down", "1 host(s) down")


def test_health_stream_is_exact_with_out_of_order_events(spark, lake):
    _append(spark, lake, FIRST)
    await_available_now(start(spark, lake.settings, True))
    _assert_tables(spark, lake, HOSTS_FIRST, MINUTES_FIRST, [DOWN_AT_3])

    # Late events, in two commits: they fill the 10:02 gap (a hot run of four minutes,
    # alerted where it reached three), change past minutes, and must not roll h2 back.
    _append(spark, lake, [
        status("e07", "h1", "api", "10:02:10", "up", 98.0, 52.0),
        status("e08", "h2", "api", "10:04:30", "degraded", 60.0, 30.0),
    ])
    _append(spark, lake, [
        status("e09", "h1", "api", "10:00:30", "up", 99.0, 54.0),
        status("e10", "h3", "api", "10:01:40", "down"),
    ])
    await_available_now(start(spark, lake.settings, True))
    _assert_tables(spark, lake, [
        *HOSTS_FIRST, ("h3", "api", "down", None, None, None, "10:01:40", "e10"),
    ], [
        ("api", "10:00:00", 1, 0, 0, 97.0, 52.0, 2),
        ("api", "10:01:00", 1, 0, 1, 96.0, 50.0, 2),
        ("api", "10:02:00", 1, 0, 0, 98.0, 52.0, 1),
        ("api", "10:03:00", 1, 0, 1, 97.0, 50.0, 2),
        ("api", "10:04:00", 0, 1, 0, 60.0, 30.0, 2),
        ("api", "10:05:00", 1, 0, 0, 40.0, 30.0, 1),
    ], [
        DOWN_AT_3,
        ("api", "10:01:00", "hosts_down", "1 host(s) down"),
        ("api", "10:02:00", "high_cpu", "avg cpu >= 90% for 3 consecutive minutes (now 98.0%)"),
    ])


def test_replayed_health_batch_changes_nothing(spark, lake):
    _append(spark, lake, FIRST)
    conf = HealthConf.from_settings(lake.settings)
    ensure_tables(spark, conf)
    batch = spark.read.format("delta").load(_path(lake, "silver", "system_events"))
    process_batch(batch, 0, conf)
    process_batch(batch, 0, conf)
    _assert_tables(spark, lake, HOSTS_FIRST, MINUTES_FIRST, [DOWN_AT_3])
