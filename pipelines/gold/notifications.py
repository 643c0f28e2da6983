"""Gold: notify the fans of a creator when the creator uploads (gold.notifications and
the `notifications` Kafka topic).

A *fan* of creator C at time T is a user with completed playback sessions of C's
media on at least `notifications.fan_min_days` distinct days (the UTC date of
`session_end`), counting only sessions that ended before T. Which media belong to
C comes from silver.content_uploads. Each content upload (silver stream) at time T
yields one notification per fan of its creator, with `created_at = T` (the upload's
`event_time`, so a replay computes the same row).

Rules, in the order they are applied:
1. Never two notifications for one (`user_id`, `media_id`), across batches and
   restarts: `notification_id` is `sha2(user_id|media_id)` and the table is written
   with an insert-only MERGE on it. A media uploaded twice notifies once, from the
   earliest upload.
2. At most `notifications.max_per_user_per_day` per user per UTC day of
   `created_at`, counting the notifications already in the table for that day.
   Within a batch the earliest `created_at` wins, then the smallest `media_id`.
   Across batches the earlier batch wins: a late upload does not displace a
   notification already sent.

Delivery: each micro-batch computes its new rows (anti-join with the table), sends
them to Kafka (acks=all, flush, every send checked) FIRST, then MERGEs them into
gold. A crash between the two resends the batch's notifications on replay, so the
topic is at-least-once with `notificationId` as the consumers' idempotency key,
while gold.notifications is exactly-once. (A replay recomputes against the tables
as they are then; should playback sessions have changed meanwhile, the topic may
hold a notification that the table never records.)

`reason` is the literal `REASON` below; it is part of the published contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from delta.tables import DeltaTable
from kafka import KafkaProducer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipelines import catalog
from pipelines.io.delta import ensure_table, merge_insert_new, table_exists
from pipelines.io.streams import read_delta_stream, start_stream
from pipelines.schemas.registry import latest_version
from pipelines.settings import Settings
from pipelines.silver.tables import ensure_silver_table

TABLE = catalog.GOLD_NOTIFICATIONS
QUERY_NAME = "gold_notifications"
SESSIONS = catalog.GOLD_PLAYBACK_SESSIONS
UPLOADS = catalog.SILVER_CONTENT_UPLOADS
COMPLETED = "completed"
REASON = "new upload from a creator you watch"
EVENT_TYPE = "notification"

SCHEMA = T.StructType([
    T.StructField("notification_id", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("media_id", T.StringType(), False),
    T.StructField("creator_id", T.StringType(), False),
    T.StructField("reason", T.StringType(), False),
    T.StructField("created_at", T.TimestampType(), False),
])


def fans(
    completed_sessions: DataFrame, media_creators: DataFrame, uploads: DataFrame, min_days: int
) -> DataFrame:
    """Candidate notifications: (`user_id`, `media_id`, `creator_id`, `created_at`) for
    every upload and every fan its creator had at the upload's `event_time`.

    `completed_sessions` are gold.playback_sessions rows; any whose `outcome` is not
    'completed' are ignored, so the whole table may be passed. `media_creators` maps
    `media_id` -> `creator_id` (silver.content_uploads); `uploads` are silver
    content uploads.
    """
    watched = (
        completed_sessions.filter(F.col("outcome") == COMPLETED)
        .join(
            media_creators.select("media_id", "creator_id").distinct(),
            on="media_id",
            how="inner",
        )
        .select(
            F.col("user_id"),
            F.col("creator_id").alias("watched_creator_id"),
            F.col("session_end"),
        )
    )
    new_media = uploads.select(
        F.col("media_id"), F.col("creator_id"), F.col("event_time").alias("created_at")
    )
    ended_before_upload = F.col("session_end") < F.col("created_at")
    return (
        new_media.join(
            watched,
            on=(F.col("creator_id") == F.col("watched_creator_id")) & ended_before_upload,
            how="inner",
        )
        .groupBy("user_id", "media_id", "creator_id", "created_at")
        .agg(F.countDistinct(F.to_date("session_end")).alias("days"))
        .filter(F.col("days") >= min_days)
        .select("user_id", "media_id", "creator_id", "created_at")
    )


def notification_id(user_id: F.Column, media_id: F.Column) -> F.Column:
    """Deterministic id of the one notification a (user, media) may ever get."""
    return F.sha2(F.concat_ws("|", user_id, media_id), 256)


def select_notifications(candidates: DataFrame, existing: DataFrame, max_per_day: int) -> DataFrame:
    """The candidates (`fans` output) that become new notifications, in the table's schema.

    Drops (user, media) pairs already notified in `existing` (gold.notifications) or
    repeated among the candidates (the earliest upload stays), then keeps per user
    and UTC day of `created_at` only as many as `max_per_day` minus the
    notifications `existing` already holds for that day, earliest `created_at` first,
    then smallest `media_id`.
    """
    day = F.to_date("created_at")
    earliest_upload = Window.partitionBy("user_id", "media_id").orderBy(
        "created_at", "creator_id"
    )
    unseen = (
        candidates.withColumn("_n", F.row_number().over(earliest_upload))
        .filter(F.col("_n") == 1)
        .join(existing.select("user_id", "media_id"), on=["user_id", "media_id"], how="left_anti")
        .withColumn("day", day)
    )
    already_that_day = existing.groupBy("user_id", day.alias("day")).agg(
        F.count(F.lit(1)).alias("_used")
    )
    in_day_order = Window.partitionBy("user_id", "day").orderBy("created_at", "media_id")
    return (
        unseen.join(already_that_day, on=["user_id", "day"], how="left")
        .withColumn("_rank", F.row_number().over(in_day_order))
        .filter(F.col("_rank") <= F.lit(max_per_day) - F.coalesce(F.col("_used"), F.lit(0)))
        .select(
            notification_id(F.col("user_id"), F.col("media_id")).alias("notification_id"),
            F.col("user_id"),
            F.col("media_id"),
            F.col("creator_id"),
            F.lit(REASON).alias("reason"),
            F.col("created_at"),
        )
    )


def to_messages(notifications: DataFrame) -> DataFrame:
    """Notifications -> Kafka `key` (userId) and `value` (schemas/notification JSON)."""
    # XXX renders a zero offset as `Z`: RFC 3339 whatever the session time zone is.
    created_at = F.date_format("created_at", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    value = F.to_json(
        F.struct(
            F.lit(latest_version(EVENT_TYPE)).alias("schemaVersion"),
            F.col("notification_id").alias("notificationId"),
            F.col("user_id").alias("userId"),
            F.col("media_id").alias("mediaId"),
            F.col("creator_id").alias("creatorId"),
            F.col("reason"),
            created_at.alias("createdAt"),
        )
    )
    return notifications.select(F.col("user_id").alias("key"), value.alias("value"))


def publish(
    bootstrap: str, topic: str, messages: list[tuple[str, str]], timeout_s: float
) -> None:
    """Send (key, value) pairs and return only once the broker has acknowledged all.

    Delivery must be confirmed before the MERGE: a broker that stays away `timeout_s`
    fails the batch, which Spark then retries from the checkpoint."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = [
            producer.send(topic, key=key.encode("utf-8"), value=value.encode("utf-8"))
            for key, value in messages
        ]
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=timeout_s)  # raises the send's error, failing the batch
    finally:
        producer.close()


@dataclass(frozen=True)
class NotificationConf:
    """What the job needs, as plain values: table paths, the topic and the rules."""

    table_path: str
    uploads_path: str
    sessions_path: str
    bootstrap: str
    topic: str
    fan_min_days: int
    max_per_day: int
    send_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> NotificationConf:
        return cls(
            table_path=TABLE.path(settings),
            uploads_path=UPLOADS.path(settings),
            sessions_path=SESSIONS.path(settings),
            bootstrap=settings.kafka.bootstrap,
            topic=settings.kafka.topics["notifications"].name,
            fan_min_days=settings.notifications.fan_min_days,
            max_per_day=settings.notifications.max_per_user_per_day,
            send_timeout_s=settings.notifications.send_timeout_s,
        )


def ensure_tables(spark: SparkSession, conf: NotificationConf) -> None:
    """Create gold.notifications (and an empty silver source) if missing, once before
    the stream: started beside silver, this job may come first, and an empty source
    lets the stream begin instead of failing on a missing path."""
    ensure_silver_table(spark, conf.uploads_path, "content_upload")
    ensure_table(spark, conf.table_path, spark.createDataFrame([], SCHEMA), TABLE)


def process_batch(uploads: DataFrame, batch_id: int, conf: NotificationConf) -> None:
    """foreachBatch body of `gold_notifications` (tables made by `ensure_tables`): new
    notifications -> Kafka, then gold."""
    spark = uploads.sparkSession
    # No sessions table yet means nobody has completed anything: no fans.
    if uploads.isEmpty() or not table_exists(spark, conf.sessions_path):
        return
    target = DeltaTable.forPath(spark, conf.table_path)
    candidates = fans(
        spark.read.format("delta").load(conf.sessions_path),
        spark.read.format("delta").load(conf.uploads_path),
        uploads,
        conf.fan_min_days,
    )
    # Materialised once so that what is sent is exactly what is merged, even if the
    # sessions table moves on while this batch runs.
    new = select_notifications(candidates, target.toDF(), conf.max_per_day).localCheckpoint()
    messages = (
        new.orderBy("created_at", "media_id", "user_id").transform(to_messages).collect()
    )
    if not messages:
        return
    publish(
        conf.bootstrap,
        conf.topic,
        [(m["key"], m["value"]) for m in messages],
        conf.send_timeout_s,
    )
    merge_insert_new(target, new, TABLE.keys)


def start(spark: SparkSession, settings: Settings, available_now: bool) -> list[StreamingQuery]:
    conf = NotificationConf.from_settings(settings)
    ensure_tables(spark, conf)
    uploads = read_delta_stream(spark, conf.uploads_path, settings.streaming)
    return [start_stream(
        settings, QUERY_NAME, uploads, partial(process_batch, conf=conf),
        available_now=available_now,
    )]
