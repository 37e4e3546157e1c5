"""The sweep's matched-GMACs search: equal to counting every setting."""

import pytest
import torch
from conftest import tiny_config_kwargs

import hf_vitprune.sweep as sweep
from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.evaluation import Variant
from hf_vitprune.measure import count_gmacs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(image_size=64, patch_size=8, prune_layers=[1, 2]))  # 64 patches
    return PrunedViTForImageClassification(config).eval()


@pytest.mark.parametrize(
    "template",
    [Variant({"pruning_method": "variance", "keep_rate": 0.7, "fuse_pruned": True}),
     Variant({"pruning_method": "tome", "tome_r": 4})],
    ids=["prune", "tome"],
)  # fmt: skip
def test_bisection_finds_what_counting_every_setting_finds(model, template, monkeypatch):
    """Real fvcore counts of every setting (once per token schedule), then the search against the exhaustive rule
    (closest GMACs, ties: the first setting in order) for targets across the whole range and beyond it."""
    counts = {}

    def count_once(m):
        schedule = tuple(m.config.token_schedule(64))
        if schedule not in counts:
            counts[schedule] = count_gmacs(m)
        return counts[schedule]

    monkeypatch.setattr(sweep, "count_gmacs", count_once)
    candidates = sweep.matching_candidates(template, max_tome_r=40)
    every = []
    for candidate in candidates:
        with model.pruning(**candidate.changes):
            every.append(count_once(model))
    unpruned = max(every)
    for fraction in (1.01, 1.0, 0.999, 0.97, 0.9, 0.8, 0.75, 0.6, 0.5, 0.45, 0.3, 0.2):
        target = fraction * unpruned
        expected = min(range(len(every)), key=lambda i: (abs(every[i] - target), i))
        found = sweep.match_gmacs(model, target, template, max_tome_r=40)
        assert found == (candidates[expected], every[expected]), fraction
    assert model.config.pruning_method == "variance" and model.config.keep_rate == 0.5  # left as it was


def test_the_matched_table_gives_standard_errors_drops_and_both_speedups():
    from hf_vitprune.sweep import matched_table

    row = dict(speedup=1.0, speedup_min=1.0, speedup_max=1.0, latency_speedup=1.0)
    rows = [
        {**row, "name": "unpruned", "series": "unpruned", "gmacs": 1.2, "top1": 80.0, "matched_target": None},
        {**row, "name": "evit@0.7+fusion", "series": "evit + fusion", "gmacs": 0.8, "top1": 75.0,
         "matched_target": None},
        {"name": "tome(r=8)", "series": "ToMe", "gmacs": 0.61, "top1": 70.0, "matched_target": 0.6,
         "speedup": 1.9, "speedup_min": 1.8, "speedup_max": 2.0, "latency_speedup": 1.3},
        {"name": "pitome@0.5", "series": "PiToMe", "gmacs": 0.6, "top1": 72.0, "matched_target": 0.6,
         "speedup": float("nan"), "latency_speedup": None},
    ]  # fmt: skip
    text = matched_table(rows, images=400)
    # s.e. sqrt(0.7 * 0.3 / 400) = 2.29 %; drop 70 - 80; best top-1 first; the grid row (no target) is left out
    lines = text.splitlines()
    assert lines[2] == "| — | unpruned | unpruned | 1.200 | 80.00 ± 2.00 | +0.00 | 1.00× (1.00–1.00) | 1.00× |"
    assert lines[3] == "| 0.6 (0.50×) | PiToMe | pitome@0.5 | 0.600 | 72.00 ± 2.24 | -8.00 | – | – |"
    assert lines[4] == "| 0.6 (0.50×) | ToMe | tome(r=8) | 0.610 | 70.00 ± 2.29 | -10.00 | 1.90× (1.80–2.00) | 1.30× |"
    assert "evit" not in text and len(lines) == 5


def test_the_matched_table_keeps_every_setting_of_a_method_apart(tmp_path):
    """`sweep --pruning_method pitome --pitome_alpha 1 2 --match_gmacs ...`: one matched row and one plot line per
    alpha, each named by its setting."""
    import json

    from conftest import make_image_folder
    from transformers import ViTConfig, ViTForImageClassification

    from hf_vitprune.cli import main as cli_main

    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs(num_labels=2).items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base, id2label={0: "cat", 1: "dog"})).save_pretrained(tmp_path / "model")
    make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    out = tmp_path / "sweep"
    argv = ["sweep", "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "data"),
            "--pruning_method", "pitome", "--pitome_alpha", "1", "2", "--keep_rate", "0.75", "--match_gmacs", "0.004",
            "--skip_throughput", "--num_workers", "0", "--output_dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    matched = [r for r in rows if r["matched_target"] is not None]
    assert sorted(r["pitome_alpha"] for r in matched) == [1.0, 2.0]
    assert len({r["series"] for r in matched}) == 2 and len({r["name"] for r in rows}) == len(rows)
    table = (out / "matched_gmacs.md").read_text()
    assert "| PiToMe |" in table and "| PiToMe [pitome_alpha=2] |" in table
