"""`hf-vitprune train`: a real few-step run on a tiny image folder, resume, remote-code reload, DDP, and errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_image_folder, run_fresh_process, tiny_config_kwargs
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune.cli import main as cli_main
from hf_vitprune.losses import soft_target_loss
from hf_vitprune.train import KeepRateScheduleCallback


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base)).save_pretrained(root / "base")  # 5 labels: LABEL_0 ... LABEL_4
    make_image_folder(root / "data" / "train", {"cat": 6, "dog": 6, "fox": 4})
    make_image_folder(root / "data" / "val", {"cat": 2, "dog": 2, "fox": 2})
    return root


def _args(root, out, *extra):
    return ["train", "--model_name_or_path", str(root / "base"), "--dataset", str(root / "data"),
            "--ignore_mismatched_sizes", "--prune_layers", "1", "2", "--keep_rate", "0.5", "--pruning_method", "medad",
            "--output_dir", str(out), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
            "--logging_steps", "1", "--dataloader_num_workers", "0", "--use_cpu", "--seed", "3", *extra]  # fmt: skip


def test_train_saves_a_loadable_model_card_and_results(workspace):
    out = workspace / "run"
    assert cli_main(_args(workspace, out, "--keep_rate_warmup_epochs", "1")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pruned_vit" and config["auto_map"]["AutoModelForImageClassification"]
    assert config["keep_rate"] == 0.5  # the target, not a scheduled value
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert (out / "modeling_pruned_vit.py").exists() and (out / "preprocessor_config.json").exists()
    # the saved processor is the one evaluation used: the base checkpoint has none, so the DeiT default for 32 px
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 36} and processor["crop_size"] == {"height": 32, "width": 32}
    assert (
        "resize shorter side 36 bicubic, centre crop 32x32"
        in json.loads((out / "pruning_results.json").read_text())["protocol"]["top1"]
    )
    assert (out / "checkpoint-2" / "config.json").exists() and (
        out / "checkpoint-4" / "modeling_pruned_vit.py"
    ).exists()
    results = json.loads((out / "pruning_results.json").read_text())
    assert results["pruning"]["pruning_method"] == "medad" and results["pruning"]["tokens"] == "16→8+1→5+1"
    # 4 steps of 4 of the 16 images: one epoch; pruning from three quarters of it, the default recipe
    assert results["training"]["pruning start epoch"] == 0.75
    assert 0 <= results["metrics"]["pruned"]["top1"] <= 100
    assert results["metrics"]["pruned"]["gmacs"] < results["metrics"]["unpruned"]["gmacs"]
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert set(eval_metrics) >= {"eval_top1", "eval_top5", "eval_loss"}
    card = (out / "README.md").read_text()
    assert "model-index" in card and "medad" in card and "trust_remote_code=True" in card
    # the learning rate follows the linear scaling rule: 1e-3 * 4 / 256
    state = json.loads((out / "trainer_state.json").read_text())
    peak_lr = max(entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry)
    assert peak_lr == pytest.approx(1e-3 * 4 / 256)


def test_resume_continues_where_it_stopped(workspace):
    """A run stopped after 2 of 4 steps and resumed from its checkpoint ends with the uninterrupted run's weights.

    Exact equality needs data without random augmentation (the order of random draws after a resume is the
    Trainer's); the learning rate is raised so that steps 3 and 4 move the weights far beyond rounding.
    """
    import shutil

    deterministic = ["--augmentation", "none", "--mixup_alpha", "0", "--cutmix_alpha", "0", "--random_erasing", "0",
                     "--base_learning_rate", "0", "--learning_rate", "0.01"]  # fmt: skip
    straight, stopped = workspace / "straight", workspace / "stopped"
    assert cli_main(_args(workspace, straight, *deterministic)) == 0
    assert cli_main(_args(workspace, stopped, *deterministic)) == 0
    for path in stopped.iterdir():  # keep only the step-2 checkpoint, as if the run had died after saving it
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    checkpoint = load_file(stopped / "checkpoint-2" / "model.safetensors")
    resume = ["--resume_from_checkpoint", str(stopped / "checkpoint-2")]
    assert cli_main(_args(workspace, stopped, *deterministic, *resume)) == 0
    assert json.loads((stopped / "trainer_state.json").read_text())["global_step"] == 4
    a, b = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert a.keys() == b.keys() == checkpoint.keys()
    assert max((b[k] - checkpoint[k]).abs().max() for k in b) > 1e-3  # steps 3 and 4 did train
    for key in a:
        assert torch.equal(b[key], a[key]), key


REMOTE = """
import sys, json
sys.modules["hf_vitprune"] = None
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(pixel_values=torch.load(sys.argv[2])).logits
top = pipeline("image-classification", model=sys.argv[1], trust_remote_code=True)(Image.new("RGB", (50, 40)), top_k=3)
print(json.dumps({"logits": logits.tolist(), "labels": sorted(p["label"] for p in top),
                  "module": type(model).__module__}))
"""


def test_trained_model_reloads_in_a_fresh_process_without_the_package(workspace, tmp_path):
    from hf_vitprune import PrunedViTForImageClassification

    out = workspace / "run"
    if not (out / "model.safetensors").exists():
        assert cli_main(_args(workspace, out)) == 0
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = PrunedViTForImageClassification.from_pretrained(out).eval()(pixel_values=x).logits
    report = run_fresh_process(tmp_path, REMOTE, out, tmp_path / "x.pt")
    assert report["module"].startswith("transformers_modules.")
    assert torch.equal(torch.tensor(report["logits"]), expected)
    assert report["labels"] == ["cat", "dog", "fox"]


def test_errors_come_before_training(workspace, capsys):
    out = workspace / "never"
    args = _args(workspace, out)
    no_ignore = [a for a in args if a != "--ignore_mismatched_sizes"]
    assert cli_main(no_ignore) == 2
    assert "--ignore_mismatched_sizes" in capsys.readouterr().err
    assert cli_main(_args(workspace, out, "--model_name_or_path", "nobody/no-such-model")) == 2
    assert "Cannot load the model 'nobody/no-such-model'" in capsys.readouterr().err
    assert cli_main(_args(workspace, out, "--dataset", "nobody/no-such-dataset")) == 2
    assert "Could not load the Hub dataset 'nobody/no-such-dataset'" in capsys.readouterr().err
    assert cli_main(_args(workspace, out, "--augmentation", "autoaugment")) == 2
    assert "--augmentation" in capsys.readouterr().err
    assert not out.exists() or not any(name.startswith("checkpoint-") for name in os.listdir(out))


def test_existing_output_is_never_replaced_without_asking(workspace, capsys):
    out = workspace / "run"
    if not (out / "model.safetensors").exists():
        assert cli_main(_args(workspace, out)) == 0
    before = (out / "model.safetensors").read_bytes()
    assert cli_main(_args(workspace, out)) == 2
    assert "--overwrite_output" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_keep_rate_schedule_is_evits_cosine():
    schedule = KeepRateScheduleCallback(0.5, warmup_epochs=2)
    assert schedule.keep_rate_at(0) == 1.0
    assert schedule.keep_rate_at(1) == pytest.approx(0.75)
    assert schedule.keep_rate_at(2) == 0.5 and schedule.keep_rate_at(7) == 0.5
    assert KeepRateScheduleCallback([0.9, 0.5], 4).keep_rate_at(2) == [0.95, 0.75]


def test_pruning_start_epoch_trains_unpruned_steps_first(tiny_config):
    """Before the start epoch a training step runs with pruning off, after it with the setting (and the warm-up from
    the start epoch); after every step the model's own setting is back."""
    from types import SimpleNamespace

    from hf_vitprune import PrunedViTForImageClassification

    model = PrunedViTForImageClassification(tiny_config)
    schedule = KeepRateScheduleCallback(0.5, warmup_epochs=2, start_epoch=3, pruning_method="variance")
    assert schedule.keep_rate_at(2.9) is None and schedule.keep_rate_at(3) == 1.0 and schedule.keep_rate_at(5) == 0.5
    seen = []
    for epoch in (0.0, 2.5, 4.0, 6.0):
        schedule.on_step_begin(None, SimpleNamespace(epoch=epoch), None, model=model)
        seen.append((model.config.pruning_method, model.config.keep_rate))
        schedule.on_step_end(None, SimpleNamespace(epoch=epoch), None, model=model)
        assert (model.config.pruning_method, model.config.keep_rate) == ("variance", 0.5)
    assert seen == [(None, 0.5), (None, 0.5), ("variance", 0.75), ("variance", 0.5)]


def test_pruning_starts_after_three_quarters_of_the_run_by_default():
    """The recipe docs/training.md chose: unpruned for the first three quarters, in epochs or in --max_steps."""
    from types import SimpleNamespace

    from hf_vitprune.train import PRUNING_START_FRACTION, ModelArguments, resolve_pruning_start

    assert PRUNING_START_FRACTION == 0.75
    run = SimpleNamespace(num_train_epochs=4.0, max_steps=-1, per_device_train_batch_size=32,
                          gradient_accumulation_steps=1, world_size=1, device="cpu")  # fmt: skip
    assert resolve_pruning_start(ModelArguments(), run, 680, "variance") == 3.0
    assert resolve_pruning_start(ModelArguments(), run, 680, None) == 0.0
    assert resolve_pruning_start(ModelArguments(pruning_start_epoch=0), run, 680, "variance") == 0.0
    assert resolve_pruning_start(ModelArguments(pruning_start_epoch=1.5), run, 680, "tome") == 1.5
    steps = SimpleNamespace(**{**vars(run), "max_steps": 44})  # 680 images at batch 32: 22 steps an epoch
    assert resolve_pruning_start(ModelArguments(), steps, 680, "variance") == 1.5


def test_a_schedule_that_cannot_act_is_refused():
    from hf_vitprune.train import ModelArguments, check_pruning_schedule

    with pytest.raises(ValueError, match="--pruning_start_epoch 2 schedules the pruning, but the model prunes nothing"):
        check_pruning_schedule(ModelArguments(pruning_start_epoch=2), None)
    with pytest.raises(ValueError, match="--keep_rate_warmup_epochs schedules the keep rate, which .*'tome'"):
        check_pruning_schedule(ModelArguments(keep_rate_warmup_epochs=1), "tome")
    with pytest.raises(ValueError, match="--pruning_start_epoch must be >= 0"):
        check_pruning_schedule(ModelArguments(pruning_start_epoch=-1), "variance")
    check_pruning_schedule(ModelArguments(pruning_start_epoch=1), "tome")  # every method can start late


def test_soft_target_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    loss = soft_target_loss(0.0)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(loss({"logits": logits}, torch.tensor([0, 1])), expected)
    # one-hot targets give the same; smoothing 0.2 over 2 classes turns (1, 0) into (0.9, 0.1)
    torch.testing.assert_close(loss({"logits": logits}, torch.tensor([[1.0, 0.0], [0.0, 1.0]])), expected)
    smoothed = soft_target_loss(0.2)({"logits": logits[:1]}, torch.tensor([[1.0, 0.0]]))
    log_p = logits[0].log_softmax(-1)
    torch.testing.assert_close(smoothed, -(0.9 * log_p[0] + 0.1 * log_p[1]))
    # with gradient accumulation the Trainer counts target entries: 2 images x 2 classes = 4 -> divide the sum by 2
    summed = soft_target_loss(0.0)({"logits": logits}, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), num_items_in_batch=4)
    torch.testing.assert_close(summed, expected)


def test_accelerate_launch_two_cpu_processes(workspace, tmp_path):
    """The same job under DDP on CPU, two processes with the gloo backend.

    accelerate 1.x's `--cpu` flag always uses its single-process launcher (`--cpu --num_processes 2` starts ONE
    process); `--multi_gpu --num_processes 2` on a machine without CUDA starts two processes through
    `torch.distributed.run`, which accelerate runs as `DistributedType.MULTI_CPU`. The global batch of 8 in the results
    proves both processes took part. The same job distilled with `--distill_alpha 0` (the teacher runs in every step,
    its terms weigh 0) must log the same losses: the teacher's loss goes through the Trainer's DDP scaling (each
    process divides by the global batch's images, the Trainer multiplies by the process count), not around it.
    """
    import shutil

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    out = tmp_path / "ddp"
    args = _args(workspace, out, "--eval_strategy", "steps", "--eval_steps", "2")[1:]  # drop the "train" command
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_vitprune.train", *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    train = json.loads((out / "train_results.json").read_text())
    assert train["train_samples_per_second"] > 0
    # 2 processes x batch 4 per device = 8 images per step: the learning rate scales with the global batch
    peak_lr = max(e["learning_rate"] for e in state["log_history"] if "learning_rate" in e)
    assert peak_lr == pytest.approx(1e-3 * 8 / 256)
    assert any("eval_top1" in entry for entry in state["log_history"])  # evaluated during training
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert 0 <= eval_metrics["eval_top1"] <= 100
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "pruning_results.json").read_text())["training"]["global batch size"] == 8

    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")  # the teacher's outputs 0-2 stand for them
    distilled = tmp_path / "ddp_distilled"
    args = _args(workspace, distilled, "--eval_strategy", "steps", "--eval_steps", "2", "--distill_from", "unpruned",
                 "--distill_alpha", "0", "--class_list", str(tmp_path / "classes.txt"))[1:]  # fmt: skip
    result = subprocess.run([*command[: command.index("-m") + 2], *args], capture_output=True, text=True, env=env,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((distilled / "pruning_results.json").read_text())
    assert results["training"]["distillation"]["alpha"] == 0 and results["training"]["global batch size"] == 8
    distilled_state = json.loads((distilled / "trainer_state.json").read_text())
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in (state, distilled_state)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_help_documents_every_argument(capsys):
    import dataclasses

    from hf_vitprune.train import DataArguments, ModelArguments, PruningTrainingArguments

    assert cli_main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for cls in (ModelArguments, DataArguments, PruningTrainingArguments):
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                assert f"--{f.name}" in text, f.name
    ours = [f for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)]
    assert all(f.metadata.get("help") for f in ours)
    recipe = {"num_train_epochs", "weight_decay", "lr_scheduler_type", "warmup_steps", "overwrite_output_dir"}
    assert recipe <= {f.name for f in dataclasses.fields(PruningTrainingArguments)}  # no name checked in vain
    assert all(f.metadata.get("help") for f in dataclasses.fields(PruningTrainingArguments) if f.name in recipe)
    # the recipe a pruning setting gets, named where a user looks for it
    assert "Default: after three quarters of the run" in text and "docs/training.md" in text
    assert "0: pruning on from the first step (the paper's recipe)" in text


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_arguments_come_from_a_json_or_yaml_file(tmp_path, suffix):
    import yaml

    from hf_vitprune.train import parse_args

    values = {"model_name_or_path": "some/model", "pruning_method": "medad", "keep_rate": [0.9, 0.7, 0.5],
              "patch_stride": 12, "dataset": "some/data", "mixup_alpha": 0.0, "output_dir": str(tmp_path / "o"),
              "num_train_epochs": 3, "learning_rate": 0.01, "base_learning_rate": 0}  # fmt: skip
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    model_args, data_args, training_args = parse_args([str(path)])
    assert model_args.settings()["keep_rate"] == [0.9, 0.7, 0.5] and model_args.patch_stride == 12
    assert (data_args.dataset_name, data_args.mixup_alpha, data_args.base_learning_rate) == ("some/data", 0.0, 0)
    assert training_args.num_train_epochs == 3 and training_args.weight_decay == 0.05  # recipe default kept
