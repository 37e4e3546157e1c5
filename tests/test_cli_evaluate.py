"""`hf-vitprune evaluate` end to end on real images (DeiT-Tiny x Imagenette) and its errors."""

import json

import pytest
import torch
from conftest import DEIT_TINY, IMAGENET1K_CLASSES, IMAGENETTE, make_image_folder, needs_shared

from hf_vitprune.cli import main


@pytest.fixture
def real_folder(tmp_path):
    """6 real Imagenette validation images of 2 classes, linked into a temporary folder."""
    root = tmp_path / "val"
    for wnid in ("n01440764", "n03888257"):
        (root / wnid).mkdir(parents=True)
        for image in sorted((IMAGENETTE / "val" / wnid).iterdir())[:3]:
            (root / wnid / image.name).symlink_to(image)
    return root


def _direct_top1(folder, keep_rate):
    """Top-1 computed without the CLI: the model, DeiT preprocessing and the class list by hand."""
    from PIL import Image

    from hf_vitprune import PrunedViTForImageClassification
    from hf_vitprune.data import eval_transform

    index = {"n01440764": 0, "n03888257": 701}
    model = PrunedViTForImageClassification.from_pretrained(DEIT_TINY, keep_rate=keep_rate).eval()
    transform = eval_transform(224)
    correct = total = 0
    for wnid, label in index.items():
        for path in sorted((folder / wnid).iterdir()):
            x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                correct += int(model(pixel_values=x).logits.argmax().item() == label)
            total += 1
    return 100.0 * correct / total


@needs_shared
def test_evaluate_on_real_images_writes_consistent_results(real_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(DEIT_TINY), "--data", str(real_folder), "--class_list",
            str(IMAGENET1K_CLASSES), "--methods", "variance", "entropy", "--renyi_alphas", "1", "2",
            "--keep_rates", "0.7", "--fusion", "on", "--batch_size", "4", "--num_workers", "0",
            "--throughput_batch_size", "2", "--throughput_runs", "1", "--throughput_warmup", "0",
            "--throughput_rounds", "3", "--throughput_bracket", "1", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert "3 interleaved rounds" in report["protocol"]["throughput"]
    assert "unpruned timed before and after every variant," in report["protocol"]["throughput"]  # --throughput_bracket
    names = [row["name"] for row in report["rows"]]
    assert names == ["unpruned", "variance@0.7+fusion", "entropy(a=1)@0.7+fusion", "entropy(a=2)@0.7+fusion"]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["unpruned"]["images"] == 6
    assert rows["unpruned"]["top1"] == pytest.approx(_direct_top1(real_folder, 1.0))
    assert rows["variance@0.7+fusion"]["top1"] == pytest.approx(_direct_top1(real_folder, 0.7))
    assert rows["variance@0.7+fusion"]["tokens"] == "196→138+1→98+1→70+1"
    assert rows["unpruned"]["gmacs"] == pytest.approx(1.26, abs=0.01)  # DeiT-Tiny
    assert rows["variance@0.7+fusion"]["gmacs"] < rows["unpruned"]["gmacs"]
    assert all(row["images_per_s"] > 0 for row in report["rows"])
    assert report["protocol"]["images"] == 6 and "resize 256x256 bicubic" in report["protocol"]["preprocessing"]
    table = (out / "results.md").read_text()
    assert "| variance | 0.7 | yes | 196→138+1→98+1→70+1 |" in table and "entropy (α=2)" in table
    assert "Command: `hf-vitprune evaluate --model" in table
    header, delimiter = [line for line in table.splitlines() if line.startswith("|")][:2]
    assert delimiter == "|" + "---|" * (header.count("|") - 1)  # one delimiter cell per column, or no Markdown table
    assert "| variance | 0.7 | yes |" in capsys.readouterr().out

    # results already there are never replaced without --overwrite
    before = (out / "results.json").read_bytes()
    assert main(argv) == 2
    assert "already holds results.json, results.md: pass --overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


@needs_shared
def test_a_temperature_grid_leaves_the_default_recorded(real_folder, tmp_path):
    """The fusion-temperature grid is applied per variant and undone: the protocol records the model's default (0.1),
    not the last temperature of the grid (the bug that left 100.0 in benchmarks/results/fusion_temperature.json)."""
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(DEIT_TINY), "--data", str(real_folder), "--class_list",
                 str(IMAGENET1K_CLASSES), "--methods", "variance", "--keep_rates", "0.5", "--fusion", "on",
                 "--fusion_temperatures", "0.3", "100", "--skip_throughput", "--batch_size", "6", "--num_workers",
                 "0", "--output_dir", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    assert [row["fusion_temperature"] for row in report["rows"][1:]] == [0.3, 100.0]
    assert report["protocol"]["fusion_temperature_default"] == 0.1


@needs_shared
def test_unmappable_folder_name_is_an_error_naming_it(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data", {"n01440764": 1, "not_a_wnid": 1})
    argv = ["evaluate", "--model", str(DEIT_TINY), "--data", str(folder), "--class_list", str(IMAGENET1K_CLASSES),
            "--output_dir", str(tmp_path / "out"), "--skip_throughput"]  # fmt: skip
    assert main(argv) == 2
    assert "['not_a_wnid']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(["--methods", "tome-ish"], "Unknown pruning method"), (["--fusion", "maybe"], "--fusion"),
     (["--keep_rates", "0"], "keep_rate")],
)  # fmt: skip
def test_bad_settings_fail_before_evaluating(tmp_path, capsys, extra, message):
    from transformers import ViTConfig, ViTForImageClassification

    model_dir = tmp_path / "model"
    ViTForImageClassification(
        ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, num_labels=2)
    ).save_pretrained(model_dir)
    folder = make_image_folder(tmp_path / "data", {"LABEL_0": 1, "LABEL_1": 1})
    argv = ["evaluate", "--model", str(model_dir), "--data", str(folder), "--prune_layers", "1", "2",
            "--output_dir", str(tmp_path / "out"), "--skip_throughput", *extra]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_usage():
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2


@pytest.mark.slow
@needs_shared
def test_pipeline_and_evaluate_agree_on_non_square_real_images(tmp_path):
    """One source of preprocessing: a saved run (model + the processor it was evaluated with) classified by
    `pipeline("image-classification")` scores the top-1 that `hf-vitprune evaluate` reports, on real photographs cut
    to non-square shapes (where squashing to 256x256 and resizing the shorter side differ)."""
    from PIL import Image
    from transformers import pipeline

    from hf_vitprune import PrunedViTForImageClassification
    from hf_vitprune.data import load_preprocessing, read_class_list

    data = tmp_path / "val"
    wnids = ["n01440764", "n02102040", "n03000684", "n03417042", "n03888257"]
    for i, wnid in enumerate(wnids):
        (data / wnid).mkdir(parents=True)
        for j, path in enumerate(sorted((IMAGENETTE / "val" / wnid).iterdir())[:4]):
            image = Image.open(path).convert("RGB")
            box = (0, 30, 224, 194) if (i + j) % 2 else (40, 0, 180, 224)  # 224x164 landscape or 140x224 portrait
            image.crop(box).save(data / wnid / f"{j}.png")
    run = tmp_path / "run"
    PrunedViTForImageClassification.from_pretrained(DEIT_TINY, keep_rate=0.7).save_pretrained(run)
    load_preprocessing(str(DEIT_TINY)).processor.save_pretrained(run)  # what `hf-vitprune train` saves

    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(run), "--data", str(data), "--class_list", "imagenet1k", "--methods",
            "variance", "--keep_rates", "0.7", "--fusion", "on", "--batch_size", "8", "--num_workers", "0",
            "--skip_throughput", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}

    classify = pipeline("image-classification", model=str(run))
    index = read_class_list("imagenet1k")
    label2id = {label: int(i) for i, label in classify.model.config.id2label.items()}
    correct = total = 0
    for wnid in wnids:
        for path in sorted((data / wnid).iterdir()):
            predicted = classify(Image.open(path), top_k=1)[0]["label"]
            correct += int(label2id[predicted] == index[wnid])
            total += 1
    assert total == 20 and rows["variance@0.7+fusion"]["images"] == 20
    assert 100.0 * correct / total == pytest.approx(rows["variance@0.7+fusion"]["top1"])


def test_markdown_delimiter_has_one_cell_per_column():
    from hf_vitprune.report import markdown_delimiter

    assert markdown_delimiter("| a | b |") == "|---|---|"
    assert markdown_delimiter("| method | speed-up (min–max) | top-1 (%) |\n") == "|---|---|---|"
    with pytest.raises(ValueError, match="not a Markdown header row"):
        markdown_delimiter("a | b")


@pytest.mark.parametrize(("flag", "value"), [("--throughput_bracket", "0"), ("--throughput_rounds", "0"),
                                             ("--latency_runs", "-1")])  # fmt: skip
@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_a_bad_timing_flag_stops_before_anything_is_loaded(command, flag, value, tmp_path, capsys):
    """The model and data do not exist: the flag is reported first, not after an accuracy pass."""
    argv = [command, "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data"), flag, value,
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert f"error: {flag} must be at least" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
