"""Starts the streaming layers and reports their progress."""

from __future__ import annotations

import importlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipelines.settings import Settings

LAYERS = ("bronze", "silver", "gold")
# Within a layer, jobs run in this order under --available-now: notifications
# read the playback sessions that the engagement job writes.
_MODULES = {
    "bronze": ["pipelines.bronze"],
    "silver": ["pipelines.silver.job"],
    "gold": ["pipelines.gold.engagement", "pipelines.gold.notifications", "pipelines.gold.health"],
}


def parse_layers(text: str) -> list[str]:
    layers = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in layers if x not in LAYERS]
    if unknown or not layers:
        raise ValueError(f"unknown layer(s) {unknown}; choose from {', '.join(LAYERS)}")
    return [x for x in LAYERS if x in layers]  # always upstream first


Starter = Callable[[SparkSession, Settings, bool], list[StreamingQuery]]


def _starters(layer: str) -> list[tuple[str, Starter]]:
    return [(m, importlib.import_module(m).start) for m in _MODULES[layer]]


class _StopOnSignal:
    """While active, SIGINT and SIGTERM set a flag instead of raising inside a py4j call
    (which breaks the gateway and leaves the queries running): `_await` sees it between
    its one-second waits and the queries are stopped cleanly. Only in the main thread,
    where Python delivers signals."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.requested.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _await(
    queries: list[StreamingQuery], report: Callable[[str], None], every_s: float,
    stop: threading.Event,
) -> None:
    last = time.monotonic()
    try:
        while any(q.isActive for q in queries) and not stop.is_set():
            for q in queries:
                q.awaitTermination(timeout=1)
            if time.monotonic() - last >= every_s:
                last = time.monotonic()
                for q in queries:
                    p = q.lastProgress
                    if p:
                        report(
                            f"{q.name}: batch {p['batchId']}, {p['numInputRows']} rows, "
                            f"{p.get('processedRowsPerSecond', 0):.0f} rows/s"
                        )
    finally:
        for q in queries:
            if q.isActive:
                q.stop()
    if stop.is_set():
        raise KeyboardInterrupt
    for q in queries:
        if q.exception() is not None:
            raise RuntimeError(f"stream {q.name} failed: {q.exception()}")


def start_layers(
    spark: SparkSession, settings: Settings, layers: list[str]
) -> list[StreamingQuery]:
    """Start every query of `layers` on the processing-time trigger, side by side in
    this driver, and return them (running)."""
    starters = [start for layer in layers for _, start in _starters(layer)]
    return [q for start in starters for q in start(spark, settings, False)]


def run_layers(
    spark: SparkSession,
    settings: Settings,
    layers: list[str],
    available_now: bool,
    report: Callable[[str], None] = print,
    every_s: float = 10.0,
) -> None:
    """`available_now`: drain each layer in order (bronze, then silver, then gold) and
    return. Otherwise run all layers side by side until one stops or fails. SIGINT or
    SIGTERM stops the queries (each batch is idempotent, so a batch cut short runs
    again on the next start) and raises KeyboardInterrupt."""
    with _StopOnSignal() as stop:
        if available_now:
            for layer in layers:
                started = time.monotonic()
                for _, start in _starters(layer):
                    _await(start(spark, settings, True), report, every_s, stop.requested)
                report(f"{layer}: caught up in {time.monotonic() - started:.1f}s")
            return
        _await(start_layers(spark, settings, layers), report, every_s, stop.requested)
