"""The frames one silver micro-batch caches: built as they are added, released
together when the batch ends."""

from __future__ import annotations

from typing import NamedTuple

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class Sized(NamedTuple):
    """A small cached frame, and the same marked for a broadcast when it is small
    enough to be one."""

    cached: DataFrame
    to_join: DataFrame


class BatchCache:
    """The cached frames of one micro-batch, in the order they were built."""

    def __init__(self, broadcast_max_rows: int) -> None:
        self._frames: list[DataFrame] = []
        self._broadcast_max_rows = broadcast_max_rows

    def _add(self, frame: DataFrame) -> tuple[DataFrame, int]:
        frame = frame.persist()
        self._frames.append(frame)
        return frame, frame.count()

    def built(self, frame: DataFrame) -> DataFrame:
        """`frame` cached and built now (a count)."""
        return self._add(frame)[0]

    def sized(self, small: DataFrame) -> Sized:
        """`small` cached, and the same marked for a broadcast (to join with) when it is
        small enough: the repeated ids of a batch and the rows already held for its ids
        are usually a handful, but a replay under a new checkpoint finds every id held."""
        small, rows = self._add(small)
        return Sized(small, F.broadcast(small) if rows <= self._broadcast_max_rows else small)

    def release(self) -> None:
        # Dependents first: uncaching a frame re-plans every cached frame built on it,
        # and the fast path's plan is large (about 20 s per batch in this order).
        for frame in reversed(self._frames):
            frame.unpersist()
