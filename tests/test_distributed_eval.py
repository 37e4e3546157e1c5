"""`accelerate launch -m hf_vitprune.cli evaluate / sweep`: sharded evaluation equals one process, image by image.

Two CPU processes (accelerate's `--multi_gpu` launcher runs them as MULTI_CPU with gloo, as in the DDP training test)
against one: the same per-image predictions for every method, random pruning included (seeded per image), and one
results file written by the main process. Also: more processes than images, streaming, and the refusals.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, make_image_folder, needs_shared, tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.cli import main as cli_main

VARIANTS = ["--pruning_method", "random", "tome", "variance", "--keep_rate", "0.5", "--tome_r", "8",
            "--fuse_pruned", "on"]  # fmt: skip


def _launch(*args, processes=2):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is not installed"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_vitprune.cli", *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _evaluate_args(model, data, out, *extra):
    return ["evaluate", "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
            "--skip_throughput", "--num_workers", "0", "--batch_size", "4", "--save_predictions", *extra]  # fmt: skip


@needs_shared
def test_two_processes_give_the_predictions_of_one(tmp_path):
    """25 real photographs (odd: the shards differ in size, the last batch of each is short)."""
    common = ["--class_list", "imagenet1k", "--max_samples", "25", *VARIANTS]
    assert cli_main(_evaluate_args(DEIT_TINY, IMAGENETTE / "val", tmp_path / "one", *common)) == 0
    result = _launch(*_evaluate_args(DEIT_TINY, IMAGENETTE / "val", tmp_path / "two", *common))
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = (json.loads((tmp_path / run / "predictions.json").read_text()) for run in ("one", "two"))
    assert two["image_index"] == list(range(25)) and two == one
    rows_one, rows_two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert [r["name"] for r in rows_two["rows"]] == [
        "unpruned",
        "random@0.5+fusion",
        "tome(r=8)",
        "variance@0.5+fusion",
    ]
    assert [(r["top1"], r["top5"], r["images"]) for r in rows_two["rows"]] == [
        (r["top1"], r["top5"], r["images"]) for r in rows_one["rows"]
    ]
    assert rows_two["protocol"]["num_processes"] == 2 and rows_one["protocol"]["num_processes"] == 1
    assert rows_two["protocol"]["images"] == 25
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["predictions.json", "results.json", "results.md"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(num_labels=2, id2label={0: "cat", 1: "dog"}))
    PrunedViTForImageClassification(config).save_pretrained(root / "model")
    return root / "model"


def test_more_processes_than_images_and_a_failing_shard(tiny_model, tmp_path):
    """Two launches: a sweep over one image on two processes (one shard empty: every variant counts the one image,
    one set of files from the main process), and a run whose shard holds an unreadable image (no results at all)."""
    make_image_folder(tmp_path / "one_image", {"cat": 1, "dog": 0})
    sweep = ["sweep", *_evaluate_args(tiny_model, tmp_path / "one_image", tmp_path / "sweep")[1:], *VARIANTS]
    result = _launch(*sweep)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["protocol"]["num_processes"] == 2 and [r["images"] for r in report["rows"]] == [1] * 4
    assert not list((tmp_path / "sweep").glob(".*partial"))

    # a process that fails mid-run (an unreadable image in its shard) stops the run: no results file at all
    make_image_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    (tmp_path / "images" / "dog" / "img_9.jpg").write_bytes(b"not an image")
    failed = _launch(*_evaluate_args(tiny_model, tmp_path / "images", tmp_path / "failed"))
    assert failed.returncode != 0 and "img_9.jpg" in failed.stderr
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())


def test_max_samples_below_the_processes_is_refused_naming_both():
    """Checked before any model or data is loaded (prepare_evaluation calls it first under a launch)."""
    from hf_vitprune.evaluation import check_shards

    with pytest.raises(ValueError, match="--max_samples 1 is smaller than the 2 processes"):
        check_shards(1, 2)
    check_shards(2, 2)
    check_shards(None, 8)


@needs_shared
def test_streaming_reads_what_the_download_reads(tmp_path):
    """A local copy of a Hub dataset (Parquet shards), read once downloaded and once streamed: the same top-1."""
    import datasets

    wnids = sorted(p.name for p in (IMAGENETTE / "val").iterdir())
    paths = [p for wnid in wnids[:3] for p in sorted((IMAGENETTE / "val" / wnid).iterdir())[:3]]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=wnids)})
    dataset = datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "label": [wnids.index(p.parent.name) for p in paths]}, features=features
    )
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet"))
    common = ["--class_list", "imagenet1k", "--split", "validation", *VARIANTS]
    reports = []
    for name, extra in (("downloaded", []), ("streamed", ["--streaming"])):
        assert cli_main(_evaluate_args(DEIT_TINY, tmp_path / "repo", tmp_path / name, *common, *extra)) == 0
        reports.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert [r["top1"] for r in reports[0]["rows"]] == [r["top1"] for r in reports[1]["rows"]]
    assert reports[1]["protocol"]["images"] == 9
    predictions = [
        json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("downloaded", "streamed")
    ]
    assert predictions[0] == predictions[1]
