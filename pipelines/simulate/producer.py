"""Send a simulated stream to Kafka and write its manifest (the I/O edge of `simulate`)."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pipelines.runtime.kafka.embedded import BrokerError
from pipelines.settings import Settings
from pipelines.simulate.generator import ManifestBuilder, SimRecord, generate

LINGER_MS = 20
BATCH_BYTES = 256 * 1024
BOOTSTRAP_TIMEOUT_MS = 10_000  # fail fast with a useful message when no broker runs
# Without --rate the producer runs flat out; wall-clock timestamps are spread
# over the time that roughly takes on a laptop.
NOMINAL_EVENTS_PER_S = 10_000


class TokenBucket:
    """At most `rate` records per second on average, with bursts of up to one second.

    Time overslept is credited to the next records: on a busy machine a sleeper wakes
    late, and a bucket that forgot it would fall well short of `rate` (a 0.2 ms sleep
    per record at 5,000/s that takes 1 ms gives 1,000/s). Sleeps are at least
    `min_sleep_s`, not one per record."""

    def __init__(
        self, rate: float, clock=time.monotonic, sleep=time.sleep, min_sleep_s: float = 0.01
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.min_tokens = min_sleep_s * rate
        self.tokens, self.last = rate, clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self) -> None:
        self._refill()
        if self.tokens < 1:
            self.sleep(max(1 - self.tokens, self.min_tokens) / self.rate)
            self._refill()
        self.tokens -= 1


def _throttled(records: Iterable[SimRecord], rate: float | None) -> Iterator[SimRecord]:
    bucket = TokenBucket(rate) if rate else None
    for record in records:
        if bucket:
            bucket.take()
        yield record


def _tracked(records: Iterable[SimRecord], total: int, label: str, progress: bool
             ) -> Iterable[SimRecord]:
    if not progress:
        return records
    from rich.progress import track

    return track(records, total=total, description=label, transient=True)


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer, errors

    # kafka-python 2.x raises NoBrokersAvailable; 3.x a KafkaTimeoutError on bootstrap.
    unreachable = tuple(
        getattr(errors, name)
        for name in ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")
        if hasattr(errors, name)
    )
    compression: Literal["lz4"] | None = "lz4" if importlib.util.find_spec("lz4") else None
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=LINGER_MS,
            batch_size=BATCH_BYTES,
            compression_type=compression,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
    except unreachable as exc:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap}: start the embedded one with "
            "`lakehouse up`, or set kafka.bootstrap (LAKEHOUSE_KAFKA_BOOTSTRAP)"
        ) from exc


def manifest_path(settings: Settings, seed: int, events: int, at: datetime) -> Path:
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    return Path(settings.simulate.manifest_dir) / f"simulate-{seed}-{events}-{stamp}.json"


def simulate(
    settings: Settings,
    events: int,
    rate: float | None = None,
    seed: int = 0,
    progress: bool = True,
    shuffle: bool = False,
    now: bool = False,
    pregenerate: bool = False,
) -> dict[str, Any]:
    """Produce `events` simulated records to Kafka; return (and save) the manifest.

    With `pregenerate`, every record is built before the first is sent, so that
    during sending the generator takes no CPU from a pipeline on the same machine
    (load tests); wall-clock timestamps then trail the send time by the
    generation time."""
    started_at = datetime.now(UTC)
    span = timedelta(seconds=events / (rate or NOMINAL_EVENTS_PER_S)) if now else None
    records: Iterable[SimRecord] = generate(
        settings.simulate,
        events,
        seed,
        settings.streaming.max_record_bytes,
        shuffle=shuffle,
        now=started_at if now else None,
        span=span,
    )
    generation_s = None
    builder = ManifestBuilder()
    if pregenerate:
        # The manifest's bookkeeping is done here too, not in the send loop: a send
        # that fails raises below, so the manifest is never kept for unsent records.
        t_gen = time.perf_counter()
        records = list(_tracked(records, events, "generate", progress))
        for record in records:
            builder.add(record)
        generation_s = round(time.perf_counter() - t_gen, 3)
    topics = {kind: settings.topic(kind).name for kind in settings.kafka.topics}
    producer = _producer(settings.kafka.bootstrap)
    t0 = time.perf_counter()
    try:
        stream = _tracked(_throttled(records, rate), events, "simulate", progress)
        failures: list[BaseException] = []
        for record in stream:
            future = producer.send(topics[record.topic_kind], key=record.key, value=record.value)
            future.add_errback(failures.append)
            if not pregenerate:
                builder.add(record)
        producer.flush()
        if failures:
            # The manifest would promise records Kafka never got.
            raise RuntimeError(
                f"{len(failures)} records were not delivered to Kafka at "
                f"{settings.kafka.bootstrap}: {failures[0]!r}"
            )
    finally:
        producer.close()
    seconds = time.perf_counter() - t0

    manifest = builder.build()
    path = manifest_path(settings, seed, events, started_at)
    manifest.update(
        seed=seed,
        shuffle=shuffle,
        wall_clock=now,
        topics={k: topics[k] for k in manifest["by_topic"]},
        started_at=started_at.isoformat(),
        seconds=round(seconds, 3),
        pregenerate_seconds=generation_s,
        events_per_s=round(events / seconds, 1) if seconds > 0 else None,
        path=str(path),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
