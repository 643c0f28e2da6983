"""What `lakehouse status` reads, two ways: `LogReader` (the default) reads the Delta logs
with the `deltalake` package and checkpoints as local files, in well under a second;
`SparkReader` reads both through a SparkSession, for storage only Spark's Hadoop
filesystems reach (`lakehouse status --spark`).

Both answer the same questions with the same numbers (pipelines.ops.status asks them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from delta.tables import DeltaTable as SparkDeltaTable
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from pipelines.io.delta import latest_commit

# (version, operationMetrics) of one commit.
Commit = tuple[int, dict[str, Any] | None]


class LakeReader(Protocol):
    def is_table(self, path: str) -> bool: ...

    def table_facts(self, path: str) -> dict[str, Any]:
        """version, rows, files, bytes, last_commit, last_operation of a Delta table."""
        ...

    def counts(self, path: str, column: str) -> dict[Any, int]:
        """Rows per value of `column` ({} when there is no table at `path`)."""
        ...

    def history(self, path: str, limit: int) -> list[Commit]:
        """The latest `limit` commits, newest first."""
        ...

    def batch_ids(self, directory: str) -> set[int]:
        """The numbered files of a checkpoint folder (`offsets`, `commits`)."""
        ...

    def read_text(self, path: str) -> str: ...


class LogReader:
    """Delta tables through their logs (`deltalake`), checkpoints as local files.

    Each table is loaded once per reader, so one report sees one snapshot of it."""

    def __init__(self) -> None:
        self._tables: dict[str, DeltaTable] = {}

    def _table(self, path: str) -> DeltaTable:
        if path not in self._tables:
            self._tables[path] = DeltaTable(path)
        return self._tables[path]

    def is_table(self, path: str) -> bool:
        return path in self._tables or DeltaTable.is_deltatable(path)

    def table_facts(self, path: str) -> dict[str, Any]:
        dt = self._table(path)
        files = pa.table(dt.get_add_actions())
        last = dt.history(1)[0]
        return {
            "version": dt.version(),
            "rows": self._rows(dt, files),
            "files": files.num_rows,
            "bytes": pc.sum(files["size_bytes"]).as_py() or 0,
            "last_commit": datetime.fromtimestamp(last["timestamp"] / 1000, UTC),
            "last_operation": last["operation"],
        }

    @staticmethod
    def _rows(dt: DeltaTable, files: pa.Table) -> int:
        # The add actions' numRecords, as Spark's count() uses them. Files written without
        # statistics, or rows hidden by deletion vectors, need a scan (of no column).
        has_deletions = "deletionVectors" in (dt.protocol().reader_features or [])
        if files["num_records"].null_count or has_deletions:
            return pa.table(dt.scan(columns=[])).num_rows
        return pc.sum(files["num_records"]).as_py() or 0

    def counts(self, path: str, column: str) -> dict[Any, int]:
        if not self.is_table(path):
            return {}
        values = pa.table(self._table(path).scan(columns=[column]))
        grouped = values.group_by(column).aggregate([([], "count_all")])
        return dict(zip(grouped[column].to_pylist(), grouped["count_all"].to_pylist(),
                        strict=True))

    def history(self, path: str, limit: int) -> list[Commit]:
        return [(int(c["version"]), c.get("operationMetrics"))
                for c in self._table(path).history(limit)]

    def batch_ids(self, directory: str) -> set[int]:
        folder = _local(directory)
        if not folder.is_dir():
            return set()
        return {int(f.name) for f in folder.iterdir() if f.name.isdigit()}

    def read_text(self, path: str) -> str:
        return _local(path).read_text(encoding="utf-8")


def _local(path: str) -> Path:
    if path.startswith("file:"):
        return Path(path.removeprefix("file:").removeprefix("//"))
    if "://" in path:
        raise ValueError(
            f"{path}: the Delta-log status reads local checkpoints only; "
            "`lakehouse status --spark` reads any storage Spark can"
        )
    return Path(path)


class SparkReader:
    """Delta tables and checkpoints through a SparkSession and its Hadoop filesystems."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def is_table(self, path: str) -> bool:
        return SparkDeltaTable.isDeltaTable(self.spark, path)

    def table_facts(self, path: str) -> dict[str, Any]:
        dt = SparkDeltaTable.forPath(self.spark, path)
        last = latest_commit(dt)
        version = int(last["version"])
        detail = dt.detail().first()
        assert detail is not None  # DESCRIBE DETAIL has one row per table
        # Pinned to `version` so rows and version agree under a concurrent writer; Delta
        # answers count() from the log's per-file numRecords, without reading data.
        rows = self.spark.read.format("delta").option("versionAsOf", version).load(path).count()
        return {
            "version": version,
            "rows": int(rows),
            "files": int(detail["numFiles"]),
            "bytes": int(detail["sizeInBytes"]),
            # Spark gives a naive local time; the report holds aware UTC, as LogReader's.
            "last_commit": last["timestamp"].astimezone(UTC),
            "last_operation": last["operation"],
        }

    def counts(self, path: str, column: str) -> dict[Any, int]:
        if not self.is_table(path):
            return {}
        df = self.spark.read.format("delta").load(path)
        return {r[0]: int(r[1]) for r in df.groupBy(column).count().collect()}

    def history(self, path: str, limit: int) -> list[Commit]:
        rows = SparkDeltaTable.forPath(self.spark, path).history(limit).collect()
        return [(int(r["version"]), r["operationMetrics"]) for r in rows]

    @property
    def _jvm(self) -> Any:
        jvm = self.spark.sparkContext._jvm
        assert jvm is not None  # set while the session runs
        return jvm

    def _fs(self, path: str) -> tuple[Any, Any]:
        jvm = self._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        return hpath.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()), hpath

    def batch_ids(self, directory: str) -> set[int]:
        fs, hpath = self._fs(directory)
        if not fs.exists(hpath):
            return set()
        names = (s.getPath().getName() for s in fs.listStatus(hpath))
        return {int(n) for n in names if n.isdigit()}

    def read_text(self, path: str) -> str:
        fs, hpath = self._fs(path)
        stream = fs.open(hpath)
        try:
            io_utils = self._jvm.org.apache.commons.io.IOUtils
            return io_utils.toString(stream, "UTF-8")
        finally:
            stream.close()
