"""Bronze against a real broker: every record once, byte-identical, across a SIGKILL."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from helpers import delta_rows, delta_versions, produce, sigkill_stream
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from pipelines.bronze import to_bronze
from pipelines.runtime.runner import run_layers

N_RECORDS = 10_000


def _produce(lake, n: int) -> collections.Counter:
    """Send n records spread over the source topics: JSON, not JSON, not ASCII, bytes
    that are not UTF-8 at all, empty values and keys, no key."""
    topics = lake.settings.kafka.source_topics
    records = []
    for i in range(n):
        topic = topics[i % len(topics)]
        value = (f'{{"i": {i}, "text": "caf\u00e9 \u266b {i}"}}'.encode() if i % 7
                 else f"not json {i} \t".encode())
        if i % 11 == 0:
            value = b"\xff\xfe\xc3(" + i.to_bytes(4, "big") + b"\x00\xed\xa0\x80"
        key = None if i % 13 == 0 else (b"" if i % 17 == 0 else f"k{i % 97}\x80".encode("latin-1"))
        records.append((topic, key, b"" if i % 19 == 0 else value))
    produce(lake.settings.kafka.bootstrap, records)
    return collections.Counter(records)


def _bronze_rows(lake) -> list[dict]:
    return delta_rows(lake, "bronze", "events", ["topic", "partition", "offset", "key", "value"])


def _assert_exactly(sent: collections.Counter, rows: list[dict]) -> None:
    """Every record once, its key and value the bytes that were sent (read back with
    the independent Rust reader)."""
    assert len(rows) == sum(sent.values())
    coords = {(r["topic"], r["partition"], r["offset"]) for r in rows}
    assert len(coords) == len(rows), "a (topic, partition, offset) appears twice"
    assert collections.Counter((r["topic"], r["key"], r["value"]) for r in rows) == sent


def test_to_bronze_keeps_raw_value_and_coordinates(spark) -> None:
    schema = T.StructType([
        T.StructField("key", T.BinaryType()), T.StructField("value", T.BinaryType()),
        T.StructField("topic", T.StringType()), T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()), T.StructField("timestamp", T.TimestampType()),
    ])
    raw = spark.createDataFrame(
        [(b"u1", b'{"a": 1}  ', "t", 0, 5, None), (None, b"\xe2\x99\xab", "t", 1, 7, None),
         (b"\xff", b"\xc3\x28", "t", 1, 8, None)], schema
    )
    out = raw.transform(to_bronze)
    assert out.columns == ["topic", "partition", "offset", "kafka_timestamp", "key", "value",
                           "ingested_at", "ingest_date"]
    assert out.schema["key"].dataType == T.BinaryType()
    assert out.schema["value"].dataType == T.BinaryType()
    assertDataFrameEqual(
        out.select("topic", "partition", "offset", "key", "value"),
        [("t", 0, 5, bytearray(b"u1"), bytearray(b'{"a": 1}  ')),
         ("t", 1, 7, None, bytearray(b"\xe2\x99\xab")),
         ("t", 1, 8, bytearray(b"\xff"), bytearray(b"\xc3\x28"))],
    )
    assert out.filter(F.col("ingest_date") != F.to_date("ingested_at")).count() == 0


@pytest.mark.slow
def test_bronze_ingests_every_record_exactly_once(spark, kafka_lake) -> None:
    sent = _produce(kafka_lake, N_RECORDS)
    run_layers(spark, kafka_lake.settings, ["bronze"], available_now=True)
    _assert_exactly(sent, _bronze_rows(kafka_lake))
    # A second run with nothing new adds nothing.
    run_layers(spark, kafka_lake.settings, ["bronze"], available_now=True)
    assert len(_bronze_rows(kafka_lake)) == N_RECORDS


@pytest.mark.slow
def test_bronze_survives_sigkill_mid_run(spark, kafka_lake) -> None:
    sent = _produce(kafka_lake, N_RECORDS)
    # Small batches so the kill lands between commits of a multi-batch run.
    small = {"LAKEHOUSE_STREAMING__MAX_OFFSETS_PER_TRIGGER": "400"}
    lake = type(kafka_lake)(kafka_lake.settings, {**kafka_lake.env, **small})
    table = Path(lake.settings.lakehouse.table_path("bronze", "events"))
    sigkill_stream(lake, "bronze", lambda: delta_versions(table) >= 4, poll_s=0.2)
    partial = len(_bronze_rows(lake))
    assert 0 < partial < N_RECORDS, "the kill should land mid-run"
    # The restart (another process: this one) replays the interrupted batch as logged,
    # then drains the rest at the default batch size.
    run_layers(spark, kafka_lake.settings, ["bronze"], available_now=True)
    _assert_exactly(sent, _bronze_rows(lake))
