"""gold.notifications: who is a fan, the caps, and the stream into Delta and Kafka."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from helpers import PLAYBACK_SESSIONS, await_available_now
from kafka import KafkaConsumer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.gold.notifications import (
    SCHEMA,
    NotificationConf,
    ensure_tables,
    fans,
    process_batch,
    select_notifications,
    start,
)
from pipelines.io.delta import table_exists
from pipelines.schemas.registry import classify
from pipelines.silver.tables import silver_schema

REASON = "new upload from a creator you watch"  # the contract's literal
CANDIDATES = T.StructType([
    T.StructField("user_id", T.StringType()),
    T.StructField("media_id", T.StringType()),
    T.StructField("creator_id", T.StringType()),
    T.StructField("created_at", T.TimestampType()),
])
UPLOADS = silver_schema("content_upload")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def nid(user: str, media: str) -> str:
    return hashlib.sha256(f"{user}|{media}".encode()).hexdigest()


def sessions_df(spark: SparkSession, rows: list[tuple[str, str, str, str]]) -> DataFrame:
    """(user, media, session_end, outcome) -> gold.playback_sessions rows."""
    return spark.createDataFrame(
        [(f"s{i}", u, m, ts(end), ts(end), 3, 1000, o) for i, (u, m, end, o) in enumerate(rows)],
        PLAYBACK_SESSIONS,
    )


def upload_row(event_id: str, media: str, creator: str, at: str) -> tuple:
    t = ts(at)
    return (event_id, media, creator, t, "A Title", "drama", 60_000, 1,
            "media.content-uploads", 0, 0, t, t.date())


def uploads_df(spark: SparkSession, rows: list[tuple[str, str, str, str]]) -> DataFrame:
    return spark.createDataFrame([upload_row(*r) for r in rows], UPLOADS)


def notifications_df(spark: SparkSession, rows: list[tuple[str, str, str, str]]) -> DataFrame:
    """(user, media, creator, created_at) -> gold.notifications rows, ids by hand."""
    return spark.createDataFrame(
        [(nid(u, m), u, m, c, REASON, ts(at)) for u, m, c, at in rows], SCHEMA
    )


# ------------------------------------------------------------------ pure transforms

MEDIA_CREATORS = [("m1", "c1"), ("m2", "c1"), ("m5", "c2"), ("m10", "c1"), ("m20", "c2")]


def test_fans_need_completed_sessions_of_the_creator_on_enough_days_before_upload(spark):
    sessions = sessions_df(spark, [
        ("u1", "m1", "2026-11-01 20:00:00", "completed"),  # two media of c1, two days: fan
        ("u1", "m2", "2026-11-02 09:00:00", "completed"),
        ("u2", "m1", "2026-11-02 08:00:00", "completed"),  # two sessions, one day: no
        ("u2", "m2", "2026-11-02 21:00:00", "completed"),
        ("u3", "m1", "2026-11-01 10:00:00", "completed"),  # second day only skipped: no
        ("u3", "m2", "2026-11-02 10:00:00", "skipped"),
        ("u3", "m2", "2026-11-02 11:00:00", "abandoned"),
        ("u4", "m1", "2026-11-01 10:00:00", "completed"),  # second day after upload: no
        ("u4", "m1", "2026-11-03 12:00:00", "completed"),
        ("u5", "m5", "2026-11-01 10:00:00", "completed"),  # fan of c2, not of c1
        ("u5", "m5", "2026-11-02 10:00:00", "completed"),
        ("u6", "m1", "2026-11-01 23:59:59", "completed"),  # midnight apart: two days
        ("u6", "m2", "2026-11-02 00:00:01", "completed"),
        ("u7", "m1", "2026-11-01 10:00:00", "completed"),  # ends at the upload: not before
        ("u7", "m2", "2026-11-03 10:00:00", "completed"),
    ])
    creators = spark.createDataFrame(MEDIA_CREATORS, ["media_id", "creator_id"])
    uploads = uploads_df(spark, [
        ("e10", "m10", "c1", "2026-11-03 10:00:00"),
        ("e20", "m20", "c2", "2026-11-04 10:00:00"),
    ])
    expected = spark.createDataFrame([
        ("u1", "m10", "c1", ts("2026-11-03 10:00:00")),
        ("u6", "m10", "c1", ts("2026-11-03 10:00:00")),
        ("u5", "m20", "c2", ts("2026-11-04 10:00:00")),
    ], CANDIDATES)
    assertDataFrameEqual(fans(sessions, creators, uploads, 2), expected)
    assert fans(sessions, creators, uploads, 3).collect() == []


def test_select_notifications_never_twice_and_caps_per_user_day(spark):
    existing = notifications_df(spark, [
        ("u1", "mA", "c1", "2026-11-03 08:00:00"),
        ("u1", "mB", "c1", "2026-11-03 08:30:00"),
        ("u2", "mX", "c2", "2026-11-02 10:00:00"),
    ])
    candidates = spark.createDataFrame([
        ("u1", "mA", "c1", ts("2026-11-03 09:00:00")),  # already notified
        ("u1", "mD", "c1", ts("2026-11-03 11:00:00")),  # one slot left on 11-03 ...
        ("u1", "mC", "c1", ts("2026-11-03 11:00:00")),
        ("u1", "mE", "c1", ts("2026-11-03 10:00:00")),  # ... the earliest takes it
        ("u1", "mF", "c1", ts("2026-11-04 10:00:00")),  # another day, own cap
        ("u2", "mY", "c2", ts("2026-11-04 10:00:00")),  # uploaded twice: earliest once
        ("u2", "mY", "c2", ts("2026-11-04 09:00:00")),
        ("u3", "mQ", "c3", ts("2026-11-05 12:00:00")),  # four at once: media_id breaks ties
        ("u3", "mS", "c3", ts("2026-11-05 12:00:00")),
        ("u3", "mP", "c3", ts("2026-11-05 12:00:00")),
        ("u3", "mR", "c3", ts("2026-11-05 12:00:00")),
    ], CANDIDATES)
    expected = notifications_df(spark, [
        ("u1", "mE", "c1", "2026-11-03 10:00:00"),
        ("u1", "mF", "c1", "2026-11-04 10:00:00"),
        ("u2", "mY", "c2", "2026-11-04 09:00:00"),
        ("u3", "mP", "c3", "2026-11-05 12:00:00"),
        ("u3", "mQ", "c3", "2026-11-05 12:00:00"),
        ("u3", "mR", "c3", "2026-11-05 12:00:00"),
    ])
    assertDataFrameEqual(select_notifications(candidates, existing, 3), expected)


# ------------------------------------------------------------------ stream + Kafka


def _paths(lake) -> tuple[str, str, str]:
    lh = lake.settings.lakehouse
    return (lh.table_path("silver", "content_uploads"), lh.table_path("gold", "playback_sessions"),
            lh.table_path("gold", "notifications"))


def _append_uploads(spark, lake, rows) -> None:
    uploads_df(spark, rows).write.format("delta").mode("append").partitionBy("event_date").save(
        _paths(lake)[0]
    )


def _consume(lake) -> list[tuple[str, dict]]:
    consumer = KafkaConsumer(
        lake.settings.kafka.topics["notifications"].name,
        bootstrap_servers=lake.settings.kafka.bootstrap,
        auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=4000,
    )
    try:
        out = []
        for record in consumer:
            assert classify("notification", record.value, 65536).ok, record.value
            out.append((record.key.decode(), json.loads(record.value)))
        return out
    finally:
        consumer.close()


def _message(user: str, media: str, creator: str, created_at: str) -> tuple[str, dict]:
    return (user, {"schemaVersion": 1, "notificationId": nid(user, media), "userId": user,
                   "mediaId": media, "creatorId": creator, "reason": REASON,
                   "createdAt": created_at})


def _setup_history(spark, lake) -> None:
    sessions_df(spark, [
        ("u1", "m1", "2026-11-01 20:00:00", "completed"),
        ("u1", "m2", "2026-11-02 09:00:00", "completed"),
        ("u2", "m1", "2026-11-02 08:00:00", "completed"),
        ("u2", "m1", "2026-11-02 21:00:00", "completed"),
        ("u5", "m5", "2026-11-01 10:00:00", "completed"),
        ("u5", "m5", "2026-11-02 10:00:00", "completed"),
    ]).write.format("delta").save(_paths(lake)[1])
    _append_uploads(spark, lake, [
        ("e1", "m1", "c1", "2026-10-25 10:00:00"),
        ("e2", "m2", "c1", "2026-10-26 10:00:00"),
        ("e5", "m5", "c2", "2026-10-25 10:00:00"),
        ("e10", "m10", "c1", "2026-11-03 10:00:00"),
        ("e19", "m19", "c2", "2026-11-04 08:00:00"),
    ])


def test_notification_stream_writes_gold_and_topic_once(spark, kafka_lake):
    _setup_history(spark, kafka_lake)
    table = _paths(kafka_lake)[2]
    first = [("u1", "m10", "c1", "2026-11-03 10:00:00"), ("u5", "m19", "c2", "2026-11-04 08:00:00")]
    first_messages = [
        _message("u1", "m10", "c1", "2026-11-03T10:00:00.000000Z"),
        _message("u5", "m19", "c2", "2026-11-04T08:00:00.000000Z"),
    ]
    await_available_now(start(spark, kafka_lake.settings, True))
    assertDataFrameEqual(spark.read.format("delta").load(table), notifications_df(spark, first))
    assert _consume(kafka_lake) == first_messages

    # Nothing new: nothing in the table, nothing on the topic.
    await_available_now(start(spark, kafka_lake.settings, True))
    assertDataFrameEqual(spark.read.format("delta").load(table), notifications_df(spark, first))
    assert _consume(kafka_lake) == first_messages

    _append_uploads(spark, kafka_lake, [
        ("e10b", "m10", "c1", "2026-11-04 09:00:00"),  # m10 again: u1 already has it
        ("e20", "m20", "c2", "2026-11-04 12:00:00"),  # u5 has 1 of 3 on 11-04: two more,
        ("e21", "m21", "c2", "2026-11-04 11:00:00"),  # the earliest, ties by media_id
        ("e22", "m22", "c2", "2026-11-04 13:00:00"),
        ("e23", "m23", "c2", "2026-11-04 11:00:00"),
    ])
    await_available_now(start(spark, kafka_lake.settings, True))
    later = [("u5", "m21", "c2", "2026-11-04 11:00:00"), ("u5", "m23", "c2", "2026-11-04 11:00:00")]
    assertDataFrameEqual(
        spark.read.format("delta").load(table), notifications_df(spark, first + later)
    )
    assert _consume(kafka_lake) == first_messages + [
        _message("u5", "m21", "c2", "2026-11-04T11:00:00.000000Z"),
        _message("u5", "m23", "c2", "2026-11-04T11:00:00.000000Z"),
    ]


def test_replayed_batch_changes_nothing(spark, kafka_lake):
    _setup_history(spark, kafka_lake)
    uploads, _, table = _paths(kafka_lake)
    conf = NotificationConf.from_settings(kafka_lake.settings)
    ensure_tables(spark, conf)
    batch = spark.read.format("delta").load(uploads)
    process_batch(batch, 0, conf)
    expected = notifications_df(spark, [
        ("u1", "m10", "c1", "2026-11-03 10:00:00"), ("u5", "m19", "c2", "2026-11-04 08:00:00"),
    ])
    assertDataFrameEqual(spark.read.format("delta").load(table), expected)
    messages = _consume(kafka_lake)
    assert [key for key, _ in messages] == ["u1", "u5"]

    process_batch(batch, 0, conf)
    assertDataFrameEqual(spark.read.format("delta").load(table), expected)
    assert _consume(kafka_lake) == messages


def test_no_sessions_table_means_no_fans(spark, lake):
    _append_uploads(spark, lake, [("e10", "m10", "c1", "2026-11-03 10:00:00")])
    uploads, sessions, table = _paths(lake)
    conf = NotificationConf.from_settings(lake.settings)
    process_batch(spark.read.format("delta").load(uploads), 0, conf)
    assert not table_exists(spark, sessions)
    assert not table_exists(spark, table)
