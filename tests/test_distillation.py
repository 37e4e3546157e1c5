"""Distillation from the unpruned model (DeiT's soft KL), and the ImageNet-100 path rehearsed offline."""

import json
import math
import shutil

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, SHARED, make_image_folder, needs_shared, tiny_config_kwargs
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune.cli import main as cli_main
from hf_vitprune.losses import distillation_loss


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base)).save_pretrained(root / "base")  # LABEL_0 ... LABEL_4
    make_image_folder(root / "data" / "train", {"cat": 6, "dog": 6, "fox": 4})
    make_image_folder(root / "data" / "val", {"cat": 2, "dog": 2, "fox": 2})
    (root / "classes.txt").write_text("cat\ndog\nfox\n")  # the teacher's outputs 0-2 stand for them
    return root


def _args(root, out, *extra):
    return ["train", "--model_name_or_path", str(root / "base"), "--dataset", str(root / "data"),
            "--ignore_mismatched_sizes", "--prune_layers", "1", "2", "--keep_rate", "0.5", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--eval_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "0", "--use_cpu", "--seed",
            "3", "--throughput_batch_size", "2", "--throughput_runs", "1", "--class_list",
            str(root / "classes.txt"), *extra]  # fmt: skip


def test_distillation_loss_by_hand():
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for tau in (1.0, 2.0):
        p = [math.exp(t / tau) for t in (0.0, 1.0)]
        p = [x / sum(p) for x in p]
        q = [math.exp(s / tau) for s in (2.0, 0.0)]
        q = [x / sum(q) for x in q]
        expected = tau**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        assert distillation_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distilling_from_the_unpruned_model(workspace, tmp_path):
    plain, alpha_zero, distilled = tmp_path / "plain", tmp_path / "alpha0", tmp_path / "distilled"
    assert cli_main(_args(workspace, plain)) == 0
    assert cli_main(_args(workspace, alpha_zero, "--distill_from", "unpruned", "--distill_alpha", "0")) == 0
    assert cli_main(_args(workspace, distilled, "--distill_from", "unpruned", "--distill_alpha", "0.5",
                          "--distill_temperature", "2", "--distill_token_weight", "0.1")) == 0  # fmt: skip
    a, b, c = (load_file(folder / "model.safetensors") for folder in (plain, alpha_zero, distilled))
    assert all(torch.equal(a[k], b[k]) for k in a)  # alpha 0: the teacher changes nothing, bit for bit
    assert any(not torch.equal(a[k], c[k]) for k in a)  # alpha 0.5: it does
    results = json.loads((distilled / "pruning_results.json").read_text())
    recorded = results["training"]["distillation"]
    assert recorded["alpha"] == 0.5 and recorded["temperature"] == 2.0 and recorded["class_token_mse_weight"] == 0.1
    assert recorded["teacher"].endswith("base with pruning off")
    assert recorded["loss"].endswith(
        "+ class_token_mse_weight * MSE(final class-token states, before the last layer norm)"
    )
    assert json.loads((plain / "pruning_results.json").read_text())["training"]["distillation"] is None
    card = (distilled / "README.md").read_text()
    assert "| distillation | teacher: " in card and "alpha: 0.5, temperature: 2, class_token_mse_weight: 0.1" in card


def test_distillation_resumes_to_the_uninterrupted_weights(workspace, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    distill = ["--distill_from", "unpruned", "--distill_alpha", "0.5"]
    assert cli_main(_args(workspace, straight, *distill)) == 0
    assert cli_main(_args(workspace, stopped, *distill)) == 0
    for path in stopped.iterdir():
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert cli_main(_args(workspace, stopped, *distill, "--resume_from_checkpoint", "latest")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_teachers_are_refused_before_training(workspace, tmp_path, capsys):
    torch.manual_seed(0)
    big = {k: v for k, v in tiny_config_kwargs(image_size=48).items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**big)).save_pretrained(tmp_path / "big")
    out = tmp_path / "never"
    assert cli_main(_args(workspace, out, "--distill_from", str(tmp_path / "big"))) == 2
    assert "the teacher takes 48 px images, the student 32 px" in capsys.readouterr().err
    no_list = [a for a in _args(workspace, out, "--distill_from", "unpruned") if "classes.txt" not in a]
    no_list.remove("--class_list")
    assert cli_main(no_list) == 2
    assert "the teacher's head does not predict the student's classes" in capsys.readouterr().err
    assert cli_main(_args(workspace, tmp_path / "pruned_run")) == 0  # a pruned model as teacher ...
    argv = _args(workspace, out, "--distill_from", str(tmp_path / "pruned_run"))
    assert cli_main(argv) == 2
    assert "is itself pruned" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # every refusal came before training started
    assert cli_main([*argv, "--allow_pruned_teacher"]) == 0  # ... only when asked


def _imagenet100_like(root):
    """A local dataset repository laid out as clane9/imagenet-100 (Parquet shards under data/, a README with
    dataset_info and configs, `image` and a 100-name ClassLabel `label`), from a few Imagenette photographs: the
    images of 3 Imagenette classes stand in for the first 3 ImageNet-100 classes (a rehearsal of the code path, not
    of accuracy)."""
    import datasets

    names = (SHARED / "data" / "imagenet100_wnids.txt").read_text().split()
    assert len(names) == 100
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    (root / "data").mkdir(parents=True)
    sources = ["n01440764", "n02102040", "n03888257"]
    for split, folder, count in (("train", "train", 4), ("validation", "val", 2)):
        paths = [p for wnid in sources for p in sorted((IMAGENETTE / folder / wnid).iterdir())[:count]]
        labels = [i for i in range(3) for _ in range(count)]
        dataset = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": labels}, features=features)
        dataset.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    label_lines = "\n".join(f"          '{i}': {name}" for i, name in enumerate(names))
    (root / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
        f"      class_label:\n        names:\n{label_lines}\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: data/train-*\n  - split: validation\n    path: data/validation-*\n---\n"
    )
    return root


@pytest.mark.slow
@needs_shared
def test_the_imagenet100_path_rehearsed_offline(tmp_path):
    """`--dataset <folder>` goes through datasets.load_dataset as `--dataset clane9/imagenet-100` does: splits train /
    validation, a 100-way head trained from DeiT-Tiny with --ignore_mismatched_sizes, then evaluate on it."""
    repo = _imagenet100_like(tmp_path / "imagenet-100")
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(DEIT_TINY), "--dataset", str(repo), "--ignore_mismatched_sizes",
            "--pruning_method", "variance", "--keep_rate", "0.7", "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "6", "--eval_strategy", "no",
            "--save_strategy", "no", "--dataloader_num_workers", "0", "--use_cpu", "--throughput_batch_size", "2",
            "--throughput_runs", "1"]  # fmt: skip
    assert cli_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == 100 and config["id2label"]["0"] == "n02869837"
    results = json.loads((out / "pruning_results.json").read_text())
    assert results["dataset"]["images"] == 6 and results["dataset"]["train_images"] == 12
    assert results["dataset"]["split"] == "validation" and f"{repo}:validation" in results["protocol"]["top1"]
    evaluated = tmp_path / "eval"
    assert cli_main(["evaluate", "--model", str(out), "--data", str(repo), "--split", "validation", "--methods",
                     "variance", "--keep_rates", "0.7", "--fusion", "on", "--skip_throughput", "--num_workers", "0",
                     "--output_dir", str(evaluated)]) == 0  # fmt: skip
    rows = json.loads((evaluated / "results.json").read_text())["rows"]
    assert [row["images"] for row in rows] == [6, 6]


def test_self_distillation_copies_the_model_unpruned_when_pruning_starts(workspace, tmp_path, capsys):
    """`--distill_from self`: before --pruning_start_epoch the student's loss alone (alpha 0 and no teacher agree bit
    for bit with the plain late-start run); from it, a frozen copy of the model with pruning off teaches."""
    late = ["--pruning_start_epoch", "0.5"]  # 4 steps of 4 images on 16 images: pruning from the third step
    plain, alpha_zero, distilled = tmp_path / "plain", tmp_path / "alpha0", tmp_path / "distilled"
    assert cli_main(_args(workspace, plain, *late)) == 0
    assert cli_main(_args(workspace, alpha_zero, *late, "--distill_from", "self", "--distill_alpha", "0")) == 0
    assert cli_main(_args(workspace, distilled, *late, "--distill_from", "self", "--distill_alpha", "0.5")) == 0
    a, b, c = (load_file(folder / "model.safetensors") for folder in (plain, alpha_zero, distilled))
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
    recorded = json.loads((distilled / "pruning_results.json").read_text())["training"]["distillation"]
    assert recorded["teacher"] == "the model itself at epoch 0.5, unpruned"
    assert cli_main(_args(workspace, tmp_path / "refused", "--distill_from", "self", "--pruning_start_epoch", "0")) == 2
    assert "--distill_from self distils the pruned stage from the unpruned one" in capsys.readouterr().err


def test_the_self_teacher_is_a_frozen_unpruned_copy_taken_at_the_start_epoch():
    from types import SimpleNamespace

    from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
    from hf_vitprune.losses import Distillation
    from hf_vitprune.train import SelfTeacherCallback

    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs()))
    distillation = Distillation(None, torch.arange(5), 0.5, 1.0, 0.0, "self")
    callback = SelfTeacherCallback(distillation, start_epoch=2)
    callback.on_step_begin(None, SimpleNamespace(epoch=1.9), None, model=model)
    assert distillation.teacher is None
    callback.on_step_begin(None, SimpleNamespace(epoch=2.0), None, model=model)
    teacher = distillation.teacher
    assert teacher is not model and teacher.config.pruning_method is None and model.config.pruning_method == "variance"
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the student moves on; the teacher keeps the weights it was copied with
    callback.on_step_begin(None, SimpleNamespace(epoch=3.0), None, model=model)
    assert distillation.teacher is teacher and not torch.equal(teacher.classifier.weight, model.classifier.weight)
