"""The scripts under benchmarks/ that turn run outputs into the README's tables."""

import importlib.util
import json

import pytest
from conftest import REPO


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder, method, top1, ips, train_ips):
    folder.mkdir()
    (folder / "pruning_results.json").write_text(json.dumps({
        "pruning": {"pruning_method": method, "keep_rate": 0.7, "fuse_pruned": True, "patch_stride": 16},
        "metrics": {"pruned": {"top1": top1, "top5": 99.0, "gmacs": 1.0, "images_per_s": ips,
                               "train_images_per_s": train_ips, "tokens": "196"}},
        "protocol": {"top1": "10 images", "throughput": "batch 2"},
    }))  # fmt: skip


def test_finetune_table_computes_speedups_against_the_reference(tmp_path):
    finetune_table = _load("finetune_table")
    _run(tmp_path / "base", None, 90.0, 50.0, 10.0)
    _run(tmp_path / "pruned", "variance", 89.5, 75.0, 14.0)
    text = finetune_table.main([str(tmp_path / "base"), str(tmp_path / "pruned"), "--output", str(tmp_path / "t.md")])
    assert "| base | unpruned | 16 | 196 | 90.00 | 99.00 | 1.000 | 50.0 | 1.00× | 10.0 | 1.00× |" in text
    assert (
        "| pruned | variance, keep 0.7, fusion | 16 | 196 | 89.50 | 99.00 | 1.000 | 75.0 | 1.50× | 14.0 | 1.40× |"
        in text
    )
    assert (tmp_path / "t.md").read_text() == text
    with pytest.raises(FileNotFoundError, match="did the run"):
        finetune_table.main([str(tmp_path / "missing")])
