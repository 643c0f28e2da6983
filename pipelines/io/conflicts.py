"""Delta commit conflicts: which errors are one, and retrying an idempotent action
after one.

Two writers of one table can both be right and still collide: OPTIMIZE removing
files a streaming micro-batch read, two MERGEs into the same partition. Delta then
fails the second commit. Every action retried here is idempotent (the stream sinks
use idempotent appends or insert-only MERGEs), so running it again is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import delta.exceptions.captured  # noqa: F401 - maps Delta's JVM conflict errors to Python classes
from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from pyspark.sql import DataFrame

from pipelines.settings import StreamingSettings

R = TypeVar("R")

CONFLICTS: tuple[type[BaseException], ...] = (
    DeltaConcurrentModificationException,
    ConcurrentWriteException,
    MetadataChangedException,
    ProtocolChangedException,
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentDeleteDeleteException,
    ConcurrentTransactionException,
)


class ConflictRetriesExhausted(RuntimeError):
    """A Delta commit conflict persisted through every retry."""


def one_line(exc: BaseException, limit: int = 1000) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


def is_conflict(exc: BaseException) -> bool:
    # An error that reached Python without Delta's conversion still names its JVM class.
    return isinstance(exc, CONFLICTS) or "io.delta.exceptions.Concurrent" in str(exc)


def with_conflict_retries(
    action: Callable[[], R],
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] | None = None,
) -> tuple[R, int]:
    """Run `action`, again after a Delta commit conflict (up to `retries` more times,
    waiting `backoff_s`, then twice that, ...); return (its result, attempts made).
    Other errors propagate at once."""
    for attempt in range(1, retries + 2):
        try:
            return action(), attempt
        except Exception as exc:
            if not is_conflict(exc):
                raise
            if attempt > retries:
                raise ConflictRetriesExhausted(
                    f"commit conflict after {attempt} attempts: {one_line(exc)}"
                ) from exc
            (sleep or time.sleep)(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def retrying_batches(
    process: Callable[[DataFrame, int], None], streaming: StreamingSettings
) -> Callable[[DataFrame, int], None]:
    """A foreachBatch function that runs `process` again when the micro-batch loses a
    Delta commit conflict (to `lakehouse maintain`, say) instead of failing the query,
    up to `streaming.conflict_retries` times. `process` must be idempotent for a batch
    id, as every sink of this project is."""

    def run(batch: DataFrame, batch_id: int) -> None:
        with_conflict_retries(
            lambda: process(batch, batch_id),
            streaming.conflict_retries,
            streaming.conflict_backoff_s,
        )

    return run
