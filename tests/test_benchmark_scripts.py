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
    assert "| base | unpruned | 0 | 16 | 196 | 90.00 | 99.00 | 1.000 | 50.0 | 1.00× | 10.0 | 1.00× |" in text
    assert (
        "| pruned | variance, keep 0.7, fusion | 0 | 16 | 196 | 89.50 | 99.00 | 1.000 | 75.0 | 1.50× | 14.0 | 1.40× |"
        in text
    )
    assert (tmp_path / "t.md").read_text() == text
    with pytest.raises(SystemExit, match="already exists: pass --overwrite"):
        finetune_table.main([str(tmp_path / "base"), "--output", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text() == text
    with pytest.raises(FileNotFoundError, match="did the run"):
        finetune_table.main([str(tmp_path / "missing")])


def test_finetune_table_without_speed_with_distillation_seeds_and_json_files(tmp_path):
    finetune_table = _load("finetune_table")
    _run(tmp_path / "a", "variance", 89.0, 75.0, 14.0)
    _run(tmp_path / "b", "variance", 90.0, 75.0, 14.0)
    _run(tmp_path / "c", "variance", 92.0, 75.0, 14.0)
    for name, seed, teacher in (("a", None, None), ("b", 1, {"teacher": "t"}), ("c", None, {"teacher": "t"})):
        path = tmp_path / name / "pruning_results.json"
        results = json.loads(path.read_text())
        results["training"] = {"distillation": teacher, **({"seed": seed} if seed is not None else {})}
        results["command"] = "hf-vitprune train --seed 2" if name == "c" else "hf-vitprune train"
        path.write_text(json.dumps(results))
    text = finetune_table.main([str(tmp_path / "a"), str(tmp_path / "b" / "pruning_results.json"),
                                str(tmp_path / "c"), "--no_speed"])  # fmt: skip
    assert "| a | variance, keep 0.7, fusion | 0 | 16 | 196 | 89.00 | 99.00 | 1.000 |\n" in text
    assert "| pruning_results | variance, keep 0.7, fusion, distilled | 1 | 16 |" in text  # a JSON file: its stem
    assert "| c | variance, keep 0.7, fusion, distilled | 2 |" in text  # seed read from the command line
    assert "images/s" not in text.split("\n")[0] and "docs/benchmark_cpu.md" in text
    # over seeds: only the distilled setting has two seeds (1 and 2): mean 91.00, range 90.00–92.00
    assert "| variance, keep 0.7, fusion, distilled | 16 | 1, 2 | 91.00 | 90.00–92.00 |" in text
    assert "| variance, keep 0.7, fusion | 16 | 0 |" not in text


def test_finetune_table_grid_of_pruning_settings_by_recipe(tmp_path):
    finetune_table = _load("finetune_table")
    runs = [("u0", None, 90.0, 0, {}), ("u1", None, 92.0, 1, {}), ("v", "variance", 89.0, 0, {}),
            ("vw0", "variance", 89.5, 0, {"keep-rate warm-up epochs": 1.0}),
            ("vw1", "variance", 90.5, 1, {"keep-rate warm-up epochs": 1.0}),
            ("vd", "variance", 88.0, 0, {"distillation": {"teacher": "t"}}), ("m", "medad", 87.25, 0, {})]  # fmt: skip
    for name, method, top1, seed, training in runs:
        _run(tmp_path / name, method, top1, 1.0, 1.0)
        path = tmp_path / name / "pruning_results.json"
        results = json.loads(path.read_text())
        results["training"] = {"seed": seed, **training}
        path.write_text(json.dumps(results))
    text = finetune_table.main([str(tmp_path / name) for name, *_ in runs] + ["--no_speed", "--grid"])
    grid = text[text.index("| pruning | patch stride | plain") :].split("\n")
    assert grid[0] == "| pruning | patch stride | plain | keep-rate warm-up 1 epoch | distilled |"
    assert grid[2] == "| unpruned | 16 | 91.00 (2 seeds) | — | — |"  # mean of 90 and 92
    assert grid[3] == "| variance, keep 0.7, fusion | 16 | 89.00 (-2.00) | 90.00 (-1.00; 2 seeds) | 88.00 (-3.00) |"
    assert grid[1] == "|---|---|---|---|---|"
    assert grid[4] == "| medad, keep 0.7, fusion | 16 | 87.25 (-3.75) | — | — |"
    assert grid[6].startswith("Cells: mean top-1 (%) over the seeds run (difference to the plain unpruned mean")
    with pytest.raises(
        ValueError, match="vw1 and pruning_results are the same setting .* and seed 1: pass each run once"
    ):
        finetune_table.main([str(tmp_path / "vw1"), str(tmp_path / "vw1" / "pruning_results.json"), "--grid"])
    assert "| pruning | patch stride | plain" not in finetune_table.main([str(tmp_path / "v"), "--no_speed"])
    # the same label with other pruning layers (tokens per stage): two rows, told apart by their tokens, not averaged
    path = tmp_path / "m" / "pruning_results.json"
    results = json.loads(path.read_text())
    results["metrics"]["pruned"]["tokens"] = "196→98+1"
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "pruning_results.json").write_text(json.dumps(results))
    text = finetune_table.main([str(tmp_path / "m"), str(tmp_path / "m2"), "--no_speed", "--grid"])
    assert "| medad, keep 0.7, fusion (196 tokens) | 16 | 87.25 |" in text
    assert "| medad, keep 0.7, fusion (196→98+1 tokens) | 16 | 87.25 |" in text
    assert "none at stride 16, so no difference there" in text


def test_finetune_table_in_run_speedups_and_method_labels(tmp_path):
    finetune_table = _load("finetune_table")
    _run(tmp_path / "base", None, 90.0, 50.0, 10.0)
    _run(tmp_path / "bspf", "bspf", 89.0, 60.0, 12.0)
    results = json.loads((tmp_path / "bspf" / "pruning_results.json").read_text())
    results["metrics"]["pruned"]["speedup"] = 1.31  # its own, interleaved with the unpruned model in the run
    results["pruning"]["bspf_block"] = 1
    results["protocol"]["machine"] = "cpu (B)"
    (tmp_path / "bspf" / "pruning_results.json").write_text(json.dumps(results))
    text = finetune_table.main([str(tmp_path / "base"), str(tmp_path / "bspf"), "--in_run_speedup"])
    assert "| base | unpruned | 0 | 16 | 196 | 90.00 | 99.00 | 1.000 | 50.0 | — | 10.0 |" in text
    assert (
        "| bspf | BSPF (block 1, mean), keep 0.7, similarity fusion | 0 | 16 | 196 | 89.00 | 99.00 | 1.000 | 60.0 | "
        "1.31× | 12.0 |" in text
    )
    assert "machines: ?; cpu (B)." in text


def test_render_model_cards_writes_the_card_with_the_note_and_never_overwrites(tmp_path):
    from test_model_card import RESULTS

    render_model_cards = _load("render_model_cards")
    run = tmp_path / "deit-tiny-imagenette-variance-0.7"
    run.mkdir()
    (run / "pruning_results.json").write_text(json.dumps(RESULTS))
    (path,) = render_model_cards.main([str(run), "--output_dir", str(tmp_path / "cards"), "--note", "Not on the Hub."])
    assert path == tmp_path / "cards" / "deit-tiny-imagenette-variance-0.7.md"
    text = path.read_text()
    assert "Not on the Hub." in text and "91.23" in text and text.startswith("---\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        render_model_cards.main([str(run), "--output_dir", str(tmp_path / "cards")])
    path.write_text("edited by hand")
    render_model_cards.main([str(run), "--output_dir", str(tmp_path / "cards"), "--overwrite"])
    assert "Not on the Hub." not in path.read_text() and "91.23" in path.read_text()
    with pytest.raises(FileNotFoundError, match="did the run"):
        render_model_cards.main([str(tmp_path / "missing")])


def test_readings_table_puts_each_reading_against_random(tmp_path):
    readings_table = _load("readings_table")

    def row(method, keep, top1, **fields):
        return {"pruning_method": method, "keep_rate": keep, "top1": top1, "renyi_alpha": 1.0, "entropy_axis": "query",
                "bspf_block": 3, "bspf_joint": "mean", **fields}  # fmt: skip

    report = {
        "rows": [row(None, 1.0, 73.0), row("entropy", 0.7, 66.5, renyi_alpha=float("inf"), entropy_axis="key"),
                 row("entropy", 0.5, 50.25, renyi_alpha=float("inf"), entropy_axis="key"), row("random", 0.7, 66.0),
                 row("random", 0.5, 55.0), row("bspf", 0.7, 69.0, bspf_block=1), row("bspf", 0.5, 60.0, bspf_block=1)],
        "protocol": {"images": 10, "data": "d", "model": "m", "machine": "cpu", "torch": "2", "command": "c"},
    }  # fmt: skip
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(report))
    readings_table.main([str(tmp_path / "run"), "--output", str(tmp_path / "t.md")])
    text = (tmp_path / "t.md").read_text()
    assert "| key | ∞ (min-entropy) | 66.50 (+0.50) | 50.25 (-4.75) |" in text
    assert "| random | | 66.00 (+0.00) | 55.00 (+0.00) |" in text and "| unpruned | | 73.00 | |" in text
    assert "| 1 | mean | 69.00 (+3.00) | 60.00 (+5.00) |" in text
    with pytest.raises(SystemExit, match="already exists"):
        readings_table.main([str(tmp_path / "run"), "--output", str(tmp_path / "t.md")])


def test_remote_code_check_compares_the_shipped_code_with_the_package(tmp_path):
    import numpy as np
    import torch
    from conftest import tiny_config_kwargs
    from PIL import Image
    from transformers import ViTImageProcessor

    from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification

    remote_code_check = _load("remote_code_check")
    torch.manual_seed(0)
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(pruning_method="bspf")))
    model.save_pretrained(tmp_path / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    row = remote_code_check.compare(str(tmp_path / "model"), remote_code_check.first_images(str(tmp_path), 3))
    assert row["remote_class"].startswith("transformers_modules.") and row["method"] == "bspf"
    assert row["identical"] and row["max_abs_diff"] == 0.0 and row["images"] == 3
    with pytest.raises(FileNotFoundError, match="fewer than the 4"):
        remote_code_check.first_images(str(tmp_path), 4)
    with pytest.raises(FileNotFoundError, match="saved by hf_vitprune"):
        remote_code_check.compare(str(tmp_path), [])


def test_finetune_table_labels_warmup_pretrained_teacher_and_token_mse(tmp_path):
    """Runs that differ only in their recipe get different labels, so the seed summary never pools them."""
    finetune_table = _load("finetune_table")
    recipes = {
        "warm": {"keep-rate warm-up epochs": 1.0},
        "in1k": {"distillation": {"teacher": "ckpt with pruning off", "class_token_mse_weight": 0.0}},
        "mse": {"distillation": {"teacher": "runs/t", "class_token_mse_weight": 0.5}, "seed": 1},
        "hot": {"distillation": {"teacher": "runs/t", "alpha": 0.9, "temperature": 3.0}},
    }
    for name, training in recipes.items():
        _run(tmp_path / name, "variance", 90.0, 75.0, 14.0)
        path = tmp_path / name / "pruning_results.json"
        results = json.loads(path.read_text())
        results["training"] = training
        path.write_text(json.dumps(results))
    text = finetune_table.main([str(tmp_path / name) for name in recipes] + ["--no_speed"])
    assert "| warm | variance, keep 0.7, fusion, keep-rate warm-up 1 epoch | 0 |" in text
    assert "| in1k | variance, keep 0.7, fusion, distilled from the pre-trained checkpoint | 0 |" in text
    assert "| mse | variance, keep 0.7, fusion, distilled + class-token MSE (0.5) | 1 |" in text
    assert "| hot | variance, keep 0.7, fusion, distilled (α 0.9, τ 3) | 0 |" in text
    assert "top-1 mean" not in text  # four recipes, one seed each: no seed summary


def test_speed_agreement_matches_speed_tables_with_evaluate_rows(tmp_path, capsys):
    speed_agreement = _load("speed_agreement")
    header = (
        "| model | method | GMACs | GMACs ratio | images/s (batch 64) | speed-up (min–max) | realisation | "
        "batch-1 ms (p90) | batch-1 speed-up | batch-1 realisation |"
    )
    rows = [
        "| deit-small | variance 0.7 | 3.036 | 1.52× | 22.7 | 1.90× (1.06–1.62) | 1.04 | 61.1 (66.7) | 1.46× | 0.96 |",
        "| deit-tiny | unpruned | 1.258 | 1.00× | 54.1 | 1.00× (1.00–1.00) | 1.00 | 23.8 (36.9) | 1.00× | 1.00 |",
        "| deit-tiny | variance 0.7 | 0.824 | 1.53× | 82.0 | 1.50× (1.43–1.65) | 1.03 | 22.9 (29.8) | 1.10× | 0.69 |",
        "| deit-tiny | evit 0.5 | 0.632 | 1.99× | 103.5 | 2.00× (1.73–2.49) | 0.94 | 22.4 (26.7) | 1.20× | 0.58 |",
        "| deit-tiny | tome r=13 | 0.737 | 1.71× | 88.3 | 1.60× (1.54–1.74) | 0.97 | 28.1 (37.3) | 0.91× | 0.53 |",
        "| deit-tiny | ceiling 0.7 | 0.824 | 1.53× | 80.4 | 1.58× (1.41–1.71) | 1.03 | 22.9 (29.9) | 1.09× | 0.72 |",
    ]
    bench = tmp_path / "bench.md"
    bench.write_text("\n".join(["Machine: x", "", "### 1. Speed-up", "", header, "|---|" * 1, *rows, "", "### 3."]))
    evaluate = tmp_path / "results.json"
    evaluate.write_text(json.dumps({"rows": [
        {"name": "unpruned", "speedup": 1.0, "latency_speedup": 1.0},
        {"name": "variance@0.7+fusion", "speedup": 1.53, "latency_speedup": 1.0},
        {"name": "evit@0.5+fusion", "speedup": 2.10, "latency_speedup": None},
        {"name": "tome(r=13)", "speedup": 1.60, "latency_speedup": 0.91},
        {"name": "tome(r=13)", "matched_target": 0.8, "speedup": 9.0, "latency_speedup": None},
        {"name": "medad@0.7+fusion", "speedup": 1.7, "latency_speedup": None},
    ]}))  # fmt: skip
    assert speed_agreement.key_of_speed_name("variance 0.7") == "variance@0.7+fusion"
    assert speed_agreement.key_of_speed_name("ceiling 0.5") == "ceiling 0.5"
    with pytest.raises(ValueError, match="pass --model"):
        speed_agreement.speedups_of(str(bench))
    with pytest.raises(ValueError, match="no rows of model 'vit-huge'"):
        speed_agreement.speedups_of(str(bench), "vit-huge")
    # 1.50 / 1.53 - 1 = -1.96 %, 2.00 / 2.10 - 1 = -4.76 %, tome exact; the sweep's matched row is left out
    assert speed_agreement.main([str(bench), str(evaluate), "--model", "deit-tiny"]) == 1
    out = capsys.readouterr().out
    assert "| variance@0.7+fusion | 1.50× | 1.53× | 2.0 % | 1.10× | 1.00× | 10.0 % |" in out
    assert "| evit@0.5+fusion | 2.00× | 2.10× | 4.8 % | — | — | — |" in out
    assert "| tome(r=13) | 1.60× | 1.60× | 0.0 % | 0.91× | 0.91× | 0.0 % |" in out
    assert "2 of 3 shared rows agree within 3 % at batch 64; largest difference 4.8 %." in out
    assert "ceiling" not in out and "medad" not in out
    assert speed_agreement.main([str(bench), str(evaluate), "--model", "deit-tiny", "--tolerance", "0.05"]) == 0
    assert speed_agreement.main([str(bench), str(bench), "--model", "deit-small"]) == 0  # one row, identical
    skipped = tmp_path / "skipped.json"
    skipped.write_text(json.dumps({"rows": [{"name": "unpruned", "speedup": float("nan")}]}))
    with pytest.raises(ValueError, match="--skip_throughput"):
        speed_agreement.speedups_of(str(skipped))
