"""The yardsticks of the ingest scenario, outside Spark.

- `consumer_performance`: Kafka's own `ConsumerPerformance` tool (kafka-tools, on the
  embedded broker's classpath) reading the topics: the most a consumer gets from this
  broker on this machine.
- `python_peer`: what a small team would write instead of a Spark bronze job: a
  kafka-python consumer appending every record to a Delta table with `deltalake`
  (the Rust writer), committing every `commit_every` records. No exactly-once, no
  schema: a raw copy, the same work as bronze.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake
from kafka import KafkaConsumer, TopicPartition

# ConsumerPerformance's CSV line (Kafka 4.x, with --hide-header).
_PERF_FIELDS = ("start", "end", "mb", "mb_per_s", "messages", "messages_per_s",
                "rebalance_ms", "fetch_ms", "fetch_mb_per_s", "fetch_messages_per_s")


def consumer_performance(
    classpath: str, bootstrap: str, counts: dict[str, int], timeout_ms: int = 120_000
) -> dict[str, Any]:
    """Run ConsumerPerformance once per topic of `counts` (topic -> records it holds)
    and add them up: records, seconds (its own measure, consumer start included) and
    fetch-only seconds."""
    records = seconds = fetch_seconds = 0.0
    for topic, n in counts.items():
        if not n:
            continue
        out = subprocess.run(
            ["java", "-Xmx512m", "-cp", classpath, "org.apache.kafka.tools.ConsumerPerformance",
             "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(n),
             "--timeout", str(timeout_ms), "--hide-header"],
            capture_output=True, text=True, check=True,
        ).stdout
        line = [x for x in out.splitlines() if x.count(",") == len(_PERF_FIELDS) - 1][-1]
        row = dict(zip(_PERF_FIELDS, (x.strip() for x in line.split(",")), strict=True))
        got = float(row["messages"])
        records += got
        seconds += got / float(row["messages_per_s"])
        fetch_seconds += float(row["fetch_ms"]) / 1000
    return {
        "records": int(records),
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds),
        "fetch_only_records_per_s": round(records / fetch_seconds),
    }


def _table(rows: dict[str, list]) -> pa.Table:
    return pa.table({
        "topic": pa.array(rows["topic"], pa.string()),
        "partition": pa.array(rows["partition"], pa.int32()),
        "offset": pa.array(rows["offset"], pa.int64()),
        "timestamp": pa.array(rows["timestamp"], pa.timestamp("ms", tz="UTC")),
        "key": pa.array(rows["key"], pa.binary()),
        "value": pa.array(rows["value"], pa.binary()),
    })


def python_peer(
    bootstrap: str, topics: list[str], path: str, commit_every: int = 200_000
) -> dict[str, Any]:
    """Copy every record the `topics` hold now into a Delta table at `path`; returns
    records, seconds (the whole process of copying: consumer start to last commit) and
    commits."""
    started = time.monotonic()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    partitions = [TopicPartition(t, p) for t in topics
                  for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = {tp: end for tp, end in consumer.end_offsets(partitions).items() if end}
    columns = ("topic", "partition", "offset", "timestamp", "key", "value")
    rows: dict[str, list] = {c: [] for c in columns}
    records = commits = 0

    def commit() -> None:
        nonlocal rows, commits
        write_deltalake(path, _table(rows), mode="append")
        rows = {c: [] for c in columns}
        commits += 1

    done: set[TopicPartition] = set()
    while len(done) < len(ends):
        for tp, messages in consumer.poll(timeout_ms=1000, max_records=50_000).items():
            for m in messages:
                rows["topic"].append(m.topic)
                rows["partition"].append(m.partition)
                rows["offset"].append(m.offset)
                rows["timestamp"].append(m.timestamp)  # ms since the epoch
                rows["key"].append(m.key)
                rows["value"].append(m.value)
            records += len(messages)
            if messages and messages[-1].offset + 1 >= ends.get(tp, 0):
                done.add(tp)
        if len(rows["offset"]) >= commit_every:
            commit()
    if rows["offset"]:
        commit()
    consumer.close()
    seconds = time.monotonic() - started
    return {"records": records, "seconds": round(seconds, 1),
            "records_per_s": round(records / seconds), "commits": commits,
            "commit_every": commit_every}
