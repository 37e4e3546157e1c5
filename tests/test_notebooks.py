"""Every notebook runs top to bottom, headless, on the offline source (../shared) with a small budget."""

import json
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


def _stdout(notebook) -> str:
    return "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.output_type == "stream" and o.get("name") == "stdout"
    )  # fmt: skip


def _check_quickstart(stdout: str, workdir: Path) -> None:
    # DeiT-Tiny at keep 0.7: 196 -> 138 (+1) -> 98 (+1) -> 70 (+1)
    assert "patches kept after each pruning layer: [138, 98, 70]" in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| keep rate")]
    assert [row.split("|")[1].strip() for row in rows] == ["unpruned", "0.9", "0.7", "0.5"]
    gmacs = [float(row.split("|")[3]) for row in rows]
    assert gmacs[0] == pytest.approx(1.26, abs=0.01) and gmacs == sorted(gmacs, reverse=True)
    assert all(0 <= float(row.split("|")[2]) <= 100 for row in rows)


def _check_benchmark(stdout: str, workdir: Path) -> None:
    report = json.loads((workdir / "sweep" / "sweep.json").read_text())
    series = {row["series"] for row in report["rows"]}
    assert series == {"unpruned", "variance + fusion", "evit + fusion", "ToMe"}  # the small budget's methods
    assert (workdir / "sweep" / "top1_vs_gmacs.png").stat().st_size > 0
    assert "| 0.8 (" in (workdir / "sweep" / "matched_gmacs.md").read_text()


def _check_finetune(stdout: str, workdir: Path) -> None:
    results = json.loads((workdir / "finetuned-pruned-vit" / "pruning_results.json").read_text())
    assert results["pruning"]["pruning_method"] == "variance" and results["pruning"]["keep_rate"] == 0.7
    assert 0 <= results["metrics"]["pruned"]["top1"] <= 100
    assert results["metrics"]["pruned"]["gmacs"] < results["metrics"]["unpruned"]["gmacs"]
    assert "model-index" in (workdir / "finetuned-pruned-vit" / "README.md").read_text()
    predictions = [line for line in stdout.splitlines() if line.startswith("[{") and "'label'" in line]
    assert predictions and predictions[-1].count("'score'") == 3  # the pipeline's top-3


CHECKS = {"quickstart.ipynb": _check_quickstart, "benchmark.ipynb": _check_benchmark,
          "finetune_imagenet100.ipynb": _check_finetune}  # fmt: skip


@pytest.mark.slow
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
    CHECKS[path.name](_stdout(notebook), workdir)
