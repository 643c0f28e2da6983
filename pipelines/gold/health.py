"""System health from silver.system_events: three operational tables under `<root>/ops/`.

**ops.host_status**: the current state of every (`host`, `service`): the columns of
its newest event (`status`, `cpu_pct`, `memory_pct`, `instances`, null where that
event has no such reading), `last_event_time` and `last_event_id`. Keyed on
(host, service), not host alone, because the autoscaler reports `resource_allocation`
events for every service from one host; a server host has one service, hence one
row. "Newest" is the largest (`event_time`, `event_id`), so an older event arriving
late never overwrites a newer one and ties resolve the same way in any order.

**ops.service_health_minute**: per `service` and event-time `minute` (start of the
UTC minute): `hosts_up`, `hosts_degraded`, `hosts_down` = the number of distinct
hosts that sent at least one `server_status` event with that status in the minute
(a host that changed status within the minute counts under each status it
reported); `avg_cpu_pct`, `avg_memory_pct` = the mean of the readings of the
`server_status` events of the minute (events without a reading are left out; null
when there is none); `events` = all system events of the service in the minute,
both kinds. Each micro-batch recomputes the (service, minute) keys it touches from
the whole silver table and upserts them, so late and out-of-order events give the
exact values.

**ops.health_alerts**: `alert_id` (sha2 of service|kind|minute), `service`,
`minute`, `kind`, `detail`, `raised_at` (= `minute`, so a replay gives the same row):
- `hosts_down`: the service has at least one down host in the minute;
- `high_cpu`: the service's `avg_cpu_pct` >= `gold.high_cpu_pct` in
  `gold.high_cpu_minutes` consecutive minutes; raised once per run, on the minute
  the run reaches that length. A minute without a cpu reading breaks a run.
Alerts are insert-only: once raised they stay, even if a later late event would
have changed the minute's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.io.delta import ensure_table, merge_insert_new, upsert
from pipelines.io.streams import read_delta_stream, start_stream
from pipelines.settings import Settings
from pipelines.silver.tables import ensure_silver_table

HOST_STATUS = catalog.OPS_HOST_STATUS
SERVICE_MINUTE = catalog.OPS_SERVICE_HEALTH_MINUTE
ALERTS = catalog.OPS_HEALTH_ALERTS
QUERY_NAME = "gold_health"
SOURCE = catalog.SILVER_SYSTEM_EVENTS
SERVER_STATUS = "server_status"
HOSTS_DOWN, HIGH_CPU = "hosts_down", "high_cpu"

HOST_STATUS_SCHEMA = T.StructType([
    T.StructField("host", T.StringType(), False),
    T.StructField("service", T.StringType(), False),
    T.StructField("status", T.StringType(), True),
    T.StructField("cpu_pct", T.DoubleType(), True),
    T.StructField("memory_pct", T.DoubleType(), True),
    T.StructField("instances", T.LongType(), True),
    T.StructField("last_event_time", T.TimestampType(), False),
    T.StructField("last_event_id", T.StringType(), False),
])
SERVICE_MINUTE_SCHEMA = T.StructType([
    T.StructField("service", T.StringType(), False),
    T.StructField("minute", T.TimestampType(), False),
    T.StructField("hosts_up", T.LongType(), False),
    T.StructField("hosts_degraded", T.LongType(), False),
    T.StructField("hosts_down", T.LongType(), False),
    T.StructField("avg_cpu_pct", T.DoubleType(), True),
    T.StructField("avg_memory_pct", T.DoubleType(), True),
    T.StructField("events", T.LongType(), False),
])
ALERT_SCHEMA = T.StructType([
    T.StructField("alert_id", T.StringType(), False),
    T.StructField("service", T.StringType(), False),
    T.StructField("minute", T.TimestampType(), False),
    T.StructField("kind", T.StringType(), False),
    T.StructField("detail", T.StringType(), False),
    T.StructField("raised_at", T.TimestampType(), False),
])


def _minute(col: str = "event_time") -> F.Column:
    return F.date_trunc("minute", F.col(col))


def host_status(events: DataFrame) -> DataFrame:
    """The newest event of every (host, service) in `events`, as ops.host_status rows."""
    newest_first = Window.partitionBy("host", "service").orderBy(
        F.col("event_time").desc(), F.col("event_id").desc()
    )
    return (
        events.withColumn("_n", F.row_number().over(newest_first))
        .filter(F.col("_n") == 1)
        .select(
            F.col("host"),
            F.col("service"),
            F.col("status"),
            F.col("cpu_pct"),
            F.col("memory_pct"),
            F.col("instances"),
            F.col("event_time").alias("last_event_time"),
            F.col("event_id").alias("last_event_id"),
        )
    )


def _hosts_with(status: str) -> F.Column:
    is_status = (F.col("kind") == SERVER_STATUS) & (F.col("status") == status)
    return F.countDistinct(F.when(is_status, F.col("host")))


def _server_reading(col: str) -> F.Column:
    return F.avg(F.when(F.col("kind") == SERVER_STATUS, F.col(col)))


def service_minutes(events: DataFrame) -> DataFrame:
    """Per service and event-time minute, the ops.service_health_minute row of `events`
    (exact only when `events` holds every event of those minutes)."""
    return (
        events.groupBy(F.col("service"), _minute().alias("minute"))
        .agg(
            _hosts_with("up").alias("hosts_up"),
            _hosts_with("degraded").alias("hosts_degraded"),
            _hosts_with("down").alias("hosts_down"),
            _server_reading("cpu_pct").alias("avg_cpu_pct"),
            _server_reading("memory_pct").alias("avg_memory_pct"),
            F.count(F.lit(1)).alias("events"),
        )
        .select(*SERVICE_MINUTE_SCHEMA.fieldNames())
    )


def _epoch_minute(col: str = "minute") -> F.Column:
    return (F.unix_seconds(F.col(col)) / 60).cast("long")


def alerts(service_minutes: DataFrame, high_cpu_pct: float, high_cpu_minutes: int) -> DataFrame:
    """ops.health_alerts rows raised by `service_minutes` (ops.service_health_minute rows).

    A high_cpu alert at minute m needs m and the `high_cpu_minutes - 1` minutes before
    it hot, and minute m - `high_cpu_minutes` not hot (or absent), so it depends only
    on the `high_cpu_minutes` minutes before m: a caller passing a slice of the
    table gets right answers from its `high_cpu_minutes`-th minute on.
    """
    n = high_cpu_minutes
    is_hot = F.coalesce(F.col("avg_cpu_pct") >= F.lit(high_cpu_pct), F.lit(False))
    # Range frames over the minute number: absent minutes are simply not counted,
    # which is what makes a gap break a run.
    by_minute = Window.partitionBy("service").orderBy(_epoch_minute())
    hot = service_minutes.withColumn("_hot", is_hot.cast("int"))
    runs = hot.withColumns({
        "_hot_in_run": F.sum("_hot").over(by_minute.rangeBetween(-(n - 1), 0)),
        "_hot_before": F.sum("_hot").over(by_minute.rangeBetween(-n, -n)),
    })
    reaches_run = (F.col("_hot_in_run") == n) & (F.coalesce(F.col("_hot_before"), F.lit(0)) == 0)
    high_cpu = runs.filter(reaches_run).select(
        F.col("service"),
        F.col("minute"),
        F.lit(HIGH_CPU).alias("kind"),
        F.format_string(
            "avg cpu >= %s%% for %d consecutive minutes (now %.1f%%)",
            F.lit(f"{high_cpu_pct:g}"), F.lit(n), F.col("avg_cpu_pct"),
        ).alias("detail"),
    )
    down = service_minutes.filter(F.col("hosts_down") > 0).select(
        F.col("service"),
        F.col("minute"),
        F.lit(HOSTS_DOWN).alias("kind"),
        F.format_string("%d host(s) down", F.col("hosts_down")).alias("detail"),
    )
    return down.unionByName(high_cpu).select(
        F.sha2(
            F.concat_ws("|", F.col("service"), F.col("kind"), F.col("minute").cast("string")), 256
        ).alias("alert_id"),
        F.col("service"),
        F.col("minute"),
        F.col("kind"),
        F.col("detail"),
        F.col("minute").alias("raised_at"),
    )


# A host's row moves to a newer event only: (event_time, event_id) orders events the
# same way whatever order they arrive in.
_IS_NEWER = (
    "s.last_event_time > t.last_event_time OR "
    "(s.last_event_time = t.last_event_time AND s.last_event_id > t.last_event_id)"
)


@dataclass(frozen=True)
class HealthConf:
    """What the job needs, as plain values: table paths and the high-cpu rule."""

    source_path: str
    host_status_path: str
    service_minute_path: str
    alerts_path: str
    high_cpu_pct: float
    high_cpu_minutes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthConf:
        return cls(
            source_path=SOURCE.path(settings),
            host_status_path=HOST_STATUS.path(settings),
            service_minute_path=SERVICE_MINUTE.path(settings),
            alerts_path=ALERTS.path(settings),
            high_cpu_pct=settings.gold.high_cpu_pct,
            high_cpu_minutes=settings.gold.high_cpu_minutes,
        )


def ensure_tables(spark: SparkSession, conf: HealthConf) -> None:
    """Create the three ops tables (and an empty silver source) if missing, once before
    the stream: started beside silver, this job may come first, and an empty source
    lets the stream begin instead of failing on a missing path."""

    def empty(schema: T.StructType) -> DataFrame:
        return spark.createDataFrame([], schema)

    ensure_silver_table(spark, conf.source_path, "system_event")
    ensure_table(spark, conf.host_status_path, empty(HOST_STATUS_SCHEMA), HOST_STATUS)
    ensure_table(spark, conf.service_minute_path, empty(SERVICE_MINUTE_SCHEMA), SERVICE_MINUTE)
    ensure_table(spark, conf.alerts_path, empty(ALERT_SCHEMA), ALERTS)


def process_batch(events: DataFrame, batch_id: int, conf: HealthConf) -> None:
    """foreachBatch body of `gold_health` (tables made by `ensure_tables`); every write
    is a keyed MERGE, so replaying a batch leaves the tables as they were."""
    spark = events.sparkSession
    if events.isEmpty():
        return
    events = events.persist()
    try:
        upsert(
            DeltaTable.forPath(spark, conf.host_status_path), host_status(events),
            HOST_STATUS.keys, update_if=_IS_NEWER,
        )
        minutes = DeltaTable.forPath(spark, conf.service_minute_path)
        _refresh_minutes(spark, conf, events, minutes)
        _raise_alerts(conf, events, minutes, DeltaTable.forPath(spark, conf.alerts_path))
    finally:
        events.unpersist()


def _refresh_minutes(
    spark: SparkSession, conf: HealthConf, events: DataFrame, target: DeltaTable
) -> None:
    touched = events.select(F.col("service"), _minute().alias("minute")).distinct()
    # Partition pruning: a touched minute lies in an event_date the batch has.
    dates = [r["event_date"] for r in events.select("event_date").distinct().collect()]
    all_events_of_touched = (
        spark.read.format("delta").load(conf.source_path)
        .filter(F.col("event_date").isin(dates))
        .withColumn("minute", _minute())
        .join(touched, on=["service", "minute"], how="left_semi")
        .drop("minute")
    )
    upsert(target, service_minutes(all_events_of_touched), SERVICE_MINUTE.keys)


def _raise_alerts(
    conf: HealthConf, events: DataFrame, minutes: DeltaTable, target: DeltaTable
) -> None:
    # A change at minute m can raise alerts at m .. m+n, each of which looks n minutes
    # back: read [first touched - n, last touched + n] minutes, keep alerts from the
    # first touched minute on (those whose look-back lies inside the slice).
    n = conf.high_cpu_minutes
    reach = F.expr(f"INTERVAL {n} MINUTES")
    bounds = events.groupBy("service").agg(
        F.min(_minute()).alias("_first"), F.max(_minute()).alias("_last")
    )
    in_reach = (F.col("minute") >= F.col("_first") - reach) & (
        F.col("minute") <= F.col("_last") + reach
    )
    neighbourhood = minutes.toDF().join(bounds, on="service", how="inner").filter(in_reach)
    raised = (
        alerts(neighbourhood.drop("_first", "_last"), conf.high_cpu_pct, n)
        .join(bounds, on="service", how="inner")
        .filter(F.col("minute") >= F.col("_first"))
        .select(*ALERT_SCHEMA.fieldNames())
    )
    merge_insert_new(target, raised, ALERTS.keys)


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    conf = HealthConf.from_settings(settings)
    ensure_tables(spark, conf)
    events = read_delta_stream(spark, conf.source_path, settings.streaming)
    return [start_stream(
        settings, QUERY_NAME, events, partial(process_batch, conf=conf),
        available_now=available_now,
    )]
