"""Shared fixtures: one local Spark session and one real Kafka broker per test run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

from pipelines.settings import PROJECT_ROOT, Settings, load_settings

# The `lakehouse` command of this virtual environment.
LAKEHOUSE = str(Path(sys.executable).with_name("lakehouse"))
# Tables printed to a pipe are as wide as a terminal would be: names not cut short.
WIDE = {"COLUMNS": "200"}


@dataclass(frozen=True)
class Lake:
    """Settings of one isolated lakehouse (own root, own topic names) plus the
    environment that reproduces them in a child `lakehouse` process."""

    settings: Settings
    env: dict[str, str]

    def cli(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess:
        """`lakehouse ARGS` as a user types it: the installed console script."""
        return subprocess.run(
            [LAKEHOUSE, *args],
            env={**os.environ, **WIDE, **self.env}, capture_output=True, text=True,
            timeout=timeout, check=check, cwd=PROJECT_ROOT,
        )

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [LAKEHOUSE, *args],
            env={**os.environ, **WIDE, **self.env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
        )


@pytest.fixture(scope="session")
def broker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Broker and Spark overrides shared by every test lakehouse."""
    kafka_dir = tmp_path_factory.mktemp("kafka")
    port = free_port()
    return {
        "LAKEHOUSE_KAFKA_BOOTSTRAP": f"localhost:{port}",
        "LAKEHOUSE_KAFKA__EMBEDDED__PORT": str(port),
        "LAKEHOUSE_KAFKA__EMBEDDED__CONTROLLER_PORT": str(free_port()),
        "LAKEHOUSE_KAFKA__EMBEDDED__DATA_DIR": str(kafka_dir / "data"),
        "LAKEHOUSE_KAFKA__EMBEDDED__LOG_DIR": str(kafka_dir / "logs"),
        "LAKEHOUSE_KAFKA__EMBEDDED__HEAP": "320m",
        "LAKEHOUSE_SPARK__SHUFFLE_PARTITIONS": "2",
        "LAKEHOUSE_SPARK__DRIVER_MEMORY": "2g",
        "LAKEHOUSE_STREAMING__TRIGGER": "1 second",
    }


@pytest.fixture(scope="session")
def kafka(broker_env: dict[str, str]) -> Iterator[Settings]:
    """A real KRaft broker for the whole run, stopped at the end."""
    from pipelines.runtime.kafka import embedded

    settings = load_settings(env=broker_env)
    embedded.up(settings.kafka)
    try:
        yield settings
    finally:
        embedded.down(settings.kafka)


@pytest.fixture(scope="session")
def spark(broker_env: dict[str, str]):  # noqa: ANN201
    from pipelines.runtime.spark import build_spark

    session = build_spark(load_settings(env=broker_env).spark)
    yield session
    session.stop()


_lake_counter = iter(range(1_000_000))


def _new_lake(broker_env: dict[str, str], folder: Path) -> Lake:
    n = next(_lake_counter)
    env = {**broker_env, "LAKEHOUSE_ROOT": str(folder / "lake"),
           "LAKEHOUSE_SIMULATE__MANIFEST_DIR": str(folder / "manifests")}
    base = load_settings(env=broker_env)
    for kind, topic in base.kafka.topics.items():
        env[f"LAKEHOUSE_KAFKA__TOPICS__{kind.upper()}__NAME"] = f"t{n}.{topic.name}"
    return Lake(load_settings(env=env), env)


@pytest.fixture
def lake(broker_env: dict[str, str], tmp_path: Path) -> Lake:
    """A fresh lakehouse root and fresh topic names for one test."""
    return _new_lake(broker_env, tmp_path)


@dataclass(frozen=True)
class DemoLake(Lake):
    """A lakehouse that `lakehouse demo` filled, with what the demo printed."""

    demo: subprocess.CompletedProcess


# Small enough to take about a minute, large enough for every table (a retrain, late
# events, quarantine of every code).
DEMO_EVENTS = 3000


@pytest.fixture(scope="session")
def small_lakehouse(
    kafka: Settings, broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> DemoLake:
    """One small lakehouse for the whole run, made the way a user makes it: `lakehouse
    demo` in a child process (broker, simulation, every layer, reconcile, retrain,
    quality). Tests that add to it only add (the command tests, the notebooks)."""
    lake = _new_lake(broker_env, tmp_path_factory.mktemp("small_lakehouse"))
    demo = lake.cli("demo", "--events", str(DEMO_EVENTS), "--seed", "42", check=False)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    return DemoLake(lake.settings, lake.env, demo)


@pytest.fixture
def kafka_lake(kafka: Settings, lake: Lake) -> Lake:
    """`lake` with its topics created on the session broker."""
    from pipelines.runtime.kafka.embedded import ensure_topics

    ensure_topics(lake.settings.kafka)
    return lake
