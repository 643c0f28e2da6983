"""The exploration notebooks stay in step with the code: every cell parses, every
`pipelines` import resolves, every table they read is one the lakehouse has."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest

from pipelines.ops.catalog import TABLES

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KNOWN = {(t.layer, t.table) for t in TABLES}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_is_current(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for source in code:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("pipelines"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
        for layer, name in re.findall(r'table\("(\w+)", "(\w+)"\)', source):
            assert (layer, name) in KNOWN, f"{path.name} reads unknown table {layer}.{name}"


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 2
