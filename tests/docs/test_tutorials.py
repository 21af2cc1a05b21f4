"""Every tutorial (docs/tutorials/*.py, jupytext percent scripts) executes as a notebook.

Each is converted with jupytext and run cell by cell in a fresh Python kernel by nbclient, at
the small sizes of ``DIFFLAB_TUTORIAL_FAST=1``; a failing cell (every tutorial asserts what it
claims) fails the test. Set ``DIFFLAB_TUTORIAL_FULL=1`` to run them at the learner's full size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def needs(module: str):
    """The docs extra's module; a skip on a developer's machine without it, an error in CI."""
    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module, reason="needs the docs extra: pip install -e '.[docs]'")


jupytext = needs("jupytext")
nbclient = needs("nbclient")

TUTORIALS = sorted((Path(__file__).resolve().parents[2] / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 600


def test_the_eight_tutorials_are_there():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes(path, tmp_path, monkeypatch):
    full = os.environ.get("DIFFLAB_TUTORIAL_FULL") == "1"
    monkeypatch.setenv("DIFFLAB_TUTORIAL_FAST", "0" if full else "1")
    monkeypatch.setenv("DIFFLAB_TUTORIAL_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()   # raises CellExecutionError (with the cell and its traceback) on any failure
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs), \
        f"{path.name} showed no figure"
