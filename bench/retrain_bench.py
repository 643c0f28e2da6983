"""Benchmark of `lakehouse retrain` on synthetic playback sessions (1M by default;
`--sessions 10000000` for the large run).

Run it under the JVM lock (it starts Spark):

    flock /tmp/lakehouse-jvm.lock .venv/bin/python -m bench.retrain_bench [--sessions N]

The sessions are built directly as a DataFrame (no Kafka, no streams): users
with one or two favourite genres, Zipf-like media popularity inside a genre,
more completions and fewer skips in favourite genres, start times uniform
over `--days`. Each session also yields 2-4 silver.user_actions rows
(play ... complete/skip/pause), so item popularity has real input, and every
media one silver.content_uploads row (its planted genre, a creator). The retrain
runs with the conf/ settings (grid, max_iter, top_k) against a throw-away
lakehouse root; wall time per phase, the driver JVM's peak resident memory
(VmHWM of the java child of this process) and this Python process's peak RSS go
to bench/results/retrain.json, one entry per `--sessions`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import catalog
from pipelines.features import retrain
from pipelines.runtime.spark import build_spark
from pipelines.settings import load_settings
from pipelines.silver.tables import silver_schema

RESULTS = Path(__file__).resolve().parent / "results" / "retrain.json"
GENRES = 8
START_EPOCH_S = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())


def _u(seed: int) -> Column:
    """A uniform [0, 1) column, deterministic per row id (no rand(): plan-independent)."""
    return (F.abs(F.xxhash64(F.col("id"), F.lit(seed))) % 1_000_000) / 1_000_000.0


def synthetic_sessions(spark: SparkSession, n: int, users: int, media: int, days: int) -> DataFrame:
    """gold.playback_sessions rows with planted genre tastes (see the module docstring)."""
    per_genre = media // GENRES
    user_idx = F.floor(F.pow(_u(1), 1.6) * users).cast("long")  # heavy and light viewers
    favourite = F.abs(F.xxhash64(F.col("user_idx"), F.lit(7))) % GENRES
    other = F.abs(F.xxhash64(F.col("user_idx"), F.lit(8))) % (GENRES - 1)
    second = (favourite + 1 + other) % GENRES
    liked = F.when(_u(3) < 0.5, favourite).otherwise(second)
    genre = F.when(_u(2) < 0.8, liked).otherwise(F.floor(_u(4) * GENRES).cast("long"))
    # Log-uniform rank inside the genre: P(rank) ~ 1 / rank.
    rank_in_genre = (F.floor(F.exp(_u(5) * F.log(F.lit(float(per_genre))))) - 1).cast("long")
    media_idx = F.col("genre") + GENRES * rank_in_genre
    preferred = (F.col("genre") == F.col("favourite")) | (F.col("genre") == F.col("second"))
    r = _u(6)
    outcome = (
        F.when(preferred & (r < 0.45), "completed")
        .when(preferred & (r < 0.6), "skipped")
        .when(~preferred & (r < 0.15), "completed")
        .when(~preferred & (r < 0.6), "skipped")
        .otherwise("abandoned")
    )
    watch_min = (
        F.when(F.col("outcome") == "completed", 20 + _u(7) * 70)
        .when(F.col("outcome") == "skipped", _u(7) * 5)
        .otherwise(5 + _u(7) * 35)
    )
    start_s = F.lit(START_EPOCH_S) + F.floor(_u(8) * days * 86_400).cast("long")
    return (
        spark.range(n)
        .withColumn("user_idx", user_idx)
        .withColumn("favourite", favourite)
        .withColumn("second", second)
        .withColumn("genre", genre)
        .withColumn("outcome", outcome)
        .withColumn("watch_ms", (watch_min * 60_000).cast("long"))
        .withColumn("start_s", start_s)
        .select(
            F.sha2(F.col("id").cast("string"), 256).substr(1, 32).alias("session_id"),
            F.format_string("u-%06d", F.col("user_idx")).alias("user_id"),
            F.format_string("m-%06d", media_idx).alias("media_id"),
            F.timestamp_seconds("start_s").alias("session_start"),
            F.timestamp_seconds(F.col("start_s") + F.col("watch_ms") / 1000 + 30).alias(
                "session_end"
            ),
            F.when(F.col("outcome") == "abandoned", 3).otherwise(2).cast("long").alias("actions"),
            F.col("watch_ms"),
            F.col("outcome"),
        )
    )  # fmt: skip


def uploads_of(spark: SparkSession, media: int) -> DataFrame:
    """silver.content_uploads rows of the catalog: media `m` has genre `m % GENRES`
    (as `synthetic_sessions` plants it) and one of 50 creators, uploaded a day before
    the first session."""
    at = F.timestamp_seconds(F.lit(START_EPOCH_S - 86_400))
    columns = [f.name for f in silver_schema("content_upload").fields]
    return (
        spark.range(media)
        .select(
            F.format_string("up-%06d", F.col("id")).alias("event_id"),
            F.format_string("m-%06d", F.col("id")).alias("media_id"),
            F.format_string("c-%03d", F.col("id") % 50).alias("creator_id"),
            at.alias("event_time"),
            F.lit(None).cast("string").alias("title"),
            F.format_string("g-%d", F.col("id") % GENRES).alias("genre"),
            F.lit(None).cast("long").alias("duration_ms"),
            F.lit(1).alias("schema_version"),
            F.lit("media.content-uploads").alias("source_topic"),
            F.lit(0).alias("source_partition"),
            F.col("id").alias("source_offset"),
            at.alias("processed_at"),
            F.to_date(at).alias("event_date"),
        )
        .select(*columns)
    )


def actions_of(sessions: DataFrame) -> DataFrame:
    """silver.user_actions rows consistent with the sessions: a play at the start, the
    terminal action at the end (complete, skip, or pause then nothing)."""
    terminal = (
        F.when(F.col("outcome") == "completed", "complete")
        .when(F.col("outcome") == "skipped", "skip")
        .otherwise("pause")
    )
    steps = F.array(
        F.struct(F.lit("play").alias("action"), F.col("session_start").alias("at")),
        F.struct(terminal.alias("action"), F.col("session_end").alias("at")),
    )
    columns = [f.name for f in silver_schema("user_action").fields]
    return (
        sessions.select("session_id", "user_id", "media_id", F.explode(steps).alias("step"))
        .select(
            F.sha2(F.concat_ws("|", "session_id", "step.action"), 256).alias("event_id"),
            F.col("user_id"),
            F.col("step.action").alias("action"),
            F.col("step.at").alias("event_time"),
            F.col("media_id"),
            F.col("session_id"),
            F.lit(None).cast("long").alias("position_ms"),
            F.lit("web").alias("device"),
            F.lit(2).alias("schema_version"),
            F.lit("media.user-actions").alias("source_topic"),
            F.lit(0).alias("source_partition"),
            F.monotonically_increasing_id().alias("source_offset"),
            F.col("step.at").alias("processed_at"),
            F.to_date("step.at").alias("event_date"),
        )
        .select(*columns)
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def driver_jvm_memory() -> dict[str, int | None]:
    """VmHWM / VmRSS (kB) of the java process this Python process started (the driver)."""
    for pid in _descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "java":
                continue
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        kb = {k: int(fields[k].split()[0]) for k in ("VmHWM", "VmRSS") if k in fields}
        return {"pid": pid, "vm_hwm_kb": kb.get("VmHWM"), "vm_rss_kb": kb.get("VmRSS")}
    return {"pid": None, "vm_hwm_kb": None, "vm_rss_kb": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--media", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    settings = load_settings(env={**os.environ, "LAKEHOUSE_ROOT": str(root)})
    t0 = time.monotonic()
    spark = build_spark(settings.spark)
    startup_s = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        sessions = synthetic_sessions(spark, args.sessions, args.users, args.media, args.days)
        sessions.write.format("delta").save(catalog.GOLD_PLAYBACK_SESSIONS.path(settings))
        sessions = spark.read.format("delta").load(catalog.GOLD_PLAYBACK_SESSIONS.path(settings))
        actions = catalog.SILVER_USER_ACTIONS
        actions_of(sessions).write.format("delta").partitionBy(*actions.partition_by).save(
            actions.path(settings)
        )
        uploads = catalog.SILVER_CONTENT_UPLOADS
        uploads_of(spark, args.media).write.format("delta").partitionBy(
            *uploads.partition_by
        ).save(uploads.path(settings))
        build_s = time.monotonic() - t0
        mem_before = driver_jvm_memory()

        t0 = time.monotonic()
        summary = retrain.run(spark, settings)
        retrain_s = time.monotonic() - t0
        jvm = driver_jvm_memory()
        runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
        heap = {"max_mb": runtime.maxMemory() // 2**20, "total_mb": runtime.totalMemory() // 2**20}
        n_actions = spark.read.format("delta").load(
            catalog.SILVER_USER_ACTIONS.path(settings)
        ).count()
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "benchmark": "lakehouse retrain",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "spark": {"master": settings.spark.master, "driver_memory": settings.spark.driver_memory,
                  "shuffle_partitions": settings.spark.shuffle_partitions},
        "features": settings.features.model_dump(),
        "input": {"sessions": args.sessions, "user_actions": n_actions, "users": args.users,
                  "media": args.media, "days": args.days},
        "seconds": {"spark_startup": round(startup_s, 1), "build_inputs": round(build_s, 1),
                    "retrain_wall": round(retrain_s, 1)},
        "retrain_phases_s": summary["timings_s"],
        "memory": {
            "driver_jvm_vm_hwm_mb": jvm["vm_hwm_kb"] and round(jvm["vm_hwm_kb"] / 1024),
            "driver_jvm_vm_rss_mb_end": jvm["vm_rss_kb"] and round(jvm["vm_rss_kb"] / 1024),
            "driver_jvm_vm_hwm_mb_before_retrain": mem_before["vm_hwm_kb"]
            and round(mem_before["vm_hwm_kb"] / 1024),
            "driver_jvm_heap_end": heap,
            "python_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
        "summary": {k: v for k, v in summary.items() if k != "timings_s"},
    }  # fmt: skip
    # One file, one entry per input size (each size is a run of its own: peak
    # memory is the JVM's lifetime high-water mark).
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = {}
    if args.out.exists():
        runs = json.loads(args.out.read_text()).get("runs", {})
    runs[str(args.sessions)] = result
    args.out.write_text(json.dumps({"runs": runs}, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("input", "seconds", "memory")}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
