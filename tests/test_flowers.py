"""Oxford 17 Flowers (../shared) as users point at it: a folder of train / val / test split folders, a new 17-way head,
evaluation on test that reads only test files; and the errors for a wrong split name or a class folder missing from
one split."""

import json

import pytest
from conftest import DEIT_TINY, SHARED, make_image_folder
from safetensors.torch import load_file

from hf_vitprune.cli import main as cli_main
from hf_vitprune.data import load_image_data

FLOWERS = SHARED / "data" / "oxford-17-flowers"
needs_flowers = pytest.mark.skipif(
    not FLOWERS.is_dir() or not (DEIT_TINY / "model.safetensors").exists(),
    reason=f"Oxford 17 Flowers or DeiT-Tiny not found under {SHARED} (the project's ../shared folder); set "
    "HF_VITPRUNE_SHARED to its location to run these tests",
)
CLASSES = (
    [line.split("\t")[1] for line in (FLOWERS / "classes.tsv").read_text().splitlines()[1:]] if FLOWERS.is_dir() else []
)


@pytest.fixture
def opened(monkeypatch):
    """The paths of every image file PIL opens in this process."""
    import PIL.Image

    paths, real_open = [], PIL.Image.open

    def recording_open(fp, *args, **kwargs):
        paths.append(str(getattr(fp, "name", fp)))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    return paths


@needs_flowers
def test_splits_and_labels_come_from_the_folders():
    for split, per_class in (("train", 40), ("val", 20), ("validation", 20), ("test", 20)):
        data = load_image_data(str(FLOWERS), split)
        assert data.class_names == CLASSES and len(data) == 17 * per_class
    assert CLASSES[0] == "00_daffodil" and CLASSES[-1] == "16_pansy"


@needs_flowers
def test_train_a_few_steps_then_evaluate_on_test_only(tmp_path, opened):
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--model_name_or_path",
            str(DEIT_TINY),
            "--dataset_name",
            str(FLOWERS),
            "--train_split",
            "train",
            "--eval_split",
            "val",
            "--ignore_mismatched_sizes",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "17",
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "17",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--dataloader_num_workers",
            "0",
            "--use_cpu",
            "--throughput_batch_size",
            "2",
            "--throughput_runs",
            "1",
            "--pruning_method",
            "variance",
            "--keep_rate",
            "0.7",
        ]  # fmt: skip
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    head = load_file(out / "model.safetensors")["classifier.weight"]
    assert tuple(head.shape) == (17, 192)
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    assert {p.split("/oxford-17-flowers/")[1].split("/")[0] for p in opened} == {"train", "val"}

    opened.clear()
    evaluation = tmp_path / "test"
    code = cli_main(
        ["evaluate", "--model_name_or_path", str(out), "--dataset_name", str(FLOWERS), "--split", "test",
         "--max_samples", "17", "--num_workers", "0", "--skip_throughput", "--output_dir", str(evaluation),
         "--pruning_method", "variance", "--keep_rate", "0.7", "--fuse_pruned", "on"]
    )  # fmt: skip
    assert code == 0
    assert len(opened) == 17 and all("/oxford-17-flowers/test/" in p for p in opened)
    rows = json.loads((evaluation / "results.json").read_text())["rows"]
    assert [(row["name"], row["images"]) for row in rows] == [("unpruned", 17), ("variance@0.7+fusion", 17)]


@needs_flowers
def test_a_split_that_does_not_exist_lists_the_splits():
    with pytest.raises(ValueError, match=r"has no split 'testing'; the splits found are \['test', 'train', 'val'\]"):
        load_image_data(str(FLOWERS), "testing")


def test_a_class_folder_missing_from_one_split_is_named(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    make_image_folder(tmp_path / "test", {"a": 1, "c": 1})
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"\['b'\] of 'train' missing from 'test'"):
            load_image_data(str(tmp_path), split)
    (tmp_path / "test" / "b").mkdir()  # an empty class folder keeps the indices aligned
    assert load_image_data(str(tmp_path), "train").class_names == ["a", "b", "c"]
