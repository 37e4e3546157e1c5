"""Bad input, round two (issue 29): runs over no image, export's side file, string booleans, set-time grid checks,
refused pickles, a config's type errors. Each case is a clear error (exit status 2 on the command line) or a correct
result, never a silently wrong one."""

import json

import pytest
import torch
from conftest import make_image_folder
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune.cli import main as cli_main

_TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8, num_labels=2, prune_layers=[1, 2])  # fmt: skip


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "model"
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**{k: v for k, v in _TINY.items() if k != "prune_layers"})).save_pretrained(
        folder
    )
    return folder


def _evaluate(model, data, out, *extra):
    return ["evaluate", "--model_name_or_path", str(model), "--dataset_name", str(data), "--pruning_method",
            "variance", "--keep_rate", "0.5", "--prune_layers", "1", "2", "--skip_throughput", "--num_workers", "0",
            "--output_dir", str(out), *extra]  # fmt: skip


def test_a_run_over_no_readable_image_exits_non_zero_and_writes_nothing(tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("LABEL_0", "LABEL_1"):
        (data / label).mkdir(parents=True)
        (data / label / "broken.jpg").write_bytes(b"not a picture")
    assert cli_main(_evaluate(tiny_model, data, tmp_path / "out", "--skip_unreadable")) == 2
    assert "no image was evaluated: all 2 images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("count", ["0", "-3"])
def test_a_sample_count_below_one_is_refused_when_parsed(tiny_model, tmp_path, capsys, count):
    data = make_image_folder(tmp_path / "data", {"LABEL_0": 1, "LABEL_1": 1})
    assert cli_main(_evaluate(tiny_model, data, tmp_path / "out", "--max_samples", count)) == 2
    assert f"--max_samples must be at least 1, got {count}" in capsys.readouterr().err
    argv = ["train", "--model_name_or_path", str(tiny_model), "--dataset_name", str(data), "--max_train_samples", "0",
            "--output_dir", str(tmp_path / "run")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "--max_train_samples must be at least 1" in capsys.readouterr().err


def test_skipped_images_are_counted_in_results_md(tiny_model, tmp_path):
    data = make_image_folder(tmp_path / "data", {"LABEL_0": 2, "LABEL_1": 2})
    (data / "LABEL_1" / "broken.jpg").write_bytes(b"not a picture")
    assert cli_main(_evaluate(tiny_model, data, tmp_path / "out", "--skip_unreadable")) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "5 images (1 unreadable, skipped with --skip_unreadable: 4 evaluated)" in text
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert rows[0]["images"] == 4 and rows[0]["unreadable_skipped"] == 1


def test_export_keeps_both_of_a_users_files_and_refuses_a_directory(tiny_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    output = tmp_path / "m.onnx"
    weights = tmp_path / "m.onnx.data"
    weights.write_text("a user's file")
    argv = ["export", "--model_name_or_path", str(tiny_model), "--pruning_method", "variance", "--keep_rate", "0.5",
            "--prune_layers", "1", "2", "--output", str(output)]  # fmt: skip
    assert cli_main(argv) == 2
    assert f"{weights} already exists: pass --overwrite" in capsys.readouterr().err
    assert weights.read_text() == "a user's file" and not output.exists()
    assert cli_main([*argv, "--overwrite"]) == 0 and output.exists() and weights.read_bytes() != b"a user's file"
    (tmp_path / "folder.onnx").mkdir()
    assert cli_main([*argv[:-1], str(tmp_path / "folder.onnx")]) == 2
    assert "is a directory: give the file to write" in capsys.readouterr().err
    assert cli_main(["export", "--help"]) == 0
    assert "OUTPUT.data" in " ".join(capsys.readouterr().out.split())


def test_booleans_are_booleans_through_every_entry_point(tiny_model, tmp_path):
    """A string `"false"` is truthy: as a boolean setting it would switch the thing on. Refused everywhere."""
    import transformers

    import hf_vitprune
    from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification

    folder = tmp_path / "pruned"
    PrunedViTForImageClassification(PrunedViTConfig(**_TINY)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"tie_query_key must be True or False, got 'false'"):
        PrunedViTForImageClassification.from_pretrained(folder, tie_query_key="false", tied_qk_init="mean")
    with pytest.raises(ValueError, match="tie_query_key=True is not given"):
        PrunedViTForImageClassification.from_pretrained(folder, tied_qk_init="mean")
    with pytest.raises(ValueError, match=r"\(its config.json, with the keyword arguments given\): .*fuse_pruned"):
        PrunedViTForImageClassification.from_pretrained(folder, fuse_pruned="false")
    model = PrunedViTForImageClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match="fuse_pruned must be True or False, got 'false'"):
        model.set_pruning(fuse_pruned="false")
    stock = transformers.ViTModel(transformers.ViTConfig(**{k: v for k, v in _TINY.items() if k != "prune_layers"}))
    with pytest.raises(ValueError, match="fuse_pruned must be True or False"):
        hf_vitprune.prune(stock, fuse_pruned="no")
    assert model.config.fuse_pruned is True and not hasattr(stock.config, "pruning_method")


def test_a_bspf_block_larger_than_the_grid_is_refused_when_set(tmp_path):
    """An 8 x 8 patch grid: bspf_block 99 is refused by set_pruning, prune and the config, nothing changed."""
    import transformers

    import hf_vitprune
    from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification

    model = PrunedViTForImageClassification(PrunedViTConfig(**{**_TINY, "patch_size": 4}))  # 32 px / 4 px: 8 x 8
    with pytest.raises(ValueError, match=r"bspf_block=99 is larger than this model's 8x8 patch grid: .* 1 to 7"):
        model.set_pruning(pruning_method="bspf", bspf_block=99)
    assert (model.config.pruning_method, model.config.bspf_block) == ("variance", 3)
    model.set_pruning(pruning_method="bspf", bspf_block=7)  # the largest that fits
    stock = transformers.ViTModel(transformers.ViTConfig(**{**_TINY, "patch_size": 4, "prune_layers": None}))
    with pytest.raises(ValueError, match="larger than this model's 8x8 patch grid"):
        hf_vitprune.prune(stock, pruning_method="bspf", bspf_block=9)
    with pytest.raises(ValueError, match="larger than this model's 8x8 patch grid"):
        PrunedViTConfig(**{**_TINY, "patch_size": 4}, pruning_method="bspf", bspf_block=9)


def test_a_config_field_of_the_wrong_type_names_the_file(tmp_path):
    from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification

    folder = tmp_path / "pruned"
    PrunedViTForImageClassification(PrunedViTConfig(**_TINY)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "keep_rate": "0.5"}))
    for load in (PrunedViTConfig.from_pretrained, PrunedViTForImageClassification.from_pretrained):
        with pytest.raises(ValueError, match=rf"{folder} \(its config.json.*keep_rate"):
            load(folder)


class _Payload:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_in_one_line_naming_the_file(tiny_model, tmp_path, capsys):
    import random

    import numpy as np

    from hf_vitprune.checkpoints import check_pickled_files

    marker = tmp_path / "pwned"
    model = tmp_path / "evil_model"
    model.mkdir()
    (model / "config.json").write_text((tiny_model / "config.json").read_text())
    torch.save({"weight": _Payload(marker)}, model / "pytorch_model.bin")
    data = make_image_folder(tmp_path / "data", {"LABEL_0": 1, "LABEL_1": 1})
    assert cli_main(_evaluate(model, data, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"refused to load {model}/pytorch_model.bin" in err and "unsupported GLOBAL posix.system" in err
    assert "weights_only=False" not in err and "Traceback" not in err and not marker.exists()

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, checkpoint / "rng_state.pth")  # as the Trainer saves it: accepted
    torch.save({"state": {}, "param_groups": []}, checkpoint / "scheduler.pt")
    check_pickled_files(str(checkpoint))
    torch.save({"state": _Payload(marker)}, checkpoint / "optimizer.pt")
    with pytest.raises(
        ValueError, match=rf"refused to load {checkpoint}/optimizer.pt: .*unsupported GLOBAL posix.system"
    ) as error:
        check_pickled_files(str(checkpoint))
    assert "weights_only=False" not in str(error.value) and not marker.exists()


def test_clip_vision_refuses_an_attention_mask_naming_the_families_that_take_one():
    import transformers

    import hf_vitprune

    model = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )  # fmt: skip
    ).eval()
    hf_vitprune.prune(model, pruning_method="variance", keep_rate=0.5, prune_layers=[1, 2])
    pixel_values = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"CLIPVisionModel takes no attention_mask .*Masks travel with the tokens on "
                       r"ViT, DeiT, DINOv2, DINOv2 with registers"):  # fmt: skip
        model(pixel_values=pixel_values, attention_mask=torch.ones(2, 17))
    assert model(pixel_values=pixel_values).last_hidden_state.shape[0] == 2  # without a mask: as before


def test_a_refused_prune_leaves_a_stock_model_unchanged():
    import transformers

    import hf_vitprune

    stock = transformers.ViTModel(transformers.ViTConfig(**{**_TINY, "patch_size": 4, "prune_layers": None}))
    del stock.config.prune_layers  # a stock config records no pruning setting
    with pytest.raises(ValueError, match="larger than this model's 8x8 patch grid"):
        hf_vitprune.prune(stock, pruning_method="bspf", bspf_block=9)
    assert not hasattr(stock.config, "pruning_method") and not hasattr(stock.config, "keep_rate")


def test_an_arguments_file_reads_as_the_flags_do(tmp_path):
    """JSON / YAML files: a single value of a several-valued setting, on/off strings, old key spellings; an argument
    given twice (under an alias too) or a required one missing is one clear error."""
    from hf_vitprune.arguments import parse_arguments
    from hf_vitprune.evaluation import EvaluateArguments
    from hf_vitprune.export import ExportArguments

    def parse(cls, values):
        path = tmp_path / "args.json"
        path.write_text(json.dumps(values))
        return parse_arguments(cls, [str(path)], prog="t")[0]

    args = parse(EvaluateArguments, {"pruning_method": "variance", "keep_rate": 0.5, "fusion": ["on", "off"]})
    assert [v["fuse_pruned"] for v in args.variants()[1:]] == [True, False]
    assert all(type(v["fuse_pruned"]) is bool for v in args.variants()[1:])  # read as booleans, not strings
    assert parse(ExportArguments, {"output": "m.onnx", "keep_rate": 0.5, "fuse_pruned": "off"}).settings() == {
        "keep_rate": 0.5,
        "fuse_pruned": False,
    }
    with pytest.raises(ValueError, match="gives fuse_pruned twice, as 'fusion' and 'fuse_pruned'"):
        parse(EvaluateArguments, {"fusion": ["on"], "fuse_pruned": [True]})
    with pytest.raises(ValueError, match="missing 1 required keyword-only argument: 'output'"):
        parse(ExportArguments, {"pruning_method": "variance"})
    with pytest.raises(ValueError, match="--pruning_method must name at least one method"):
        parse(EvaluateArguments, {"pruning_method": []}).variants()


def test_the_old_flag_spellings_work_on_every_command():
    from hf_vitprune.arguments import parse_arguments
    from hf_vitprune.export import ExportArguments
    from hf_vitprune.train import parse_args

    (export,) = parse_arguments(ExportArguments, ["--model", "m", "--fusion", "off", "--output", "m.onnx"], prog="t")
    assert export.model_name_or_path == "m" and export.settings() == {"fuse_pruned": False}
    model_args, data_args, _ = parse_args(["--model", "m", "--data", "d", "--fusion", "on", "--output_dir", "o"])
    assert (model_args.model_name_or_path, data_args.dataset_name, model_args.settings()) == (
        "m",
        "d",
        {"fuse_pruned": True},
    )


def test_a_custom_reducer_with_the_old_reduce_signature_is_refused_when_defined():
    """Before `layer_idx` was added a reducer's `reduce` took four arguments: it now fails where it is written, with
    the signature to write, not deep inside a forward pass."""
    from hf_vitprune.reducers import AttentionPruner, TokenReducer

    with pytest.raises(TypeError, match=r"Old.reduce\(self, hidden_states, statistic, state, amount\) cannot take"):

        class Old(TokenReducer):
            def reduce(self, hidden_states, statistic, state, amount):
                return hidden_states, state

    class New(AttentionPruner):  # the current signature, or one that takes anything, is fine
        def reduce(self, hidden_states, statistic, state, amount, layer_idx):
            return super().reduce(hidden_states, statistic, state, amount, layer_idx)
