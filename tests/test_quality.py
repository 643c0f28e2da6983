"""`lakehouse quality`: the suites of conf/quality.yaml on tiny tables with good and
bad rows, skipped tables, ops.quality_results, and the suite parser itself."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import MEDIA_ENGAGEMENT, PLAYBACK_SESSIONS
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.notifications import SCHEMA as NOTIFICATIONS_SCHEMA
from pipelines.quality.run import critical_failures, run_quality
from pipelines.quality.suites import SuiteError, expectation_class, parse_suites
from pipelines.settings import load_settings
from pipelines.silver.tables import QUARANTINE_SCHEMA, silver_schema

T0 = datetime(2026, 11, 2, 10, 0)
D0 = date(2026, 11, 2)


def at(minutes: int) -> datetime:
    return datetime(2026, 11, 2, 10 + minutes // 60, minutes % 60)


BRONZE = T.StructType([
    T.StructField("topic", T.StringType()),
    T.StructField("partition", T.IntegerType()),
    T.StructField("offset", T.LongType()),
    T.StructField("kafka_timestamp", T.TimestampType()),
    T.StructField("key", T.BinaryType()),
    T.StructField("value", T.BinaryType()),
    T.StructField("ingested_at", T.TimestampType()),
    T.StructField("ingest_date", T.DateType()),
])
RECOMMENDATIONS = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("rank", T.IntegerType()),
    T.StructField("media_id", T.StringType()),
    T.StructField("score", T.DoubleType()),
    T.StructField("model_version", T.StringType()),
    T.StructField("generated_at", T.TimestampType()),
])


def write(
    spark: SparkSession, lake: Any, table: str, schema: T.StructType,
    base: dict[str, Any], *rows: dict[str, Any],
) -> None:
    """Rows given as overrides of `base`, written in `schema`'s column order."""
    layer, name = table.split(".")
    data = [tuple({**base, **row}.get(f.name) for f in schema.fields) for row in rows]
    spark.createDataFrame(data, schema).write.format("delta").save(
        lake.settings.lakehouse.table_path(layer, name)
    )


def write_tables(spark: SparkSession, lake: Any) -> None:
    """Every suite's table except silver.content_uploads, each with a few bad rows."""
    topic = lake.settings.topic("user_actions").name
    write(spark, lake, "bronze.events", BRONZE,
          {"topic": topic, "partition": 0, "kafka_timestamp": T0, "value": b"{}",
           "ingested_at": T0, "ingest_date": D0},
          {"offset": 0}, {"offset": 1},
          {"offset": 1},  # the same Kafka record twice
          {"topic": "media.retired", "offset": 7})
    write(spark, lake, "silver.user_actions", silver_schema("user_action"),
          {"user_id": "u1", "media_id": "m1", "event_time": T0, "schema_version": 2,
           "source_topic": topic, "source_partition": 0, "source_offset": 0,
           "processed_at": T0, "event_date": D0},
          {"event_id": "e1", "action": "play", "device": "web", "position_ms": 0},
          {"event_id": "e2", "action": "pause", "device": "unknown"},  # an upcast v1
          {"event_id": "e2", "action": "skip", "device": "ios", "position_ms": 10},
          {"event_id": "e3", "action": "rewind", "device": "tv", "position_ms": -5})
    write(spark, lake, "silver.system_events", silver_schema("system_event"),
          {"host": "h1", "service": "api", "kind": "server_status", "event_time": T0,
           "schema_version": 1, "source_topic": "sys", "source_partition": 0,
           "source_offset": 0, "processed_at": T0, "event_date": D0},
          {"event_id": "s1", "status": "up", "cpu_pct": 50.0, "memory_pct": 40.0},
          {"event_id": "s2", "status": "exploded", "cpu_pct": 150.0, "memory_pct": 100.0},
          {"event_id": "s3", "kind": "resource_allocation", "instances": 3})
    write(spark, lake, "silver.quarantine", QUARANTINE_SCHEMA,
          {"topic": topic, "partition": 0, "value": b"{", "error_detail": "not JSON",
           "quarantined_at": T0},
          {"offset": 10, "error_code": "invalid_json"},
          {"offset": 11, "error_code": "too_weird"})
    write(spark, lake, "gold.media_engagement", MEDIA_ENGAGEMENT,
          {"media_id": "m1", "pauses": 0, "seeks": 0, "completes": 0},
          # skips > plays is legitimate: the skipped play can sit in the previous window.
          {"window_start": at(0), "window_end": at(5), "plays": 1, "skips": 2,
           "unique_viewers": 2, "skip_rate": 2.0},
          {"window_start": at(5), "window_end": at(10), "plays": 0, "skips": 1,
           "unique_viewers": 1},
          {"media_id": "m2", "window_start": at(0), "window_end": at(0), "plays": 2,
           "skips": 0, "unique_viewers": 0, "skip_rate": 0.0})
    write(spark, lake, "gold.playback_sessions", PLAYBACK_SESSIONS,
          {"user_id": "u1", "media_id": "m1"},
          {"session_id": "p1", "session_start": at(0), "session_end": at(10), "actions": 3,
           "watch_ms": 600_000, "outcome": "completed"},
          {"session_id": "p2", "session_start": at(20), "session_end": at(20), "actions": 1,
           "watch_ms": 0, "outcome": "abandoned"},
          {"session_id": "p3", "session_start": at(60), "session_end": at(59), "actions": 2,
           "watch_ms": 0, "outcome": "paused"})
    write(spark, lake, "gold.notifications", NOTIFICATIONS_SCHEMA,
          {"media_id": "m1", "creator_id": "c1", "reason": "r", "created_at": T0},
          {"notification_id": "n1", "user_id": "u1"},
          {"notification_id": "n2", "user_id": "u1"},
          {"notification_id": "n3", "user_id": "u2"})
    write(spark, lake, "features.user_recommendations", RECOMMENDATIONS,
          {"user_id": "u1", "score": 1.0, "model_version": "v", "generated_at": T0},
          {"rank": 1, "media_id": "m1"}, {"rank": 2, "media_id": "m2"},
          {"rank": 2, "media_id": "m3"},
          {"user_id": "u2", "rank": 11, "media_id": "m1"})


def key(row: dict[str, Any]) -> tuple[str, str, str, bool | None, int | None]:
    """(table, expectation, the column(s) it is about, success, unexpected_count)."""
    kwargs = json.loads(row["kwargs"])
    on = kwargs.get("column") or "+".join(kwargs.get("column_list") or []) or (
        f"{kwargs['column_A']}>{'=' if kwargs.get('or_equal') else ''}{kwargs['column_B']}"
    )
    expectation = row["expectation"].removeprefix("expect_")
    return (row["table"], expectation, on, row["success"], row["unexpected_count"])


NN, UNIQUE, IN_SET, BETWEEN = (
    "column_values_to_not_be_null", "column_values_to_be_unique",
    "column_values_to_be_in_set", "column_values_to_be_between",
)
COMPOUND, PAIR = "compound_columns_to_be_unique", "column_pair_values_a_to_be_greater_than_b"
EXPECTED = [
    ("bronze.events", NN, "offset", True, 0),
    ("bronze.events", COMPOUND, "topic+partition+offset", False, 2),
    ("bronze.events", IN_SET, "topic", False, 1),
    ("silver.user_actions", NN, "event_id", True, 0),
    ("silver.user_actions", UNIQUE, "event_id", False, 2),
    ("silver.user_actions", NN, "user_id", True, 0),
    ("silver.user_actions", IN_SET, "action", False, 1),
    ("silver.user_actions", IN_SET, "device", True, 0),
    ("silver.user_actions", BETWEEN, "position_ms", False, 1),
    ("silver.content_uploads", NN, "event_id", None, None),
    ("silver.content_uploads", UNIQUE, "event_id", None, None),
    ("silver.content_uploads", NN, "creator_id", None, None),
    ("silver.content_uploads", BETWEEN, "duration_ms", None, None),
    ("silver.system_events", NN, "event_id", True, 0),
    ("silver.system_events", UNIQUE, "event_id", True, 0),
    ("silver.system_events", IN_SET, "kind", True, 0),
    ("silver.system_events", IN_SET, "status", False, 1),
    ("silver.system_events", BETWEEN, "cpu_pct", False, 1),
    ("silver.system_events", BETWEEN, "memory_pct", True, 0),
    ("silver.system_events", BETWEEN, "instances", True, 0),
    ("silver.quarantine", IN_SET, "error_code", False, 1),
    ("silver.quarantine", NN, "error_detail", True, 0),
    ("silver.quarantine", COMPOUND, "topic+partition+offset", True, 0),
    ("gold.media_engagement", COMPOUND, "media_id+window_start", True, 0),
    ("gold.media_engagement", PAIR, "window_end>window_start", False, 1),
    ("gold.media_engagement", BETWEEN, "plays", True, 0),
    ("gold.media_engagement", BETWEEN, "pauses", True, 0),
    ("gold.media_engagement", BETWEEN, "skips", True, 0),
    ("gold.media_engagement", BETWEEN, "seeks", True, 0),
    ("gold.media_engagement", BETWEEN, "completes", True, 0),
    ("gold.media_engagement", BETWEEN, "unique_viewers", False, 1),
    ("gold.media_engagement", BETWEEN, "skip_rate", True, 0),
    ("gold.playback_sessions", NN, "session_id", True, 0),
    ("gold.playback_sessions", UNIQUE, "session_id", True, 0),
    ("gold.playback_sessions", IN_SET, "outcome", False, 1),
    ("gold.playback_sessions", PAIR, "session_end>=session_start", False, 1),
    ("gold.playback_sessions", BETWEEN, "watch_ms", True, 0),
    ("gold.playback_sessions", BETWEEN, "actions", True, 0),
    ("gold.notifications", UNIQUE, "notification_id", True, 0),
    ("gold.notifications", COMPOUND, "user_id+media_id", False, 2),
    ("features.user_recommendations", BETWEEN, "rank", False, 1),
    ("features.user_recommendations", COMPOUND, "user_id+rank", False, 2),
    ("features.user_recommendations", COMPOUND, "user_id+media_id", True, 0),
]
CRITICAL_FAILURES = {
    ("bronze.events", COMPOUND, "topic+partition+offset"),
    ("silver.user_actions", UNIQUE, "event_id"),
    ("silver.user_actions", IN_SET, "action"),
    ("silver.quarantine", IN_SET, "error_code"),
    ("gold.media_engagement", PAIR, "window_end>window_start"),
    ("gold.playback_sessions", IN_SET, "outcome"),
    ("gold.playback_sessions", PAIR, "session_end>=session_start"),
    ("gold.notifications", COMPOUND, "user_id+media_id"),
    ("features.user_recommendations", BETWEEN, "rank"),
    ("features.user_recommendations", COMPOUND, "user_id+rank"),
}


def test_shipped_suites_on_good_and_bad_rows(spark: SparkSession, lake: Any) -> None:
    write_tables(spark, lake)

    results = run_quality(spark, lake.settings)

    assert [key(r) for r in results] == EXPECTED
    assert {key(r)[:3] for r in critical_failures(results)} == CRITICAL_FAILURES
    by_on = {key(r)[:3]: r for r in results}
    # Value sets and bounds come from schemas/, settings and code constants.
    assert json.loads(by_on["silver.user_actions", IN_SET, "device"]["kwargs"]) == {
        "column": "device", "value_set": ["web", "ios", "android", "tv", "other", "unknown"]}
    assert json.loads(by_on["silver.system_events", BETWEEN, "cpu_pct"]["kwargs"]) == {
        "column": "cpu_pct", "min_value": 0, "max_value": 100}
    assert json.loads(by_on["features.user_recommendations", BETWEEN, "rank"]["kwargs"]) == {
        "column": "rank", "min_value": 1, "max_value": 10}
    assert json.loads(by_on["bronze.events", IN_SET, "topic"]["kwargs"])["value_set"] == [
        lake.settings.topic(k).name for k in ("user_actions", "content_uploads", "system_events")
    ]
    assert by_on["silver.user_actions", IN_SET, "action"]["observed"] == (
        '1 of 4 unexpected, e.g. ["rewind"]')
    uploads = lake.settings.lakehouse.table_path("silver", "content_uploads")
    assert by_on["silver.content_uploads", NN, "event_id"]["observed"] == (
        f"skipped: no table at {uploads}")

    recorded = spark.read.format("delta").load(
        lake.settings.lakehouse.table_path("ops", "quality_results"))
    assert recorded.select("run_id", "run_at").distinct().count() == 1
    columns = ["table", "expectation", "kwargs", "success", "unexpected_count", "observed",
               "severity"]
    assertDataFrameEqual(
        recorded.select(*columns),
        spark.createDataFrame([tuple(r[c] for c in columns) for r in results],
                              recorded.select(*columns).schema),
    )


SMALL_SUITES = """
bronze.events:
  - {expect: column_values_to_not_be_null, column: offset, severity: critical}
silver.quarantine:
  - {expect: column_values_to_not_be_null, column: error_detail}
"""


def test_every_run_is_appended_under_its_own_run_id(
    spark: SparkSession, lake: Any, tmp_path: Path
) -> None:
    suites = tmp_path / "quality.yaml"
    suites.write_text(SMALL_SUITES)
    write(spark, lake, "bronze.events", BRONZE,
          {"topic": "t", "partition": 0, "kafka_timestamp": T0, "ingested_at": T0,
           "ingest_date": D0},
          {"offset": 0}, {"offset": None})

    first = run_quality(spark, lake.settings, suites_path=suites)
    second = run_quality(spark, lake.settings, suites_path=suites)

    assert first == second
    assert [r["success"] for r in critical_failures(first)] == [False]
    recorded = spark.read.format("delta").load(
        lake.settings.lakehouse.table_path("ops", "quality_results"))
    quarantine = lake.settings.lakehouse.table_path("silver", "quarantine")
    expected_run = [
        ("bronze.events", "expect_column_values_to_not_be_null", '{"column": "offset"}',
         False, 1, "1 of 2 unexpected, e.g. [null]", "critical"),
        ("silver.quarantine", "expect_column_values_to_not_be_null",
         '{"column": "error_detail"}', None, None, f"skipped: no table at {quarantine}",
         "warning"),
    ]
    assertDataFrameEqual(
        recorded.drop("run_id", "run_at"),
        spark.createDataFrame(expected_run * 2, recorded.drop("run_id", "run_at").schema),
    )
    runs = recorded.groupBy("run_id").agg(F.count(F.lit(1)).alias("rows"),
                                          F.countDistinct("run_at").alias("times"))
    assertDataFrameEqual(runs.select("rows", "times"),
                         spark.createDataFrame([(2, 1), (2, 1)], "rows long, times long"))


# ---------------------------------------------------------------- the parser, no Spark


@pytest.fixture(scope="module")
def settings():  # noqa: ANN201
    return load_settings(env={})


def test_expectation_names_map_to_gx_classes_generically() -> None:
    assert expectation_class("column_values_to_be_unique").__name__ == (
        "ExpectColumnValuesToBeUnique")
    assert expectation_class("column_pair_values_a_to_be_greater_than_b").__name__ == (
        "ExpectColumnPairValuesAToBeGreaterThanB")
    # GX capitalises "KL"; a naive CamelCase would miss it.
    assert expectation_class("column_kl_divergence_to_be_less_than").__name__ == (
        "ExpectColumnKLDivergenceToBeLessThan")
    with pytest.raises(SuiteError, match="unknown expectation 'column_values_to_be_nice'"):
        expectation_class("column_values_to_be_nice")


def test_references_resolve_from_schemas_settings_and_constants(settings: Any) -> None:
    suites = parse_suites({"silver.user_actions": [
        {"expect": "column_values_to_be_in_set", "column": "action",
         "value_set": {"schema": "user_action.action", "plus": ["x"]}, "severity": "critical"},
        {"expect": "column_values_to_be_between", "column": "rank",
         "min_value": {"schema": "system_event.cpuPct", "keyword": "minimum"},
         "max_value": {"setting": "features.top_k"}},
        {"expect": "column_values_to_be_in_set", "column": "error_code",
         "value_set": {"constant": "pipelines.silver.tables.ERROR_CODES"}},
    ]}, settings)
    assert [(r.expectation, dict(r.kwargs), r.severity) for r in suites["silver.user_actions"]] == [
        ("expect_column_values_to_be_in_set",
         {"column": "action", "value_set": ["play", "pause", "skip", "seek", "complete", "x"]},
         "critical"),
        ("expect_column_values_to_be_between",
         {"column": "rank", "min_value": 0, "max_value": 10}, "warning"),
        ("expect_column_values_to_be_in_set",
         {"column": "error_code", "value_set": ["invalid_json", "schema_violation",
                                                "unknown_version", "oversize", "duplicate"]},
         "warning"),
    ]


@pytest.mark.parametrize(("rule", "message"), [
    ({"expect": "column_values_to_not_be_null", "column": "a", "severity": "fatal"},
     "severity 'fatal'"),
    ({"expect": "column_values_to_not_be_null", "colum": "a"}, "bad arguments"),
    ({"expect": "column_values_to_be_in_set", "column": "a",
      "value_set": {"schema": "user_action.nope"}}, "no 'enum' for that field"),
    ({"expect": "column_values_to_be_in_set", "column": "a",
      "value_set": {"constant": "os.environ"}}, "must be under pipelines."),
    ({"expect": "column_values_to_be_between", "column": "a",
      "max_value": {"setting": "features.nope"}}, "no such setting"),
    ({"column": "a"}, "must be a mapping with `expect`"),
])
def test_bad_rules_are_refused_with_the_table_named(
    settings: Any, rule: dict[str, Any], message: str
) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suites({"gold.t": [rule]}, settings)


def test_duplicate_rules_are_refused(settings: Any) -> None:
    rule = {"expect": "column_values_to_not_be_null", "column": "a"}
    with pytest.raises(SuiteError, match="gold.t: duplicate rule"):
        parse_suites({"gold.t": [rule, {**rule, "severity": "critical"}]}, settings)
