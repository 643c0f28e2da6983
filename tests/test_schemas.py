"""Event contracts: schema files, derived Spark types, classify() and upcasting."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime

import fastavro
import pytest
from pyspark.sql import types as T

from pipelines.schemas import registry
from pipelines.schemas.registry import (
    classify,
    event_types,
    latest_version,
    load_avro,
    load_schema,
    spark_schema,
    upcast,
    v1_event_id,
    versions,
)
from pipelines.settings import load_settings
from pipelines.simulate.generator import generate

# Written out here on purpose: changing the namespace would re-key every v1 event.
NAMESPACE = uuid.UUID("6f1c2b8e-3d4a-5e9f-8a7b-0c1d2e3f4a5b")
LIMIT = 16384
V2_ID = "0d6f3c1e-9b1a-4c2e-8f00-5a6b7c8d9e0f"


def raw(payload: object) -> bytes:
    return json.dumps(payload).encode()


def v1(**changes: object) -> dict:
    base = {"userId": "u-1", "action": "play", "timestamp": "2026-11-01T20:00:00.250Z",
            "mediaId": "m-1"}  # fmt: skip
    base.update(changes)
    return base


def v2(**changes: object) -> dict:
    base = {"schemaVersion": 2, "eventId": V2_ID, "userId": "u-1", "action": "seek",
            "timestamp": "2026-11-01T20:00:00Z", "mediaId": "m-1", "sessionId": "s-1",
            "positionMs": 1200, "device": "tv"}  # fmt: skip
    base.update(changes)
    return base


def test_registry_lists_every_event_type_and_version() -> None:
    assert event_types() == ["content_upload", "notification", "system_event", "user_action"]
    assert versions("user_action") == [1, 2]
    assert latest_version("user_action") == 2
    assert [versions(e) for e in ("content_upload", "system_event", "notification")] == [
        [1],
        [1],
        [1],
    ]
    with pytest.raises(ValueError, match="unknown event type"):
        versions("clicks")


def test_user_action_v1_is_exactly_the_production_contract() -> None:
    assert load_schema("user_action", 1) == {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "UserActionEvent",
        "type": "object",
        "properties": {
            "userId": {"type": "string"},
            "action": {"type": "string", "enum": ["play", "pause", "skip"]},
            "timestamp": {"type": "string", "format": "date-time"},
            "mediaId": {"type": "string"},
        },
        "required": ["userId", "action", "timestamp", "mediaId"],
    }


def test_load_schema_returns_a_copy() -> None:
    load_schema("user_action", 2)["properties"].clear()
    assert "eventId" in load_schema("user_action", 2)["properties"]


def _f(name: str, dtype: T.DataType, nullable: bool) -> T.StructField:
    return T.StructField(name, dtype, nullable)


S, L, D, TS = T.StringType(), T.LongType(), T.DoubleType(), T.TimestampType()


@pytest.mark.parametrize(
    ("event_type", "version", "expected"),
    [
        ("user_action", 1, T.StructType([
            _f("userId", S, False), _f("action", S, False), _f("timestamp", TS, False),
            _f("mediaId", S, False),
        ])),
        ("user_action", None, T.StructType([
            _f("schemaVersion", L, False), _f("eventId", S, False), _f("userId", S, False),
            _f("action", S, False), _f("timestamp", TS, False), _f("mediaId", S, False),
            _f("sessionId", S, True), _f("positionMs", L, True), _f("device", S, True),
        ])),
        ("content_upload", None, T.StructType([
            _f("schemaVersion", L, False), _f("eventId", S, False), _f("mediaId", S, False),
            _f("creatorId", S, False), _f("timestamp", TS, False), _f("title", S, True),
            _f("genre", S, True), _f("durationMs", L, True),
        ])),
        ("system_event", None, T.StructType([
            _f("schemaVersion", L, False), _f("eventId", S, False), _f("host", S, False),
            _f("service", S, False), _f("kind", S, False), _f("timestamp", TS, False),
            _f("status", S, True), _f("cpuPct", D, True), _f("memoryPct", D, True),
            _f("instances", L, True),
        ])),
        ("notification", None, T.StructType([
            _f("schemaVersion", L, False), _f("notificationId", S, False),
            _f("userId", S, False), _f("mediaId", S, False), _f("creatorId", S, False),
            _f("reason", S, False), _f("createdAt", TS, False),
        ])),
    ],
)  # fmt: skip
def test_spark_schema_is_derived_from_json_schema(
    event_type: str, version: int | None, expected: T.StructType
) -> None:
    assert spark_schema(event_type, version) == expected


def test_v1_upcast_to_v2_with_deterministic_id() -> None:
    payload = v1(timestamp="2026-11-01T21:00:00.250+01:00")
    expected_id = str(uuid.uuid5(NAMESPACE, "u-1|m-1|play|2026-11-01T21:00:00.250+01:00"))
    assert v1_event_id(payload) == expected_id
    assert upcast("user_action", payload, 1) == {
        "schemaVersion": 2,
        "eventId": expected_id,
        "userId": "u-1",
        "action": "play",
        "timestamp": "2026-11-01T21:00:00.250+01:00",
        "mediaId": "m-1",
        "sessionId": None,
        "positionMs": None,
        "device": "unknown",
    }
    assert payload == v1(timestamp="2026-11-01T21:00:00.250+01:00")  # input untouched
    assert upcast("user_action", v2(), 2) == v2()


def test_classify_v1_normalises_time_and_keeps_received_version() -> None:
    verdict = classify("user_action", raw(v1(timestamp="2026-11-01T21:00:00.25+01:00")), LIMIT)
    expected_id = str(uuid.uuid5(NAMESPACE, "u-1|m-1|play|2026-11-01T21:00:00.25+01:00"))
    assert verdict == registry.Verdict(
        "user_action",
        None,
        None,
        1,
        {
            "schemaVersion": 2,
            "eventId": expected_id,
            "userId": "u-1",
            "action": "play",
            "timestamp": "2026-11-01T20:00:00.250000Z",
            "mediaId": "m-1",
            "sessionId": None,
            "positionMs": None,
            "device": "unknown",
        },
    )


def test_same_v1_event_twice_gets_one_id_and_another_time_another() -> None:
    first = classify("user_action", raw(v1()), LIMIT).event
    again = classify("user_action", raw(v1()).decode(), LIMIT).event
    later = classify("user_action", raw(v1(timestamp="2026-11-01T20:00:00.251Z")), LIMIT).event
    assert first["eventId"] == again["eventId"] != later["eventId"]


def test_classify_v2_passes_through_with_utc_micros() -> None:
    verdict = classify("user_action", raw(v2()), LIMIT)
    assert verdict.event == v2(timestamp="2026-11-01T20:00:00.000000Z")
    assert (verdict.error_code, verdict.schema_version) == (None, 2)


@pytest.mark.parametrize(
    ("payload", "code", "detail"),
    [
        (v1(action="rewind"), "schema_violation",
         "action: 'rewind' is not one of ['play', 'pause', 'skip']"),
        ({k: v for k, v in v1().items() if k != "userId"}, "schema_violation",
         "userId: required field missing"),
        (v1(timestamp="yesterday"), "schema_violation",
         "timestamp: 'yesterday' is not a date-time"),
        (v1(timestamp="2026-11-01T20:00:00"), "schema_violation",
         "timestamp: '2026-11-01T20:00:00' is not a date-time"),
        (v1(timestamp="2026-02-30T20:00:00Z"), "schema_violation",
         "timestamp: '2026-02-30T20:00:00Z' is not a date-time"),
        # Valid RFC 3339, but before year 1 in UTC: used to crash the classifier.
        (v1(timestamp="0001-01-01T00:30:00+01:00"), "schema_violation",
         "timestamp: '0001-01-01T00:30:00+01:00' is not a date-time"),
        (v1(action="seek"), "schema_violation",
         "action: 'seek' is not one of ['play', 'pause', 'skip']"),
        (v1(userId=42), "schema_violation", "userId: expected string, found integer 42"),
        (v2(positionMs=-5), "schema_violation", "positionMs: -5 is below the minimum 0"),
        (v2(eventId=7), "schema_violation", "eventId: expected string, found integer 7"),
        (v2(device="fridge"), "schema_violation",
         "device: 'fridge' is not one of ['web', 'ios', 'android', 'tv', 'other']"),
        (v2(sessionId=None), "schema_violation", "sessionId: expected string, found null None"),
        (v2(schemaVersion="2"), "schema_violation",
         "schemaVersion: expected integer, found string '2'"),
        (v2(schemaVersion=True), "schema_violation",
         "schemaVersion: expected integer, found boolean True"),
        (v2(schemaVersion=3), "unknown_version",
         "schemaVersion: 3 is not a known version of user_action (known: [1, 2])"),
        (v2(positionMs=-1, device="car"), "schema_violation",
         "device: 'car' is not one of ['web', 'ios', 'android', 'tv', 'other']; "
         "positionMs: -1 is below the minimum 0"),
        ([v1()], "invalid_json", "expected a JSON object, found array"),
    ],
)  # fmt: skip
def test_classify_says_which_field_and_what_was_expected(
    payload: object, code: str, detail: str
) -> None:
    verdict = classify("user_action", raw(payload), LIMIT)
    assert (verdict.error_code, verdict.error_detail, verdict.event) == (code, detail, None)


def test_classify_other_event_types() -> None:
    upload = {"schemaVersion": 1, "eventId": V2_ID, "mediaId": "m-9", "creatorId": "c-1",
              "timestamp": "2026-11-01T20:00:00Z", "durationMs": -1}  # fmt: skip
    assert classify("content_upload", raw(upload), LIMIT).error_detail == (
        "durationMs: -1 is below the minimum 0"
    )
    status = {"schemaVersion": 1, "eventId": V2_ID, "host": "api-01", "service": "api",
              "kind": "server_status", "timestamp": "2026-11-01T20:00:00Z",
              "cpuPct": 120.5}  # fmt: skip
    assert classify("system_event", raw(status), LIMIT).error_detail == (
        "cpuPct: 120.5 is above the maximum 100"
    )
    del status["schemaVersion"], status["cpuPct"]
    assert classify("system_event", raw(status), LIMIT).error_detail == (
        "schemaVersion: required field missing"
    )


def test_classify_order_and_raw_errors() -> None:
    big = raw(v1(note="x" * 200))
    assert classify("user_action", big, 100).error_code == "oversize"
    assert classify("user_action", big, 100).error_detail == (
        f"record is {len(big)} bytes, the limit is 100"
    )
    # oversize wins over invalid JSON: the size check is the cheap one.
    assert classify("user_action", b"{" * 200, 100).error_code == "oversize"
    truncated = classify("user_action", raw(v1())[:20], LIMIT)
    assert truncated.error_code == "invalid_json"
    assert truncated.error_detail.startswith("not JSON: Unterminated string")
    assert classify("user_action", b'{"userId": "\xc3\x28"}', LIMIT).error_detail.startswith(
        "not UTF-8: 'utf-8' codec can't decode byte 0xc3"
    )
    assert classify("user_action", None, LIMIT).error_code == "invalid_json"
    # A size in characters would pass; bytes are what Kafka and the limit count.
    accented = json.dumps(v1(userId="é" * 40), ensure_ascii=False)
    limit = len(accented) + 10
    assert len(accented.encode()) == len(accented) + 40
    assert classify("user_action", accented, limit).error_code == "oversize"
    assert classify("user_action", accented, limit + 30).error_code is None


def _avro_type(field_type: object) -> tuple[bool, object]:
    """(nullable, the non-null type) of an Avro field type."""
    if isinstance(field_type, list):
        non_null = [t for t in field_type if t != "null"]
        assert len(non_null) == 1
        return True, non_null[0]
    return False, field_type


def _expected_avro(prop: dict) -> object:
    if "enum" in prop:
        return ("enum", prop["enum"])
    if prop.get("format") == "date-time":
        return ("long", "timestamp-micros")
    if "pattern" in prop:
        return ("string", "uuid")
    return {"integer": "long", "number": "double", "string": "string"}[prop["type"]]


def _actual_avro(avro: object) -> object:
    if isinstance(avro, dict) and avro["type"] == "enum":
        return ("enum", avro["symbols"])
    if isinstance(avro, dict):
        return (avro["type"], avro["logicalType"])
    return avro


ALL_VERSIONS = [(e, v) for e in event_types() for v in versions(e)]


@pytest.mark.parametrize(("event_type", "version"), ALL_VERSIONS)
def test_avro_agrees_with_json_schema(event_type: str, version: int) -> None:
    schema, avro = load_schema(event_type, version), load_avro(event_type, version)
    fastavro.parse_schema(avro)
    assert [f["name"] for f in avro["fields"]] == list(schema["properties"])
    for f in avro["fields"]:
        nullable, avro_type = _avro_type(f["type"])
        assert nullable == (f["name"] not in schema["required"]), f["name"]
        assert ("default" in f and f["default"] is None) == nullable, f["name"]
        assert _actual_avro(avro_type) == _expected_avro(schema["properties"][f["name"]])


def _to_avro_values(event: dict, event_type: str) -> dict:
    fields = registry._date_time_fields(event_type, latest_version(event_type))
    return {k: datetime.fromisoformat(v) if k in fields else v for k, v in event.items()}


def test_fastavro_round_trips_generated_events() -> None:
    settings = load_settings()
    seen: dict[str, dict] = {}
    for record in generate(settings.simulate, 3000, 5, LIMIT):
        verdict = classify(record.event_type, record.value, LIMIT)
        if record.kind == "valid" and verdict.event.get("device") != "unknown":
            seen.setdefault(record.event_type, verdict.event)
    assert sorted(seen) == ["content_upload", "system_event", "user_action"]
    for event_type, event in seen.items():
        avro = fastavro.parse_schema(load_avro(event_type, latest_version(event_type)))
        values = _to_avro_values(event, event_type)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, avro, values)
        buffer.seek(0)
        back = fastavro.schemaless_reader(buffer, avro)
        back["eventId"] = str(back["eventId"])  # the uuid logical type reads back as UUID
        assert back == {k: values.get(k) for k in back}
        assert set(values) <= set(back)


@pytest.mark.parametrize("value", [
    "2026-11-27T12:00:00Z", "2026-11-27T12:00:00.1Z", "2026-11-27T12:00:00.123Z",
    "2026-11-27T12:00:00.123456Z", "2026-11-27t12:00:00.5z", "2026-11-27T13:00:00+01:00",
    "2026-11-27T12:00:00.1234567Z", "2026-11-27T00:30:00.25-02:30",
])
def test_the_fast_normalisation_agrees_with_the_full_one(value: str) -> None:
    from pipelines.schemas.registry import _normalize_valid, normalize_timestamp

    assert _normalize_valid(value) == normalize_timestamp(value)
