"""What the notebooks share: lakehouse tables read with the `deltalake` (Rust) reader,
so a notebook runs in seconds with no Spark and no JVM, and a note in the notebook
instead of an error when a table is missing or empty.

The lakehouse root comes from the project settings (`conf/local.yaml`, or the file
named by LAKEHOUSE_CONF, with LAKEHOUSE_ROOT and the other overrides), as for every
`lakehouse` command.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]  # pandas ships no types; no stubs pinned
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipelines import catalog
from pipelines.settings import Settings, load_settings


def settings() -> Settings:
    """The project settings as the `lakehouse` command would read them now."""
    return load_settings()


def root() -> str:
    return settings().lakehouse.root


def read_table(layer: str, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The current version of `layer.table` as a pandas frame (only `columns`, when
    given). A table that does not exist reads as an empty frame; `has_rows` tells the
    reader which of the two it was (`frame.attrs` keeps the table's name and state)."""
    path = catalog.table(f"{layer}.{table}").path(settings())
    try:
        frame = DeltaTable(path).to_pandas(columns=columns)
        missing = False
    except TableNotFoundError:
        frame = pd.DataFrame(columns=columns or [])
        missing = True
    frame.attrs.update(table=f"{layer}.{table}", path=path, missing=missing)
    return frame


def has_rows(frame: pd.DataFrame, empty: str | None = None) -> bool:
    """True when `frame` (from `read_table`) has rows; otherwise says in the notebook
    that its table does not exist or is empty (`empty`: what an empty table means
    here), and returns False."""
    if len(frame):
        return True
    name = frame.attrs.get("table", "the table")
    if frame.attrs.get("missing"):
        note(f"**{name}** does not exist yet (looked in `{frame.attrs.get('path')}`): "
             "nothing has written it on this lakehouse.")
    else:
        note(empty or f"**{name}** exists but has no rows yet.")
    return False


def note(markdown: str) -> None:
    """Shows a line of Markdown in the notebook (plain text outside one)."""
    # IPython comes with the notebook kernel; the package itself does not need it.
    from IPython import get_ipython
    from IPython.display import Markdown, display

    if get_ipython() is None:
        print(markdown)
    else:
        display(Markdown(markdown))


def as_text(value: bytes | str | None, limit: int = 120) -> str:
    """A raw Kafka key or value for display only: bytes decoded as UTF-8 with U+FFFD
    where they are not, cut to `limit` characters. Bronze and quarantine keep the exact
    bytes; this never goes back into a table."""
    if value is None:
        return ""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if not text.strip():
        return f"(blank: {text!r})"
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# The order data flows through the layers, for listings; a layer not named here
# (a new one) comes after them.
LAYER_ORDER = ("bronze", "silver", "gold", "features", "ops")


def _local_tables() -> dict[tuple[str, str], Path]:
    """`table_paths`, each with its folder: found on disk, so a table the catalog does
    not know is listed too."""
    base = Path(root())
    if not base.is_dir():
        return {}
    found = {
        (log.parent.parent.name, log.parent.name): log.parent
        for log in base.glob("*/*/_delta_log")
        if not log.parent.parent.name.startswith("_")
    }

    def flow(name: tuple[str, str]) -> tuple[int, str, str]:
        layer, table = name
        rank = LAYER_ORDER.index(layer) if layer in LAYER_ORDER else len(LAYER_ORDER)
        return rank, layer, table

    return {name: found[name] for name in sorted(found, key=flow)}


def table_paths() -> list[tuple[str, str]]:
    """(layer, table) of every Delta table under a local lakehouse root, layer by layer
    in the order data flows; `_checkpoints` and the like are not tables. Empty for a
    remote root."""
    return list(_local_tables())


def table_summary() -> pd.DataFrame:
    """One row per table: version, rows, data files, their bytes and the last commit
    (to the second), read from the Delta log alone: the numbers of `lakehouse status`.

    pipelines.ops.readers.LogReader reads the same facts, but its module imports
    pyspark, which a notebook must not."""
    rows = []
    for (layer, table), path in _local_tables().items():
        dt = DeltaTable(str(path))
        files = pa.table(dt.get_add_actions())
        last = dt.history(1)[0]
        rows.append({
            "layer": layer,
            "table": table,
            "version": dt.version(),
            "rows": _rows(dt, files),
            "files": files.num_rows,
            "bytes": pc.sum(files["size_bytes"]).as_py() or 0,
            "last_commit": datetime.fromtimestamp(last["timestamp"] // 1000, tz=UTC),
            "last_operation": last["operation"],
        })
    return pd.DataFrame(rows, columns=["layer", "table", "version", "rows", "files", "bytes",
                                       "last_commit", "last_operation"])


def _rows(dt: DeltaTable, files: pa.Table) -> int:
    # The add actions' numRecords, as Spark's count() uses them. Files written without
    # statistics, or rows hidden by deletion vectors, need a scan (of no column).
    has_deletions = "deletionVectors" in (dt.protocol().reader_features or [])
    if files["num_records"].null_count or has_deletions:
        return pa.table(dt.scan(columns=[])).num_rows
    return pc.sum(files["num_records"]).as_py() or 0


def stream_checkpoints() -> pd.DataFrame:
    """One row per streaming query checkpoint under a local root: the last batch it
    planned, the last it committed (a planned but uncommitted batch is in flight or was
    interrupted) and when that commit was written."""
    # checkpoint("") is the folder that holds every query's checkpoint.
    base = Path(settings().lakehouse.checkpoint(""))
    rows = []
    for checkpoint in sorted(p for p in base.glob("*") if p.is_dir()):
        planned = _batch_files(checkpoint / "offsets")
        committed = _batch_files(checkpoint / "commits")
        last = max(committed) if committed else None
        rows.append({
            "query": checkpoint.name,
            "last_planned_batch": max(planned) if planned else None,
            "last_committed_batch": last,
            "committed_at": (
                datetime.fromtimestamp(int(committed[last].stat().st_mtime), tz=UTC)
                if last is not None else None
            ),
        })
    return pd.DataFrame(rows, columns=["query", "last_planned_batch", "last_committed_batch",
                                       "committed_at"])


def _batch_files(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.name.isdigit()}


def use_chart_style() -> None:
    """One look for every chart of the notebooks."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.figsize": (10, 4),
        "figure.dpi": 100,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titleweight": "bold",
        "axes.titlelocation": "left",
    })
