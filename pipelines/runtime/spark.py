"""SparkSession factory: Delta and the Kafka source on the classpath, settings from conf/."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pyspark import SparkContext
from pyspark.sql import SparkSession

from pipelines.catalog import STREAMS
from pipelines.runtime import jars, jvm
from pipelines.settings import PoolSettings, SparkSettings


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def connector_jars(spark: SparkSettings) -> list[str]:
    """Local paths of the Delta + Kafka connector jars (fetched by Maven once) and of
    the project's own jar (silver's fast path, compiled once)."""
    fetched = jars.fetch("spark", spark.packages, provided_dir=pyspark_jars_dir())
    return [*map(str, fetched), str(jvm.project_jar(pyspark_jars_dir()))]


def fair_pools_xml(pools: dict[str, PoolSettings]) -> str:
    """Spark's FAIR scheduler allocation file declaring `pools` (FIFO inside each)."""
    entries = "".join(
        f"  <pool name={quoteattr(name)}><schedulingMode>FIFO</schedulingMode>"
        f"<weight>{pool.weight}</weight><minShare>{pool.min_share}</minShare></pool>\n"
        for name, pool in pools.items()
    )
    return f'<?xml version="1.0"?>\n<allocations>\n{entries}</allocations>\n'


def _pools_file(pools: dict[str, PoolSettings]) -> str:
    """The allocation file of `pools` in the temp folder, named by its content (so
    sessions with other pools never share one), written atomically."""
    text = fair_pools_xml(pools)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"lakehouse-pools-{digest}.xml"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    return str(path)


def log_file(spark: SparkSettings) -> Path:
    """Where this process's JVM writes its log (and its Python workers' stderr)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(spark.log_dir) / f"spark-{stamp}-{os.getpid()}.log"


@contextlib.contextmanager
def _children_write_to(path: Path) -> Iterator[None]:
    """Processes started inside inherit `path` as stdout and stderr; this process's own
    streams are restored on exit. The JVM that pyspark launches (and the Python workers
    it starts) thus log to the file, not among the tool's own output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _launches_jvm() -> bool:
    """Whether getOrCreate will start a JVM (not under spark-submit, where the JVM
    started Python and owns the console)."""
    return SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ


def build_spark(
    spark: SparkSettings, extra: dict[str, str] | None = None, log_to: Path | None = None
) -> SparkSession:
    """Create (or return the running) SparkSession configured for the lakehouse.

    An empty `master` leaves it to spark-submit; `fetch_jars: false` leaves the
    classpath to spark-submit's `--packages` and `--jars` (see conf/cluster.yaml).
    A JVM started here logs at WARN to `log_to` (default: a new `log_file`), not to
    the console.
    """
    # Python workers must be this interpreter (the venv), not whatever `python3`
    # is first on PATH: silver's classifier needs the venv's pyarrow and schemas.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if spark.master.startswith("local"):
        # A local driver needs no routable address (and Spark warns when the host
        # name resolves to loopback).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(spark.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
        .config("spark.sql.shuffle.partitions", str(spark.shuffle_partitions))
        .config("spark.driver.memory", spark.driver_memory)
    )
    if spark.master:
        builder = builder.master(spark.master)
    if spark.fetch_jars:
        builder = builder.config("spark.jars", ",".join(connector_jars(spark)))
    # Every streaming query runs in the pool of its name: each gets a declared pool
    # (conf's settings or the defaults), so Spark never creates one with a warning.
    pools = {**{s.query: PoolSettings() for s in STREAMS}, **spark.pools}
    builder = builder.config("spark.scheduler.allocation.file", _pools_file(pools))
    options = {**spark.extra_conf, **(extra or {})}
    if not _launches_jvm():
        return _configured(builder, options).getOrCreate()
    log4j = f"-Dlog4j2.configurationFile={Path(__file__).with_name('log4j2.properties').as_uri()}"
    java_options = " ".join(filter(None, [options.get(_DRIVER_JAVA_OPTIONS), log4j]))
    configured = _configured(builder, {**options, _DRIVER_JAVA_OPTIONS: java_options})
    with _children_write_to(log_to or log_file(spark)):
        return configured.getOrCreate()


_DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def _configured(builder: SparkSession.Builder, options: dict[str, str]) -> SparkSession.Builder:
    for key, value in options.items():
        builder = builder.config(key, value)
    return builder
