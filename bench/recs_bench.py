"""The served lists against popularity on simulated traffic with and without tastes.

Run it under the JVM lock (it starts Spark):

    flock /tmp/lakehouse-jvm.lock .venv/bin/python -m bench.recs_bench

Each data set is a simulator run (`pipelines.simulate.offline`: the valid events as
silver rows, sessions by gold's `sessionize`) retrained once into a throw-away
lakehouse; the retrain's gate decides what serves. For each: the decision, the
chosen candidate, and NDCG/precision/recall@10 on the test split of what now
serves and of popularity. Results go to bench/results/recommendations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pipelines.features import retrain
from pipelines.runtime.spark import build_spark
from pipelines.settings import load_settings
from pipelines.simulate.offline import silver_rows, write_inputs

RESULTS = Path(__file__).resolve().parent / "results" / "recommendations.json"
# name -> (seed, taste share, events): the demo's defaults, weak and strong tastes.
DATASETS = {
    "demo traffic (seed 42)": (42, 0.8, 30_000),
    "weak tastes (seed 43)": (43, 0.3, 30_000),
    "strong tastes (seed 44)": (44, 0.95, 30_000),
}


LOOKUPS = 10_000


def lookup_latency(settings, n: int) -> dict[str, float]:  # noqa: ANN001
    """The engine's read: `n` single-user get_online_features calls on the online
    store the retrain just filled, users drawn at random (a few unknown)."""
    import random

    from pipelines.features import serving

    store = serving.store(settings)
    users = [f"u-{i:05d}" for i in range(1, settings.simulate.users + 50)]
    serving.top_k(store, users[:1])  # the registry is read once, then cached
    rng = random.Random(1)
    times = []
    hits = 0
    for _ in range(n):
        user = rng.choice(users)
        started = time.perf_counter()
        found = serving.top_k(store, [user])[user]
        times.append((time.perf_counter() - started) * 1000)
        hits += found is not None and len(found) == settings.features.top_k
    times.sort()
    return {
        "lookups": n,
        "full_lists": hits,
        "p50_ms": round(times[n // 2], 2),
        "p95_ms": round(times[int(n * 0.95)], 2),
        "p99_ms": round(times[int(n * 0.99)], 2),
        "max_ms": round(times[-1], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    base = load_settings(env={})
    spark = build_spark(base.spark)
    results = {}
    lookup: dict[str, float] | None = None
    try:
        for name, (seed, share, events) in DATASETS.items():
            root = Path(tempfile.mkdtemp(prefix="recs-bench-")) / "lake"
            env = {"LAKEHOUSE_ROOT": str(root), "LAKEHOUSE_SIMULATE__TASTE_SHARE": str(share)}
            settings = load_settings(env=env)
            try:
                write_inputs(spark, settings, silver_rows(settings, events, seed))
                summary = retrain.run(spark, settings)
                if lookup is None:
                    lookup = lookup_latency(settings, LOOKUPS)
            finally:
                shutil.rmtree(root.parent, ignore_errors=True)
            served = (summary["model"] if summary["decision"] == "promoted"
                      else summary["baseline"])  # fmt: skip
            results[name] = {
                "seed": seed,
                "taste_share": share,
                "events": events,
                "decision": summary["decision"],
                "reason": summary["reason"],
                "candidate": summary["candidate"],
                "served": served,
                "popularity": summary["baseline"],
                "candidate_on_test": summary["model"],
                "validation": summary["candidates"],
                "eval_users": summary["eval_users"],
                "retrain_s": summary["total_s"],
            }
            print(name, summary["decision"], summary["candidate"],
                  round(summary["model"]["ndcg_at_10"] or 0, 4),
                  round(summary["baseline"]["ndcg_at_10"] or 0, 4), flush=True)
    finally:
        spark.stop()
    out = {
        "benchmark": "served lists against popularity",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "datasets": results,
        "online_lookup": lookup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
