"""A simulated stream as silver rows, without Kafka or the streams: what the
recommendation tests and benchmarks train on. The rows are those silver writes for
the valid records (duplicates and bad records left out), with made-up coordinates."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import SparkSession

from pipelines.gold.transforms import sessionize
from pipelines.schemas.registry import classify
from pipelines.settings import Settings
from pipelines.silver.tables import silver_schema
from pipelines.simulate.generator import generate


def silver_rows(settings: Settings, events: int, seed: int) -> dict[str, list[tuple]]:
    """The valid user actions and content uploads of a simulated stream, as
    silver.user_actions and silver.content_uploads rows (by event type)."""
    limit = settings.streaming.max_record_bytes
    rows: dict[str, list[tuple]] = {"user_action": [], "content_upload": []}
    for offset, record in enumerate(generate(settings.simulate, events, seed, limit)):
        if record.kind != "valid" or record.event_type not in rows:
            continue
        verdict = classify(record.event_type, record.value, limit)
        e = verdict.event
        assert e is not None  # a valid record classifies
        at = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        source = (verdict.schema_version, f"media.{record.topic_kind}", 0,
                  offset + seed * 10_000_000, at, at.date())  # fmt: skip
        if record.event_type == "user_action":
            rows["user_action"].append((
                e["eventId"], e["userId"], e["action"], at, e["mediaId"], e.get("sessionId"),
                e.get("positionMs"), e["device"], *source,
            ))  # fmt: skip
        else:
            rows["content_upload"].append((
                e["eventId"], e["mediaId"], e["creatorId"], at, e.get("title"), e.get("genre"),
                e.get("durationMs"), *source,
            ))  # fmt: skip
    return rows


def write_inputs(spark: SparkSession, settings: Settings, rows: dict[str, list[tuple]]) -> None:
    """Append actions to silver.user_actions, uploads to silver.content_uploads and the
    actions' sessions to gold.playback_sessions (gold's `sessionize` over these
    actions alone)."""
    actions = spark.createDataFrame(rows["user_action"], silver_schema("user_action"))
    actions.write.format("delta").mode("append").partitionBy("event_date").save(
        settings.lakehouse.table_path("silver", "user_actions")
    )
    if rows.get("content_upload"):
        uploads = spark.createDataFrame(rows["content_upload"], silver_schema("content_upload"))
        uploads.write.format("delta").mode("append").partitionBy("event_date").save(
            settings.lakehouse.table_path("silver", "content_uploads")
        )
    sessionize(actions, settings.gold.session_gap).write.format("delta").mode("append").save(
        settings.lakehouse.table_path("gold", "playback_sessions")
    )
