"""Row labels: two settings that differ in anything their method reads never share a name, for every method in
`REDUCERS` (a method added is covered here by default)."""

import json
import warnings

import pytest
import torch
from conftest import make_image_folder, tiny_config_kwargs
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune.cli import main as cli_main
from hf_vitprune.methods import label, short_name
from hf_vitprune.reducers import REDUCERS
from hf_vitprune.token_reduction import PruningSettings, UnreadSettingWarning

TWO_VALUES = {
    "keep_rate": ("0.7", "0.5"),
    "fuse_pruned": ("on", "off"),
    "fusion_temperature": ("0.1", "0.3"),
    "renyi_alpha": ("1", "2"),
    "entropy_axis": ("query", "heads"),
    "tome_r": ("2", "3"),
    "bspf_block": ("1", "3"),
    "bspf_joint": ("mean", "product"),
    "pitome_margin": ("0.5", "0.7"),
    "pitome_alpha": ("1", "2"),
    "restore_patch_grid": ("off", "on"),
}
"""Two valid values of every setting a grid crosses (`prune_layers` is one value per run)."""


def test_every_setting_a_method_reads_has_two_values_here():
    read = {name for reducer in REDUCERS.values() for name in reducer.settings_used} - {"prune_layers"}
    assert read <= set(TWO_VALUES), f"add two values of {sorted(read - set(TWO_VALUES))} to TWO_VALUES"


def test_evaluate_gives_every_variant_of_every_method_its_own_name(tmp_path, monkeypatch):
    from hf_vitprune import evaluation

    monkeypatch.setattr(evaluation, "count_gmacs", lambda model: 1.0)  # labels only: fvcore's 133 traces take ~1 min
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs(num_labels=2).items() if k not in ("prune_layers", "keep_rate")}
    model = ViTForImageClassification(ViTConfig(**base, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1}))
    model.save_pretrained(tmp_path / "model")
    make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    argv = ["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "data"),
            "--skip_throughput", "--num_workers", "0", "--output_dir", str(tmp_path / "out"),
            "--pruning_method", *REDUCERS, "--prune_layers", "1", "2"]  # fmt: skip
    for name, values in TWO_VALUES.items():
        argv += [f"--{name}", *values]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadSettingWarning)  # each method is crossed only with what it reads
        assert cli_main(argv) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    names = [row["name"] for row in rows]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert {row["pruning_method"] for row in rows} == {None, *REDUCERS}
    pitome = [n for n in names if n.startswith("pitome")]
    assert len(pitome) == 16 and any("pitome_alpha=2" in n for n in pitome)  # keep x margin x alpha x restore


@pytest.mark.parametrize("method", sorted(REDUCERS))
def test_labels_show_every_setting_the_method_reads(method):
    """For each setting the method reads, two values give two short names and, where the table has no own column
    for it, two table labels."""
    for name in REDUCERS[method].settings_used:
        if name == "prune_layers":
            continue
        values = [_value(name, v) for v in TWO_VALUES[name]]
        settings = [PruningSettings(pruning_method=method, **{name: v}) for v in values]
        explicit = (name,)
        assert short_name(settings[0], explicit) != short_name(settings[1], explicit), name
        if name not in ("keep_rate", "fuse_pruned", "fusion_temperature"):  # the table's keep-rate / fusion columns
            assert label(settings[0]) != label(settings[1]), name


def _value(name, text):
    if text in ("on", "off"):
        return text == "on"
    if name in ("entropy_axis", "bspf_joint"):
        return text
    return int(text) if name in ("tome_r", "bspf_block") else float(text)
