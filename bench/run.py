"""`make bench`: throughput, memory and freshness on this machine.

    python -m bench.run [--records 1000000] [--only simulate,ingest,freshness]

Results go to bench/results/<scenario>.json (simulate, ingest, freshness; one
file per scenario, overwritten by the next run; git keeps the history, and
bench/HISTORY.md says in a few lines what changed the figures). Uses the embedded broker of
conf/local.yaml under a separate lakehouse root (bench/tmp).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
TMP = Path(__file__).parent / "tmp"


def _save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"{name}: {json.dumps(data)}")


def _settings(tag: str, extra: dict[str, str] | None = None):  # noqa: ANN202
    from pipelines.settings import load_settings

    env = {
        "LAKEHOUSE_ROOT": str(TMP / tag / "lake"),
        "LAKEHOUSE_SIMULATE__MANIFEST_DIR": str(TMP / tag / "manifests"),
        **(extra or {}),
    }
    for kind in ("user_actions", "content_uploads", "system_events", "notifications"):
        env[f"LAKEHOUSE_KAFKA__TOPICS__{kind.upper()}__NAME"] = f"bench.{tag}.{kind}"
    return load_settings(env={**os.environ, **env})


def _java_children() -> list[int]:
    """Pids of the java processes started by this Python process (the Spark driver)."""
    me = str(os.getpid())
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and fields.get("Name", "").strip() == "java":
            found.append(int(status.parent.name))
    return found


def _spark_peak_mb(broker_pid: int | None) -> list[int]:
    """Peak RSS (VmHWM) of the Spark driver JVM(s) started by this Python process: its
    java children but the broker, which the bench starts itself when none runs."""
    from pipelines.runtime.kafka.embedded import rss_mb

    return [round(rss_mb(pid)) for pid in _java_children() if pid != broker_pid]


def _current_rss_mb(pid: int) -> int:
    """Resident memory now (VmRSS) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def _source_rows(settings, query: str, kafka_base: int) -> int:  # noqa: ANN001
    """Rows the source of `query` holds now (Kafka: records since `kafka_base`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from pipelines.catalog import STREAMS, table

    source = {s.query: s.source for s in STREAMS}[query]
    if source == "kafka":
        return _in_topics(settings) - kafka_base
    actions = pa.table(DeltaTable(table(source).path(settings)).get_add_actions(flatten=True))
    return int(pc.sum(actions["num_records"]).as_py() or 0)


def _renice_spark(niceness: int) -> None:
    """Run the Spark driver JVM at a lower priority, every thread of it (Linux nice
    values are per thread; threads and Python workers started later inherit it)."""
    for pid in _java_children():
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


def bench_simulate(records: int) -> None:
    """The simulator's produce rate vs Kafka's own kafka-producer-perf-test."""
    from pipelines.runtime import jars
    from pipelines.runtime.kafka.embedded import broker_coordinates, ensure_topics
    from pipelines.simulate.producer import simulate

    settings = _settings("simulate")
    ensure_topics(settings.kafka)
    manifest = simulate(settings, records, seed=1, progress=False)
    size = 200
    classpath = ":".join(str(j) for j in jars.fetch(
        "kafka", broker_coordinates(settings.kafka.embedded.version)))
    perf = subprocess.run(
        ["java", "-Xmx256m", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance",
         "--topic", settings.topic("user_actions").name, "--num-records", str(records),
         "--record-size", str(size), "--throughput", "-1", "--producer-props",
         f"bootstrap.servers={settings.kafka.bootstrap}", "acks=all", "linger.ms=20",
         "batch.size=262144"],
        capture_output=True, text=True, check=True,
    )
    summary = perf.stdout.strip().splitlines()[-1]
    _save("simulate", {
        "records": records,
        "simulator_events_per_s": manifest["events_per_s"],
        "simulator_seconds": manifest["seconds"],
        "kafka_producer_perf_test": summary,
        "kafka_producer_perf_test_records_per_s": float(
            re.search(r"([\d.]+) records/sec", summary).group(1)),
    })


def _drain(spark, settings, layers: list[str]) -> float:  # noqa: ANN001
    from pipelines.runtime.runner import run_layers

    started = time.monotonic()
    run_layers(spark, settings, layers, available_now=True, report=lambda _: None)
    return time.monotonic() - started


def _drains(spark, settings, layer: str, times: int) -> list[float]:  # noqa: ANN001
    """Seconds of `times` drains of `layer` from scratch in this JVM (its tables and
    checkpoint removed between them): the first pays the JIT compilation of the code
    it runs, which a long-running stream pays once; the later ones show its steady
    rate."""
    runs = []
    for i in range(times):
        if i:
            _forget(settings, layer)
        runs.append(_drain(spark, settings, [layer]))
    return runs


def _in_topics(settings) -> int:  # noqa: ANN001
    """Records the source topics hold."""
    return sum(_per_topic(settings).values())


def bench_ingest(records: int, reuse: bool = False, tag: str = "ingest", drains: int = 2) -> None:
    """Side by side on the same `records` simulated records (~200-300 bytes each):
    Kafka's own ConsumerPerformance (the limit), the plain-Python peer (kafka-python +
    deltalake), each layer of the project alone (each drained `drains` times from
    scratch in one JVM: the first pays the JIT, the later show the steady rate), and
    all layers live in one driver from an empty lakehouse. With `reuse`, the records
    are whatever an earlier run left in the bench topics."""
    from pipelines.runtime.kafka.embedded import _classpath, ensure_topics, rss_mb, status
    from pipelines.runtime.spark import build_spark
    from pipelines.simulate.producer import simulate

    from .peer import consumer_performance, python_peer

    settings = _settings(tag, {"LAKEHOUSE_STREAMING__MAX_OFFSETS_PER_TRIGGER": "250000"})
    ensure_topics(settings.kafka)
    if reuse:
        manifest = {"expected": None}
        records = _in_topics(settings)
    else:
        manifest = simulate(settings, records, seed=5, progress=False)
    topics = settings.kafka.source_topics
    # Outside Spark first, each alone on the machine.
    raw = consumer_performance(_classpath(settings.kafka.embedded), settings.kafka.bootstrap,
                               _per_topic(settings))
    peer_path = str(TMP / tag / "peer" / "events")
    shutil.rmtree(peer_path, ignore_errors=True)
    peer = python_peer(settings.kafka.bootstrap, topics, peer_path)
    if peer["records"] != records:
        raise RuntimeError(f"the peer copied {peer['records']} of {records} records")

    started = time.monotonic()
    spark = build_spark(settings.spark)
    startup = time.monotonic() - started
    # Every batch's progress kept: the all-live drain counts each query's rows.
    spark.conf.set("spark.sql.streaming.numRecentProgressUpdates", "5000")
    layer_runs = {layer: _drains(spark, settings, layer, drains)
                  for layer in ("bronze", "silver", "gold")}
    _save("ingest", {"records": records, "kafka_consumer_performance": raw,
                     "python_peer": peer, "partial": "layers alone only; all-live pending",
                     "layers_alone_seconds": layer_runs})
    live_s = _drain_all_live(spark, _settings(tag, {
        "LAKEHOUSE_ROOT": str(TMP / f"{tag}-live" / "lake"),
        "LAKEHOUSE_STREAMING__MAX_OFFSETS_PER_TRIGGER": "250000",
    }), records)

    def rate(seconds: float) -> int:
        return round(records / seconds)

    warm = {layer: min(runs[1:]) for layer, runs in layer_runs.items()}
    broker_pid = status(settings.kafka)["pid"]
    _save("ingest", {
        "topics": f"bench.{tag}.*",
        "records": records,
        "avg_value_bytes": _avg_value_bytes(settings),
        "manifest_expected": manifest["expected"],
        "kafka_consumer_performance": raw,
        "python_peer": peer,
        "spark_startup_s": round(startup, 1),
        # Each layer alone, over what the layer below holds (gold: every silver table).
        "layers_alone_seconds": {k: [round(x, 1) for x in v] for k, v in layer_runs.items()},
        "layers_alone_warm_records_per_s": {k: rate(v) for k, v in warm.items()},
        "all_layers_live_seconds": round(live_s, 1),
        "all_layers_live_records_per_s": rate(live_s),
        "ratios": {
            "bronze_vs_peer": round(rate(warm["bronze"]) / peer["records_per_s"], 2),
            "bronze_vs_raw": round(rate(warm["bronze"]) / raw["records_per_s"], 3),
            "all_layers_live_vs_raw": round(rate(live_s) / raw["records_per_s"], 3),
        },
        "peak_rss_mb": {
            "kafka_broker": round(rss_mb(broker_pid)) if broker_pid else None,
            "spark_driver_jvm": _spark_peak_mb(broker_pid),
        },
    })


def _per_topic(settings) -> dict[str, int]:  # noqa: ANN001
    """Records each source topic holds (end offsets: bench topics are never trimmed)."""
    from pipelines.ops.status import kafka_offsets

    offsets, reason = kafka_offsets(
        settings.kafka.bootstrap, settings.kafka.source_topics, settings.kafka.admin_timeout_s
    )
    if offsets is None:
        raise RuntimeError(f"cannot read the bench topics' offsets: {reason}")
    return {topic: sum(end for _, end in parts.values()) for topic, parts in offsets.items()}


def _drain_all_live(spark, settings, records: int) -> float:  # noqa: ANN001
    """Every query of every layer live in this driver (processing-time triggers) from
    an empty lakehouse; done when each query's committed offsets cover its source:
    bronze the topics' end offsets, every other query the latest version of the Delta
    table it reads, once the layer below is done. Rows per query (summed over its
    progress reports, by batch id) are printed for the record."""
    from deltalake import DeltaTable

    from pipelines import catalog
    from pipelines.runtime.runner import start_layers

    shutil.rmtree(settings.lakehouse.root, ignore_errors=True)
    sources = {s.query: s.source for s in catalog.STREAMS}
    ends = _per_topic_partitions(settings)
    taken: dict[str, dict[int, int]] = {}
    finished: set[str] = set()

    def covered(query) -> bool:  # noqa: ANN001
        progress = query.lastProgress
        if not progress or not progress["sources"]:
            return False
        end = progress["sources"][0]["endOffset"]
        # PySpark hands a source's offset over as str() of the parsed JSON.
        end = ast.literal_eval(end) if isinstance(end, str) else end
        source = sources[query.name]
        if source == "kafka":
            return all(end.get(topic, {}).get(str(p), -1) >= offset
                       for topic, parts in ends.items() for p, offset in parts.items())
        upstream = "bronze_events" if source == "bronze.events" else "silver_events"
        if upstream not in finished:
            return False
        # {"reservoirVersion": v, "index": -1}: every version before v is taken in.
        latest = DeltaTable(catalog.table(source).path(settings)).version()
        return int(end["reservoirVersion"]) > latest

    started = time.monotonic()
    queries = start_layers(spark, settings, ["bronze", "silver", "gold"])
    try:
        while len(finished) < len(queries):
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"all layers live: only {sorted(finished)} done in an hour")
            for q in queries:
                if q.exception():
                    raise RuntimeError(f"{q.name}: {q.exception()}")
                for p in q.recentProgress:
                    # An idle trigger reports the last batch id again with no rows.
                    rows = taken.setdefault(q.name, {})
                    rows[p["batchId"]] = max(rows.get(p["batchId"], 0), p["numInputRows"])
                if q.name not in finished and covered(q):
                    finished.add(q.name)
            time.sleep(1)
        elapsed = time.monotonic() - started
        print("all layers live: rows per query",
              {name: sum(rows.values()) for name, rows in taken.items()}, flush=True)
        return elapsed
    finally:
        for q in queries:
            q.stop()


def _per_topic_partitions(settings) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """Each source topic's end offset per partition."""
    from pipelines.ops.status import kafka_offsets

    offsets, reason = kafka_offsets(
        settings.kafka.bootstrap, settings.kafka.source_topics, settings.kafka.admin_timeout_s
    )
    if offsets is None:
        raise RuntimeError(f"cannot read the bench topics' offsets: {reason}")
    return {
        topic: {str(p): end for p, (_, end) in parts.items()} for topic, parts in offsets.items()
    }


# The ops tables the gold queries keep (their watermark, late events, health state).
_GOLD_OPS = ("late_events", "gold_progress", "host_status", "service_health_minute",
             "health_alerts")
# What a layer's queries read.
_READS = {"bronze": "kafka", "silver": "bronze.", "gold": "silver."}


def _forget(settings, layer: str) -> None:  # noqa: ANN001
    """Remove a layer's tables (gold: with the ops tables its queries keep) and its
    queries' checkpoints, as the catalog lists them (the topics, and the layers
    below, stay)."""
    from pipelines.catalog import STREAMS, TABLES

    for table in TABLES:
        if table.layer == layer or (layer == "gold" and table.table in _GOLD_OPS):
            shutil.rmtree(table.path(settings), ignore_errors=True)
    for stream in STREAMS:
        if stream.source.startswith(_READS[layer]):
            shutil.rmtree(settings.lakehouse.checkpoint(stream.query), ignore_errors=True)


def _avg_value_bytes(settings) -> float:  # noqa: ANN001
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topic("user_actions").name, bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=5000, max_poll_records=2000,
    )
    sizes = []
    for message in consumer:
        sizes.append(len(message.value or b""))
        if len(sizes) >= 2000:
            break
    consumer.close()
    return round(sum(sizes) / max(len(sizes), 1), 1)


def bench_freshness(seconds: int, rate: int, pipeline_nice: int = 0, warmup: int = 0) -> None:
    """Event produced -> visible in gold.media_engagement, at a steady rate: probe
    events with their own media ids are sent every few seconds and polled for.

    The load runs `warmup` seconds before the first probe: the first micro-batches of
    a JVM are slow while it compiles the queries' code, and are not the steady state.

    `pipeline_nice` > 0 runs the Spark driver at that lower priority, so that the load
    generator (at normal priority, as producers on other machines would be) is not
    starved of CPU and really offers the asked rate."""
    from deltalake import DeltaTable
    from kafka import KafkaProducer

    from pipelines import catalog
    from pipelines.runtime.kafka.embedded import ensure_topics, status
    from pipelines.runtime.runner import start_layers
    from pipelines.runtime.spark import build_spark

    # From the end of the topics: they keep earlier runs' events, which would otherwise
    # be a backlog in front of this run's.
    settings = _settings("fresh", {"LAKEHOUSE_STREAMING__TRIGGER": "2 seconds",
                                   "LAKEHOUSE_STREAMING__STARTING_OFFSETS": "latest"})
    ensure_topics(settings.kafka)
    spark = build_spark(settings.spark)
    # Every batch's progress kept, to count each query's rows over the whole run.
    spark.conf.set("spark.sql.streaming.numRecentProgressUpdates", "5000")
    if pipeline_nice:
        _renice_spark(pipeline_nice)
    broker_pid = status(settings.kafka)["pid"]
    [driver_pid] = [p for p in _java_children() if p != broker_pid]
    kafka_base = _in_topics(settings)
    # Every query of every layer, as `lakehouse stream` runs them.
    queries = start_layers(spark, settings, ["bronze", "silver", "gold"])
    # Bronze resolves "latest" in its first batch: nothing may be sent before that.
    while queries[0].lastProgress is None:
        time.sleep(0.5)
    # Pre-generated: the generator alone takes about a core at 5,000 events/s, which
    # would be measuring the simulator, not the pipeline. Probes start with the load.
    in_topics_before = _in_topics(settings)
    load = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "simulate", "--events",
         str((warmup + seconds) * rate), "--rate", str(rate), "--now", "--seed", "9",
         "--pregenerate"],
        env={**os.environ, "LAKEHOUSE_ROOT": settings.lakehouse.root,
             **{f"LAKEHOUSE_KAFKA__TOPICS__{k.upper()}__NAME": v.name
                for k, v in settings.kafka.topics.items()},
             "LAKEHOUSE_SIMULATE__MANIFEST_DIR": str(TMP / "fresh" / "manifests")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while _in_topics(settings) == in_topics_before:
        if load.poll() is not None:
            raise RuntimeError(f"the load generator exited with {load.returncode}")
        time.sleep(0.5)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    time.sleep(warmup)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()
    gold = catalog.GOLD_MEDIA_ENGAGEMENT.path(settings)

    def poll() -> None:
        while not stop.is_set():
            try:
                ids = set(DeltaTable(gold).to_pyarrow_table(columns=["media_id"])
                          .column("media_id").to_pylist())
            except Exception:  # noqa: BLE001 - not created yet
                ids = set()
            now = time.time()
            for probe in list(sent):
                if probe in ids and probe not in seen:
                    seen[probe] = now
            time.sleep(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t_start = time.time()
    t_end = t_start + seconds
    rss_at_thirds: list[int] = []
    i = 0
    while time.time() < t_end:
        if time.time() >= t_start + (len(rss_at_thirds) + 1) * seconds / 3:
            rss_at_thirds.append(_current_rss_mb(driver_pid))
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        event = {"schemaVersion": 2, "eventId": str(uuid.uuid4()), "userId": "probe-user",
                 "action": "play", "mediaId": probe,
                 "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        sent_at = time.time()
        producer.send(settings.topic("user_actions").name, key=b"probe-user",
                      value=json.dumps(event).encode())
        producer.flush()
        sent[probe] = sent_at
        i += 1
        time.sleep(5)
    load.wait(timeout=(warmup + seconds) * 3)
    rss_at_thirds.append(_current_rss_mb(driver_pid))
    # What each query has yet to take in when the load stops, in rows and in triggers'
    # worth of the offered rate (2 s triggers).
    backlog = {}
    for q in queries:
        taken: dict[int, int] = {}
        for p in q.recentProgress:  # an idle trigger reports its last batch id, no rows
            taken[p["batchId"]] = max(taken.get(p["batchId"], 0), p["numInputRows"])
        rows = max(0, _source_rows(settings, q.name, kafka_base) - sum(taken.values()))
        backlog[q.name] = {"rows": rows, "triggers": round(rows / (rate * 2), 1)}
    # The pipeline may lag minutes behind the load: wait for the last probes that long.
    deadline = time.time() + max(180, seconds)
    while len(seen) < len(sent) and time.time() < deadline:
        time.sleep(1)
    stop.set()
    batches = {q.name: _batch_log(q) for q in queries}
    for q in queries:
        q.stop()
    latencies = sorted(seen[p] - sent[p] for p in seen)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    _save("freshness", {
        "rate_events_per_s": rate, "seconds": seconds, "warmup_s": warmup,
        "pipeline_nice": pipeline_nice,
        "probes": len(sent),
        "probes_seen": len(seen), "p50_s": pct(0.5), "p95_s": pct(0.95),
        "max_s": round(max(latencies), 1) if latencies else None,
        "simulator_exit_code": load.returncode,
        "backlog_at_load_end": backlog,
        # Streaming state: none in a state store (silver and gold are stateless; their
        # state is the Delta tables), so the driver's memory is the figure to watch.
        "driver_rss_mb_at_thirds_and_end": rss_at_thirds[:3] + rss_at_thirds[-1:],
        "load": _newest_manifest(TMP / "fresh" / "manifests"),
        # In the order sent: a steady pipeline keeps these flat, a falling-behind one grows.
        "latencies_in_send_order_s": [
            round(seen[p] - sent[p], 1) if p in seen else None for p in sent],
        # Per query: [input rows, seconds] of its micro-batches that had input, in order.
        "batches": batches,
    })


def _batch_log(query) -> list[list[float]]:  # noqa: ANN001
    """[input rows, seconds] of each recent micro-batch of `query` that had input."""
    return [
        [p["numInputRows"], round(p["durationMs"].get("triggerExecution", 0) / 1000, 1)]
        for p in query.recentProgress
        if p.get("numInputRows")
    ]


def _newest_manifest(folder: Path) -> dict[str, Any] | None:
    """What the load generator achieved (rate, pre-generation time), from its manifest."""
    found = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    manifest = json.loads(found[-1].read_text())
    return {k: manifest.get(k) for k in ("total", "seconds", "events_per_s",
                                         "pregenerate_seconds")}


# --- history does not matter ----------------------------------------------------------

# The batch's day; the bulk-built history is the year before it.
HISTORY_DAY = datetime(2026, 11, 1, tzinfo=UTC)


def _history_batch(spark, settings, records: int):  # noqa: ANN001, ANN202
    """`records` simulated bronze rows of one hour of one day, cached."""
    from datetime import timedelta

    from pipelines.simulate.generator import generate

    rows = [
        (settings.topic(r.topic_kind).name, 0, offset, r.value)
        for offset, r in enumerate(generate(
            settings.simulate, records, 77, settings.streaming.max_record_bytes,
            now=HISTORY_DAY, span=timedelta(hours=1),
        ))
    ]
    batch = spark.createDataFrame(rows, "topic string, partition int, offset long, value binary")
    batch = batch.repartition(4).cache()
    batch.count()
    return batch


def _add_history(spark, settings, rows: int, start: int) -> None:  # noqa: ANN001
    """`rows` user actions of the year before HISTORY_DAY appended to silver in bulk
    (users and media of the simulator's id space; offsets from `start`)."""
    from pyspark.sql import functions as F

    from pipelines import catalog
    from pipelines.silver.tables import silver_schema

    seconds = 365 * 86_400
    first = int(HISTORY_DAY.timestamp()) - seconds
    actions = F.array(*(F.lit(a) for a in ("play", "pause", "skip", "seek", "complete")))
    frame = (
        spark.range(start, start + rows)
        .select(
            F.expr("uuid()").alias("event_id"),
            F.format_string("u-%05d", (F.col("id") * 7919) % 2000 + 1).alias("user_id"),
            actions[(F.col("id") % 5).cast("int")].alias("action"),
            F.timestamp_seconds(F.lit(first) + (F.col("id") * 104_729) % seconds).alias(
                "event_time"),
            F.format_string("m-%06d", (F.col("id") * 31) % 600 + 1).alias("media_id"),
            F.lit(None).cast("string").alias("session_id"),
            F.lit(None).cast("long").alias("position_ms"),
            F.lit("web").alias("device"),
            F.lit(2).alias("schema_version"),
            F.lit("bench.history").alias("source_topic"),
            F.lit(0).alias("source_partition"),
            F.col("id").alias("source_offset"),
            F.current_timestamp().alias("processed_at"),
        )
        .withColumn("event_date", F.to_date("event_time"))
    )
    schema = silver_schema("user_action")
    actions_table = catalog.SILVER_USER_ACTIONS
    frame.select(*(F.col(f.name).cast(f.dataType) for f in schema.fields)).write.format(
        "delta").mode("append").partitionBy(*actions_table.partition_by).save(
        actions_table.path(settings))


def _held_whole_table(spark, conf, keys):  # noqa: ANN001, ANN202
    """Silver's lookup before it was bounded to the batch's dates: every held key of
    the three tables (kept here to measure against)."""
    from functools import reduce

    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    from pipelines.silver.tables import SOURCE, TABLES, coordinates

    coords = coordinates(SOURCE)
    tables = (
        spark.read.format("delta").load(conf.paths[t.table])
        .select(F.lit(t.event_type).alias("event_type"), "event_id", *coords)
        for t in TABLES
    )
    return reduce(DataFrame.unionByName, tables).join(
        keys.select("event_type", "event_id"), on=["event_type", "event_id"], how="left_semi")


def _refresh_sessions_whole_history(spark, conf, events) -> int:  # noqa: ANN001
    """gold_engagement's session refresh before it was bounded: every silver action of
    the touched pairs, whole history (kept here to measure against)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pipelines.gold.engagement import PLAYBACK_SESSIONS, _silver, _written, stored
    from pipelines.gold.transforms import sessionize, touched_pairs

    pairs = F.broadcast(touched_pairs(events))
    actions = _silver(spark, conf).join(pairs, on=["user_id", "media_id"], how="left_semi")
    fresh = stored(PLAYBACK_SESSIONS, sessionize(actions, conf.gap))
    target = DeltaTable.forPath(spark, conf.gold[PLAYBACK_SESSIONS])
    stale = (
        target.toDF()
        .join(pairs, on=["user_id", "media_id"], how="left_semi")
        .join(fresh.select("session_id"), on="session_id", how="left_anti")
    )
    changes = (
        fresh.withColumn("_delete", F.lit(False))
        .unionByName(stale.withColumn("_delete", F.lit(True)))
        .localCheckpoint(eager=True)
    )
    columns = {c: f"s.`{c}`" for c in fresh.columns}
    return _written(
        target.alias("t")
        .merge(changes.alias("s"), "t.session_id = s.session_id")
        .whenMatchedDelete(condition="s._delete")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(condition="NOT s._delete", values=columns)
        .execute()
    )


def _versions(spark, paths: list[str]) -> dict[str, int]:  # noqa: ANN001
    from delta.tables import DeltaTable

    from pipelines.io.delta import latest_commit

    return {p: int(latest_commit(DeltaTable.forPath(spark, p))["version"]) for p in paths}


def _restore(spark, versions: dict[str, int]) -> None:  # noqa: ANN001
    for path, version in _versions(spark, list(versions)).items():
        if version > versions[path]:
            spark.sql(f"RESTORE TABLE delta.`{path}` TO VERSION AS OF {versions[path]}")


def bench_history(batch_records: int, sizes: list[int]) -> None:
    """History does not matter: one fixed batch of `batch_records` records through
    silver, then through gold, with each size of history already held (silver
    user actions built in bulk over the year before the batch's day, gold computed
    from them). Each layer runs as it is and as it was (silver: ids looked up in the
    whole tables; gold: a touched pair's whole history resessionized), alternated in
    one JVM; the tables are restored after each run so every run sees the same state."""
    from pyspark.sql import functions as F

    from pipelines.gold import engagement
    from pipelines.runtime.spark import build_spark
    from pipelines.silver import dedup
    from pipelines.silver import job as silver_job
    from pipelines.silver.tables import QUARANTINE, TABLES, SilverConf

    settings = _settings("history")
    spark = build_spark(settings.spark)
    silver_job.ensure_silver(spark, settings)
    conf = engagement.EngagementConf.from_settings(settings)
    engagement.ensure_tables(spark, conf)
    silver_paths = [t.entry.path(settings) for t in TABLES]
    silver_paths.append(QUARANTINE.path(settings))
    gold_paths = list(conf.gold.values())
    batch = _history_batch(spark, settings, batch_records)
    # dedup.settle looks `held` up in its module at each batch: swapped there.
    bounded_held, bounded_sessions = dedup.held, engagement.REFRESHERS["sessions"]
    variants = {
        "silver_now": lambda: setattr(dedup, "held", bounded_held),
        "silver_before": lambda: setattr(dedup, "held", _held_whole_table),
        "gold_now": lambda: engagement.REFRESHERS.update(sessions=bounded_sessions),
        "gold_before": lambda: engagement.REFRESHERS.update(
            sessions=_refresh_sessions_whole_history),
    }

    def timed(variant: str, work, paths: list[str]) -> float:  # noqa: ANN001
        variants[variant]()
        before = _versions(spark, paths)
        started = time.monotonic()
        work()
        seconds = time.monotonic() - started
        _restore(spark, before)
        return round(seconds, 1)

    def silver_batch() -> None:
        silver_job.process_batch(batch, 0, SilverConf.from_settings(settings),
                                 app_id=f"bench-{uuid.uuid4()}")

    results, held = [], 0
    try:
        timed("silver_now", silver_batch, silver_paths)  # JIT warm-up, not recorded
        for size in sorted(sizes):
            started = time.monotonic()
            _add_history(spark, settings, size - held, start=10_000_000_000 + held)
            held = size
            row: dict[str, Any] = {"held_rows": size,
                                   "build_silver_s": round(time.monotonic() - started, 1)}
            for variant in ("silver_now", "silver_before") * 2:
                row.setdefault(f"{variant}_s", []).append(timed(variant, silver_batch,
                                                                silver_paths))
            # Gold's state: the history's gold tables, then the batch's rows in silver.
            started = time.monotonic()
            history = spark.read.format("delta").load(conf.silver)
            for table, frame in engagement.gold_frames(history, conf).items():
                frame.write.format("delta").mode("overwrite").save(conf.gold[table])
            row["build_gold_s"] = round(time.monotonic() - started, 1)
            variants["silver_now"]()
            before_batch = _versions(spark, silver_paths)
            silver_batch()
            events = (
                spark.read.format("delta").load(conf.silver)
                .filter(F.col("source_topic") != "bench.history")
                .select(*engagement.KEY_COLUMNS).cache()
            )
            row["gold_batch_events"] = events.count()
            refresh = functools.partial(engagement.refresh, spark, conf, events)
            for variant in ("gold_now", "gold_before") * 2:
                row.setdefault(f"{variant}_s", []).append(timed(variant, refresh, gold_paths))
            events.unpersist()
            _restore(spark, before_batch)  # the next size adds history to silver as it was
            results.append(row)
            print(row)
    finally:
        variants["silver_now"]()
        variants["gold_now"]()
    _save("history", {
        "batch_records": batch_records,
        "history": "silver.user_actions rows over the 365 days before the batch's day; "
                   "gold computed from them",
        "runs": results,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--only", default="simulate,ingest,history,freshness")
    parser.add_argument("--history-batch", type=int, default=100_000,
                        help="history: records of the fixed micro-batch")
    parser.add_argument("--history-sizes", default="1000000,10000000,30000000",
                        help="history: rows held before the batch, comma-separated")
    parser.add_argument("--fresh-seconds", type=int, default=600)
    parser.add_argument("--fresh-rate", type=int, default=5000)
    parser.add_argument("--fresh-warmup", type=int, default=60,
                        help="freshness: seconds of load before the first probe")
    parser.add_argument("--pipeline-nice", type=int, default=0,
                        help="freshness: run Spark at this nice value, the load generator at 0")
    parser.add_argument("--ingest-tag", default="ingest",
                        help="ingest: bench topics bench.<tag>.* (a new tag: empty topics)")
    parser.add_argument("--drains", type=int, default=2,
                        help="ingest: drains of each layer from scratch in one JVM (>= 2; "
                        "the first is cold)")
    parser.add_argument("--reuse", action="store_true",
                        help="first load: what the bench topics already hold (no simulate)")
    args = parser.parse_args()
    if args.drains < 2:
        parser.error("--drains must be at least 2 (a cold drain, then warm ones)")
    from pipelines.runtime.kafka import embedded
    from pipelines.settings import load_settings

    shutil.rmtree(TMP, ignore_errors=True)  # the lakehouse only; Kafka topics stay
    print(embedded.up(load_settings().kafka))
    chosen = args.only.split(",")
    scenarios = {
        "simulate": lambda: bench_simulate(args.records),
        "ingest": lambda: bench_ingest(args.records, reuse=args.reuse, tag=args.ingest_tag,
                                       drains=args.drains),
        "history": lambda: bench_history(
            args.history_batch, [int(n) for n in args.history_sizes.split(",")]),
        "freshness": lambda: bench_freshness(args.fresh_seconds, args.fresh_rate,
                                             args.pipeline_nice, args.fresh_warmup),
    }
    failed = []
    for name, scenario in scenarios.items():
        if name not in chosen:
            continue
        # One scenario failing does not cost the others' figures; the run still fails.
        try:
            scenario()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append(name)
    if failed:
        sys.exit(f"scenarios failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
