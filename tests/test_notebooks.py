"""The notebooks run: every one is executed, cell by cell, against a small lakehouse and
against an empty one, and draws its charts.

By hand, against any lakehouse (prints the time and the charts of each notebook):
    LAKEHOUSE_ROOT=/path/to/lakehouse .venv/bin/python tests/test_notebooks.py
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time
from pathlib import Path
from typing import Protocol

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120

# Charts each notebook draws on a lakehouse with every layer filled: the ones that do
# not depend on something having gone wrong (late events) or on several batches.
MIN_IMAGES = {
    # quarantine by code, plays over time, top media and skip rates, session funnel,
    # daily active users, model against the popularity baseline
    "01_explore_lakehouse.ipynb": 6,
    # table rows and sizes, records accounted per topic, quarantine by code
    "02_operations.ipynb": 3,
}

# Appended to every notebook run: the notebooks read Delta with deltalake, never Spark.
NO_SPARK = "import sys\nassert 'pyspark' not in sys.modules, 'a notebook imported pyspark'"


class SmallLakehouse(Protocol):
    """What the notebook tests use of conftest's `small_lakehouse`: the environment
    (LAKEHOUSE_ROOT and the other overrides) that points a process at it."""

    env: dict[str, str]


def execute_notebook(path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Runs every cell of the notebook at `path` in a kernel of this interpreter, with
    `env` added to the environment, from the notebooks folder as Jupyter would; raises
    nbclient's CellExecutionError on the first cell that fails. Returns the executed
    notebook (the file is left as it is)."""
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(NO_SPARK))
    # No kernel folders: only ipykernel's own spec, which runs sys.executable, so a
    # `python3` kernel installed elsewhere on the machine is never picked up.
    kernel = KernelManager(kernel_name="python3",
                           kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(
        notebook, km=kernel, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(env={**os.environ, **env})
    finally:
        # nbclient shuts down only the kernels it made itself.
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    return notebook


def images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs
    )


def errors_and_warnings(notebook: nbformat.NotebookNode) -> list[str]:
    """Text written to stderr by any cell (warnings included): a notebook that runs
    clean prints none."""
    return [
        output.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stderr"
    ]


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == sorted(MIN_IMAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path) -> None:
    """Valid, without outputs (the repo stays small and diffs stay readable), and
    reading only tables the catalog knows."""
    from pipelines.catalog import TABLES

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"outputs in {path.name}"
        source = "\n".join(
            line for line in cell.source.splitlines() if not line.startswith("%")
        )
        imports = {a.name.split(".")[0] for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Import) for a in node.names}
        imports |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert "pyspark" not in imports and "delta" not in imports, path.name
        known = {(t.layer, t.table) for t in TABLES}
        for layer, table in re.findall(r'read_table\(\s*"(\w+)",\s*"(\w+)"', cell.source):
            assert (layer, table) in known, f"{path.name} reads unknown {layer}.{table}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_an_empty_lakehouse(path: Path, tmp_path: Path) -> None:
    """No table yet: every cell still runs, and says what is missing."""
    notebook = execute_notebook(path, {"LAKEHOUSE_ROOT": str(tmp_path / "lake")})
    assert not errors_and_warnings(notebook)
    text = "".join(
        output.get("data", {}).get("text/markdown", "")
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "does not exist yet" in text or "No Delta table" in text


# Needs the small lakehouse that the pipeline itself builds (Kafka + Spark).
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_draws_its_charts(path: Path, small_lakehouse: SmallLakehouse) -> None:
    notebook = execute_notebook(path, small_lakehouse.env)
    assert not errors_and_warnings(notebook)
    assert images(notebook) >= MIN_IMAGES[path.name]


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith("LAKEHOUSE_")}
    print(f"lakehouse: {env.get('LAKEHOUSE_ROOT', '(from conf)')}")
    for path in NOTEBOOKS:
        started = time.perf_counter()
        notebook = execute_notebook(path, env)
        print(f"{path.name}: {time.perf_counter() - started:.1f} s, {images(notebook)} charts "
              f"(at least {MIN_IMAGES[path.name]}), stderr: {errors_and_warnings(notebook)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
