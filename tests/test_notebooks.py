"""Every notebook runs top to bottom, headless, on the offline source (../shared) with a small budget."""

import os
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, SHARED, needs_shared
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist_with_badge_and_install_cell():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "finetune_imagenet100.ipynb", "benchmark.ipynb"}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert "colab-badge.svg" in notebook.cells[0].source, path.name
        assert "%pip install" in notebook.cells[1].source, path.name
        assert 'SOURCE = os.environ.get("HF_VITPRUNE_SOURCE", "hub")' in notebook.cells[2].source, path.name
        # committed without outputs
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path.name


@needs_shared
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_offline(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    # run from a copy of the notebooks folder's location so "../../shared" resolves to the shared folder
    workdir = tmp_path / "project" / "notebooks"
    workdir.mkdir(parents=True)
    (tmp_path / "shared").symlink_to(SHARED.resolve())
    monkeypatch.setenv("HF_VITPRUNE_SOURCE", "local")
    monkeypatch.setenv("HF_VITPRUNE_BUDGET", "small")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    assert os.listdir(workdir) is not None and Path(workdir).exists()
