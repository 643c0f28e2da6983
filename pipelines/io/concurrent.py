"""Independent Spark writes of one micro-batch, run side by side.

A small Delta append or MERGE spends most of its time outside the executors:
snapshot and log work on the driver, and several small jobs that each leave cores
idle while they start and finish. Submitted from threads of their own, the writes
of one batch to different tables fill each other's gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

R = TypeVar("R")


def side_by_side(spark: SparkSession, tasks: Sequence[Callable[[], R]]) -> list[R]:
    """Run `tasks` in threads and return their results in order, after all have
    ended; the first failure (in task order) is raised then.

    Each task must write its own table(s): nothing orders them. The threads
    inherit the caller's Spark local properties (scheduler pool, job group) and
    the session's job tags.
    """
    if len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="write") as pool:
        futures = [pool.submit(inheritable_thread_target(spark)(task)) for task in tasks]
    # Every task has ended here (the pool's exit waits): a failed write never leaves
    # another one running behind the batch's retry.
    return [future.result() for future in futures]
