"""SparkSession factory: Delta and the Kafka source on the classpath, settings from conf/."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pyspark.sql import SparkSession

from pipelines import jars, jvm
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


def build_spark(spark: SparkSettings, extra: dict[str, str] | None = None) -> SparkSession:
    """Create (or return the running) SparkSession configured for the lakehouse.

    An empty `master` leaves it to spark-submit; `fetch_jars: false` leaves the
    classpath to spark-submit's `--packages` and `--jars` (see conf/cluster.yaml).
    """
    # Python workers must be this interpreter (the venv), not whatever `python3`
    # is first on PATH: silver's classifier needs the venv's pyarrow and schemas.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
    if spark.pools:
        builder = builder.config("spark.scheduler.allocation.file", _pools_file(spark.pools))
    for key, value in {**spark.extra_conf, **(extra or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
