"""The JVM fast path may only decline: every record it types, the Python classifier
accepts with the same version and the same silver row."""

from __future__ import annotations

import json

import pytest
from helpers import bronze_df
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.settings import load_settings
from pipelines.silver.classify import classify_records, to_events
from pipelines.silver.fastpath import fast_classify, fast_events, fast_versions, suspects
from pipelines.simulate.generator import generate

UA, CU, SE = "ua", "cu", "se"
TOPIC_TYPES = {UA: "user_action", CU: "content_upload", SE: "system_event"}
TOPIC_OF = {v: k for k, v in TOPIC_TYPES.items()}
MAX_BYTES = 1024
V2 = {"schemaVersion": 2, "eventId": "0b7e7f43-4a54-4c1f-9d8e-2f3a4b5c6d7e", "userId": "u2",
      "action": "seek", "timestamp": "2026-11-01T09:30:00.123Z", "mediaId": "m2",
      "sessionId": "s1", "positionMs": 1500, "device": "tv"}
V1 = {"userId": "u1", "action": "play", "timestamp": "2026-11-01T10:00:00Z", "mediaId": "m1"}
CU1 = {"schemaVersion": 1, "eventId": "1b7e7f43-4a54-4c1f-9d8e-2f3a4b5c6d7e", "mediaId": "m9",
       "creatorId": "c1", "timestamp": "2026-11-01T10:00:00Z", "title": "T", "genre": "drama",
       "durationMs": 0}
SE1 = {"schemaVersion": 1, "eventId": "2b7e7f43-4a54-4c1f-9d8e-2f3a4b5c6d7e", "host": "h1",
       "service": "api", "kind": "server_status", "timestamp": "2026-11-01T10:00:00Z",
       "status": "up", "cpuPct": 48.6, "memoryPct": 36.6}


def _compact(payload: object, **kwargs: object) -> str:
    return json.dumps(payload, separators=(",", ":"), **kwargs)


def _hand_made() -> list[tuple[str, bytes]]:
    """(topic, value bytes): edges of every keyword, of the round trip, and records
    Python's json reads but silver must not store as read."""
    ua = [
        _compact(V2), _compact(V1), json.dumps(V2),  # spaces
        _compact({k: V2[k] for k in reversed(V2)}),  # another key order
        "\ufeff" + _compact(V2),  # a byte-order mark: Python's json refuses it
        _compact(V2) + " ", _compact(V2) + " x", _compact(V2) + "{}",  # after the object
        _compact({**V2, "userId": "\U0001F600"}, ensure_ascii=False),  # 4 UTF-8 bytes
        _compact(V2).replace('"u2"', '"\\ud800"'),  # a lone one
        _compact(V2).replace('"u2"', '"\\ud83d\\ude00"'),  # a pair, escaped
        _compact(V2).replace('"userId"', '"\\u0075serId"'),  # an escaped key
        _compact({**V2, "positionMs": 0}).replace(':0,', ':-0,'),
        _compact({**V2, "positionMs": 2**63 - 1}), _compact({**V2, "positionMs": 2**63}),
        _compact({**V2, "sessionId": None}), _compact({**V2, "extra": 1}),
        _compact(V2)[:-1] + ',"userId":"u3"}',  # a duplicate key
        _compact({**V2, "userId": "Zoë"}), _compact({**V2, "userId": "Zoë"}, ensure_ascii=False),
        _compact({**V2, "userId": 'a"b\\c/d\n'}), _compact(V2).replace('"u2"', '"\\u0075\\/2"'),
        _compact({**V2, "positionMs": 5.0}), _compact({**V2, "positionMs": -1}),
        _compact({**V2, "positionMs": "5"}), _compact({**V2, "positionMs": 2**70}),
        _compact({**V2, "positionMs": True}), _compact({**V2, "userId": 7}),
        _compact({**V2, "userId": {"a": 1}}), _compact({**V2, "userId": ["a"]}),
        _compact({**V2, "schemaVersion": 2.0}), _compact({**V2, "schemaVersion": "2"}),
        _compact({**V2, "schemaVersion": 1}), _compact({**V2, "schemaVersion": 3}),
        _compact({"schemaVersion": 1, **V1}), _compact({**V1, "extra": "x"}),
        _compact({**V2, "action": "PLAY"}), _compact({**V1, "action": "seek"}),
        _compact({**V2, "device": "unknown"}), _compact({**V2, "eventId": V2["eventId"].upper()}),
        _compact({**V2, "eventId": V2["eventId"] + "\n"}), _compact({**V2, "eventId": "nope"}),
        "null", "[]", "", "{}", "{", '"text"', "1",
    ]
    for stamp in ["2026-11-01T09:30:00z", "2026-11-01t09:30:00Z", "2026-11-01T09:30:00+00:00",
                  "2026-11-01T09:30:00.1234567Z", "2026-11-01T09:30:00.5Z",
                  "2026-02-30T09:30:00Z", "2026-11-01T24:00:00Z", "2026-11-01T23:59:60Z",
                  "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                  "2026-11-01T09:30:00Z\n",
                  "2026-11-01T09:30:00.1+05:30", "2026-11-01T09:30:00-08:00",
                  "2026-11-01T09:30:00-00:00", "2026-11-01T09:30:00+23:59",
                  "2026-11-01T09:30:00+24:00", "2026-11-01T09:30:00+05:60",
                  "2026-11-01T09:30:00+99:00", "0001-01-01T00:30:00+01:00",
                  "9999-12-31T23:30:00-01:00", "2026-11-01 09:30:00Z", "2026-11-01T09:30Z", "x",
                  # Year 0 as written, year 1 in UTC: java.time reads it, Python does not.
                  "0000-12-31T23:30:00-01:00", "2026-11-01T09:30:00.Z",
                  "2026-11-01T09:30:00+18:00", "2026-11-01T09:30:00+18:01",
                  "2026-11-01T09:30:00+1:00", "2024-02-29T09:30:00Z",
                  "2026-11-01T09:30:00.000001-00:30"]:
        ua += [_compact({**V2, "timestamp": stamp}), _compact({**V1, "timestamp": stamp})]
    se = [_compact(SE1), _compact({**SE1, "cpuPct": 100}), _compact({**SE1, "cpuPct": 100.0}),
          _compact({**SE1, "cpuPct": 100.5}), _compact({**SE1, "cpuPct": -0.0}),
          _compact({**SE1, "cpuPct": 1e-05}), _compact({**SE1, "cpuPct": 1e2}),
          _compact(SE1).replace("48.6", "NaN"), _compact(SE1).replace("48.6", "4.86E1"),
          _compact(SE1).replace("48.6", "Infinity"), _compact(SE1).replace("48.6", "-Infinity"),
          _compact(SE1).replace("48.6", "1e400"), _compact(SE1).replace("48.6", "-1e400"),
          _compact({**SE1, "instances": 5.0}), _compact({**SE1, "instances": 1e300}),
          _compact({**SE1, "instances": 2**64}), _compact({**SE1, "instances": 2**53 + 1}),
          _compact(SE1)[:-1] + ',"cpuPct":1.5}', _compact(SE1)[:-1] + ',"host":"h1"}',
          _compact({**SE1, "instances": 3}), _compact({**SE1, "status": "gone"}),
          _compact({**SE1, "schemaVersion": 2})]
    cu = [_compact(CU1), _compact({**CU1, "durationMs": -5}), _compact({**CU1, "title": None}),
          _compact({**CU1, "title": "x" * (MAX_BYTES - 190)})]  # near and over the limit
    ua += [_compact(V2).replace('"userId"', '"\\ud800serId"'),  # a lone one in a key
           _compact(V2).replace('"u2"', '"\\udc00x"'), _compact(V2).replace('"u2"', '"\\ud800"')]

    def encoded(values: list[str]) -> list[bytes]:
        return [v.encode("utf-8") for v in values]

    # Bytes that are not UTF-8: Latin-1, a lone continuation byte, an overlong "/", a
    # surrogate encoded in three bytes (CESU-8), a code point above U+10FFFF, a cut
    # sequence at the end, and a valid record with one bad byte after it.
    not_utf8 = [_compact({**V2, "userId": "Zoë"}).encode("latin-1"), b'{"userId":"\x80"}',
                _compact(V2).replace('"u2"', '"\xc0\xaf"').encode("latin-1"),
                _compact(V2).encode().replace(b'"u2"', b'"\xed\xa0\x80"'),
                _compact(V2).encode().replace(b'"u2"', b'"\xf4\x90\x80\x80"'),
                _compact(V2).encode().replace(b'"u2"', b'"\xe2\x82"'),
                _compact(V2).encode() + b"\xff"]
    return ([(UA, v) for v in encoded(ua) + not_utf8] + [(SE, v) for v in encoded(se)]
            + [(CU, v) for v in encoded(cu)] + [("elsewhere", _compact(V2).encode())])


def _generated(count: int) -> list[tuple[str, bytes]]:
    settings = load_settings()
    records = generate(settings.simulate, count, 11, MAX_BYTES, shuffle=True)
    return [(TOPIC_OF[r.event_type], r.value) for r in records]


def _comparable(frame: DataFrame) -> DataFrame:
    """Timestamps as text: Python cannot hold 0001-01-01T00:00Z in local time, and the
    corpus has it on purpose."""
    return frame.select(*(
        F.col(f.name).cast("string") if isinstance(f.dataType, T.TimestampType) else f.name
        for f in frame.schema.fields
    ))


def test_fast_path_covers_every_version_with_a_sql_upcast() -> None:
    assert fast_versions("user_action") == (1, 2)
    assert fast_versions("content_upload") == (1,)
    assert fast_versions("system_event") == (1,)


def test_fast_path_agrees_with_the_python_classifier(spark) -> None:
    hand = _hand_made()
    rows = [(topic, 0, offset, value)
            for offset, (topic, value) in enumerate(hand + _generated(4_000))]
    bronze = bronze_df(spark, rows)
    fast = fast_classify(bronze, TOPIC_TYPES, MAX_BYTES).cache()
    classified = classify_records(bronze, TOPIC_TYPES, MAX_BYTES).cache()
    taken: set[int] = set()
    for event_type in sorted(set(TOPIC_TYPES.values())):
        by_fast = fast_events(fast, event_type).drop("processed_at")
        offsets = [r.source_offset for r in by_fast.select("source_offset").collect()]
        taken.update(offsets)
        by_python = (to_events(classified, event_type).drop("processed_at")
                     .filter(F.col("source_offset").isin(offsets)))
        # Every fast row is a Python-accepted row, identical column for column.
        assertDataFrameEqual(_comparable(by_fast), _comparable(by_python))
    suspect_offsets = {r.offset for r in suspects(fast).select("offset").collect()}
    assert suspect_offsets == set(range(len(rows))) - taken

    accepted = {offset for offset in range(len(hand)) if offset in taken}
    must_take = [_compact(V2), _compact(V1), _compact({**V2, "userId": "Zoë"}, ensure_ascii=False),
                 _compact({**V2, "userId": 'a"b\\c/d\n'}),
                 _compact({**V2, "timestamp": "2026-11-01T09:30:00.5Z"}),
                 _compact({**V1, "timestamp": "2026-11-01T09:30:00-08:00"}),
                 _compact({**V2, "timestamp": "2024-02-29T09:30:00Z"}),
                 _compact({**V1, "timestamp": "2026-11-01T09:30:00.000001-00:30"}),
                 _compact({**V2, "timestamp": "2026-11-01T09:30:00+18:00"}),
                 json.dumps(V2), _compact({k: V2[k] for k in reversed(V2)}),
                 _compact(V2).replace('"userId"', '"\\u0075serId"'),
                 _compact(SE1), _compact({**SE1, "cpuPct": 100.0}), _compact(CU1)]
    assert {hand.index((t, v.encode())) for t, v in zip(
        [UA] * 12 + [SE, SE, CU], must_take, strict=True)} <= accepted
    # The generated valid records (the bulk of real traffic) nearly all take it.
    generated_valid = classified.filter(
        f"error_code is null and offset >= {len(hand)}").count()
    assert len(taken - set(range(len(hand)))) >= 0.95 * generated_valid


def test_a_missing_project_jar_is_a_clear_error(spark, monkeypatch) -> None:
    """Without the project jar on the classpath (spark-submit without --jars), silver
    stops with the fix in the message, not with a py4j error."""
    import pipelines.silver.fastpath as fastpath

    monkeypatch.setattr(fastpath, "_JAVA_CLASS", "lakehouse.silver.NoSuchFastPath")
    bronze = bronze_df(spark, [(UA, 0, 0, _compact(V2).encode())])
    with pytest.raises(RuntimeError, match=r"not on Spark's classpath.*--project-jar"):
        fast_classify(bronze, TOPIC_TYPES, MAX_BYTES)
