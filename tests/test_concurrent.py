"""Side-by-side writes: results in order, failures raised only once all have ended,
Spark local properties carried into the threads."""

import threading
import time

import pytest

from pipelines.io.concurrent import side_by_side


def test_results_come_back_in_task_order(spark) -> None:
    def slow(value: int, delay: float):  # noqa: ANN202
        return lambda: (time.sleep(delay), value)[1]

    assert side_by_side(spark, [slow(1, 0.2), slow(2, 0.0), slow(3, 0.1)]) == [1, 2, 3]


def test_tasks_really_overlap(spark) -> None:
    # Two tasks that each wait for the other: they finish only if run at once.
    barrier = threading.Barrier(2, timeout=10)
    assert side_by_side(spark, [barrier.wait, barrier.wait]) in ([0, 1], [1, 0])


def test_a_failure_is_raised_after_the_other_tasks_end(spark) -> None:
    ended = threading.Event()

    def fails() -> None:
        raise RuntimeError("commit conflict")

    def slow() -> None:
        time.sleep(0.3)
        ended.set()

    with pytest.raises(RuntimeError, match="commit conflict"):
        side_by_side(spark, [fails, slow])
    assert ended.is_set()


def test_threads_inherit_the_callers_scheduler_pool(spark) -> None:
    sc = spark.sparkContext
    sc.setLocalProperty("spark.scheduler.pool", "silver_events")
    try:
        pools = side_by_side(spark, [lambda: sc.getLocalProperty("spark.scheduler.pool")] * 2)
    finally:
        sc.setLocalProperty("spark.scheduler.pool", None)
    assert pools == ["silver_events", "silver_events"]


def test_configured_pools_are_known_to_the_scheduler(spark) -> None:
    # conf/local.yaml's pools, read by Spark from the allocation file build_spark wrote.
    from pipelines.settings import load_settings

    pools = load_settings().spark.pools
    assert pools, "the local conf declares the streaming queries' pools"
    scheduler = spark.sparkContext._jsc.sc()
    for name, conf in pools.items():
        pool = scheduler.getPoolForName(name)
        assert pool.isDefined(), name
        assert (pool.get().weight(), pool.get().minShare()) == (conf.weight, conf.min_share)
