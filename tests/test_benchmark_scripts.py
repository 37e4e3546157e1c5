"""The scripts under benchmarks/ that turn run outputs into the README's tables."""

import itertools
import json
import statistics

import pytest
from conftest import load_benchmark


def _run(folder, method, top1, ips, train_ips):
    folder.mkdir()
    (folder / "pruning_results.json").write_text(json.dumps({
        "pruning": {"pruning_method": method, "keep_rate": 0.7, "fuse_pruned": True, "patch_stride": 16},
        "metrics": {"pruned": {"top1": top1, "top5": 99.0, "gmacs": 1.0, "images_per_s": ips,
                               "train_images_per_s": train_ips, "tokens": "196"}},
        "protocol": {"top1": "10 images", "throughput": "batch 2"},
    }))  # fmt: skip


def test_finetune_table_computes_speedups_against_the_reference(tmp_path):
    finetune_table = load_benchmark("finetune_table")
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
    finetune_table = load_benchmark("finetune_table")
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
    finetune_table = load_benchmark("finetune_table")
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
    finetune_table = load_benchmark("finetune_table")
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

    render_model_cards = load_benchmark("render_model_cards")
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
    readings_table = load_benchmark("readings_table")

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

    remote_code_check = load_benchmark("remote_code_check")
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
    finetune_table = load_benchmark("finetune_table")
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
    speed_agreement = load_benchmark("speed_agreement")
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


def test_median_interval_and_permutation_test_hand_computed():
    speed_agreement = load_benchmark("speed_agreement")
    # n = 10: coverage of (x_(2), x_(9)) is 1 - 2 (1 + 10) / 1024 = 0.9785; (x_(3), x_(8)) would be 0.8906
    assert speed_agreement.median_interval([float(v) for v in range(10, 0, -1)]) == (2.0, 9.0, 1 - 22 / 1024)
    # n = 5: even (min, max) covers only 1 - 2 / 32 = 93.75 %
    assert speed_agreement.median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, 0.9375)
    assert speed_agreement.median_interval([1.5]) == (1.5, 1.5, 0.0)
    # n = 18: P(B <= 4) = (1 + 18 + 153 + 816 + 3060) / 2^18 = 4048 / 262144, so k = 5 covers 96.9 %; k = 6 would
    # cover 1 - 2 (4048 + 8568) / 262144 = 90.4 %
    assert speed_agreement.median_interval([float(v) for v in range(1, 19)]) == (5.0, 14.0, 1 - 2 * 4048 / 262144)
    with pytest.raises(ValueError, match="no values"):
        speed_agreement.median_interval([])
    with pytest.raises(ValueError, match="confidence"):
        speed_agreement.median_interval([1.0], confidence=1.0)
    # identical runs: every reassignment reaches the observed ratio 1
    assert speed_agreement.permutation_p([[1.5, 1.6, 1.4], [1.5, 1.6, 1.4]], permutations=99) == 1.0
    # separated runs (medians 1.2 and 2.2): the exact p is the share of the C(10, 5) = 252 splits into two groups of
    # five whose medians are as far apart, counted here by enumeration (12 of them, 0.048); the seeded Monte-Carlo
    # estimate from 9999 reassignments lies within 0.01 of it
    low, high = [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]
    pooled, hits = low + high, 0
    for chosen in itertools.combinations(range(10), 5):
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(10) if i not in chosen]
        ratio = max(statistics.median(a), statistics.median(b)) / min(statistics.median(a), statistics.median(b))
        hits += ratio >= 2.2 / 1.2 * (1 - 1e-12)
    assert hits == 12
    assert abs(speed_agreement.permutation_p([low, high]) - hits / 252) < 0.01
    assert speed_agreement.permutation_p([low, high]) == speed_agreement.permutation_p([low, high])  # seeded
    with pytest.raises(ValueError, match="at least two non-empty groups"):
        speed_agreement.permutation_p([low])
    with pytest.raises(ValueError, match="positive"):
        speed_agreement.permutation_p([low, [0.0]])
    assert speed_agreement.largest_difference([2.0, 2.1, 1.9]) == pytest.approx(
        max(2 / 2.1 - 1, -(2 / 1.9 - 1), 2.1 / 1.9 - 1)
    )


def test_speed_agreement_reads_per_round_speedups_of_three_runs(tmp_path, capsys):
    """speed.py's `A.rounds.json` beside `A.md` and evaluate's `speedups`: each run's median with its interval, the
    pooled median and the permutation p; rows without rounds in some run are left out of that table."""
    speed_agreement = load_benchmark("speed_agreement")
    header = (
        "| model | method | GMACs | GMACs ratio | images/s (batch 64) | speed-up (min–max) | realisation | "
        "batch-1 ms (p90) | batch-1 speed-up | batch-1 realisation |"
    )
    rounds = {"a": [1.50, 1.52, 1.48, 1.55, 1.45], "b": [1.50, 1.52, 1.48, 1.55, 1.45]}
    for run, values in rounds.items():
        row = (
            "| deit-tiny | variance 0.7 | 0.824 | 1.53× | 60.0 | 1.50× (1.45–1.55) | 0.98 | "
            "30.0 (31.0) | 1.20× | 0.78 |"
        )
        tome = (
            "| deit-tiny | tome r=13 | 0.737 | 1.71× | 60.0 | 1.60× (1.50–1.70) | 0.94 | 30.0 (31.0) | 1.10× | 0.64 |"
        )
        (tmp_path / f"{run}.md").write_text("\n".join(["### 1. Speed-up", "", header, "|---|", row, tome, ""]))
        (tmp_path / f"{run}.rounds.json").write_text(json.dumps({"rows": [
            {"table": "speed", "model": "deit-tiny", "method": "variance 0.7", "speedups": values,
             "latency_speedups": [1.2, 1.1, 1.3]},
            {"table": "speed", "model": "deit-small", "method": "variance 0.7", "speedups": [9.0],
             "latency_speedups": []},
        ]}))  # fmt: skip
    evaluate = tmp_path / "results.json"
    evaluate.write_text(json.dumps({"rows": [
        {"name": "variance@0.7+fusion", "speedup": 1.58, "latency_speedup": 1.2, "speedups": [1.58] * 6,
         "latency_speedups": []},
        {"name": "tome(r=13)", "speedup": 1.60, "latency_speedup": 1.1},
    ]}))  # fmt: skip
    assert speed_agreement.rounds_of(str(tmp_path / "a.md"), "deit-tiny") == {
        "variance@0.7+fusion": (rounds["a"], [1.2, 1.1, 1.3], None)
    }
    with pytest.raises(ValueError, match="pass --model"):  # the per-round file holds two models
        speed_agreement.rounds_of(str(tmp_path / "a.md"))
    assert speed_agreement.rounds_of(str(evaluate)) == {"variance@0.7+fusion": ([1.58] * 6, [], None)}
    assert speed_agreement.rounds_of(str(tmp_path / "no_sidecar.md")) == {}
    paths = [str(tmp_path / "a.md"), str(tmp_path / "b.md"), str(evaluate)]
    assert speed_agreement.main([*paths, "--model", "deit-tiny"]) == 1  # 1.50 against 1.58: 5.1 %
    out = capsys.readouterr().out
    assert "| variance@0.7+fusion | 1.50× | 1.50× | 1.58× | 5.1 % | 1.20× | 1.20× | 1.20× | 0.0 % |" in out
    assert "| tome(r=13) | 1.60× | 1.60× | 1.60× | 0.0 % |" in out
    # n = 5: (min, max) at 94 %; n = 6: (x_(1), x_(6)) covers 1 - 2 / 64 = 96.9 %; batch 1: evaluate kept none
    assert (
        "| variance@0.7+fusion | batch | 1.50× (1.45–1.55, 94 %), 5 | 1.50× (1.45–1.55, 94 %), 5 | "
        "1.58× (1.58–1.58, 97 %), 6 | 1.54× |" in out  # pooled: the median of 16 rounds, (1.52 + 1.55) / 2
    )
    assert "batch 1 |" not in out and "| tome(r=13) | batch" not in out
    assert speed_agreement.main(paths[:2] + ["--model", "deit-tiny"]) == 0
    assert (
        "| variance@0.7+fusion | batch | 1.50× (1.45–1.55, 94 %), 5 | 1.50× (1.45–1.55, 94 %), 5 | 1.50× | 1.000 |"
        in (capsys.readouterr().out)
    )
    with pytest.raises(SystemExit):
        speed_agreement.main(paths[:1])
    assert "give at least two runs" in capsys.readouterr().err


def test_speed_agreement_cuts_one_run_into_blocks(tmp_path, capsys):
    """`--blocks N`: a run's rounds in N consecutive blocks, tested against each other like runs (drift within a
    run); one run is enough then."""
    speed_agreement = load_benchmark("speed_agreement")
    blocks = speed_agreement.split_into_blocks({"v": ([1.0, 2.0, 3.0, 4.0, 5.0], [], None)}, 2)
    assert blocks == [{"v": ([1.0, 2.0], [], None)}, {"v": ([3.0, 4.0, 5.0], [], None)}]  # bounds 0, round(2.5), 5
    with pytest.raises(ValueError, match="2 rounds cannot make 3 blocks"):
        speed_agreement.split_into_blocks({"v": ([1.0, 2.0], [], None)}, 3)
    with pytest.raises(ValueError, match="at least 2"):
        speed_agreement.split_into_blocks({}, 1)
    evaluate = tmp_path / "results.json"
    evaluate.write_text(json.dumps({"rows": [
        {"name": "unpruned", "speedup": 1.0, "latency_speedup": 1.0, "speedups": [1.0] * 4, "latency_speedups": []},
        {"name": "evit@0.5+fusion", "speedup": 1.95, "latency_speedup": 1.2, "speedups": [1.5, 1.6, 2.4, 2.3],
         "latency_speedups": []},
    ]}))  # fmt: skip
    assert speed_agreement.main([str(evaluate), "--blocks", "2"]) == 0
    out = capsys.readouterr().out
    # the first two rounds against the last two: medians 1.55 and 2.35; of the 6 ways to split 4 rounds into two
    # pairs, 2 separate them that far, so p is about 1 / 3
    line = next(line for line in out.splitlines() if line.startswith("| evit@0.5+fusion | batch |"))
    assert line.startswith(
        "| evit@0.5+fusion | batch | 1.55× (1.50–1.60, 50 %), 2 | 2.35× (2.30–2.40, 50 %), 2 | 1.95× |"
    )
    assert 0.28 < float(line.split(" | ")[-1].rstrip(" |")) < 0.39
    assert "rounds in 2 consecutive blocks" in out
    with pytest.raises(SystemExit):
        speed_agreement.main([str(evaluate)])
    assert "or one with --blocks N" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # four rounds cannot make five blocks: a usage error, not a traceback
        speed_agreement.main([str(evaluate), "--blocks", "5"])
    assert "--blocks 5: unpruned: 4 rounds cannot make 5 blocks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speed_agreement.main([str(evaluate), str(evaluate), "--blocks", "0"])
    assert "--blocks must be at least 1" in capsys.readouterr().err


def test_speed_agreement_tests_pooled_runs_process_by_process(tmp_path, capsys):
    """Runs pooled from fresh processes (`speed.py --processes`): rounds of one process are not independent draws, so
    the interval is taken over the processes' medians and the test reassigns whole processes."""
    speed_agreement = load_benchmark("speed_agreement")
    a, b = [1.0, 1.02, 1.1, 1.12], [2.0, 2.02, 2.1, 2.12]
    # reassigning rounds: 4 of the C(8, 4) = 70 splits put the medians as far apart (counted by enumeration: p about
    # 0.057); reassigning the four processes (two rounds each): 2 of the C(4, 2) = 6 splits (p about 1 / 3)
    assert abs(speed_agreement.permutation_p([a, b]) - 4 / 70) < 0.01
    assert abs(speed_agreement.permutation_p([a, b], blocks=[[2, 2], [2, 2]]) - 1 / 3) < 0.02
    assert speed_agreement.cut([1, 2, 3], [1, 2]) == [[1], [2, 3]]
    with pytest.raises(ValueError, match="do not add up"):
        speed_agreement.permutation_p([a, b], blocks=[[2, 1], [2, 2]])
    header = (
        "| model | method | GMACs | GMACs ratio | images/s (batch 64) | speed-up (min–max) | realisation | "
        "batch-1 ms (p90) | batch-1 speed-up | batch-1 realisation |"
    )
    for run, values in {"a": a, "b": b}.items():
        median = statistics.median(values)
        row = f"| deit-tiny | evit 0.7 | 0.824 | 1.53× | 60.0 | {median:.2f}× (1.00–2.10) | 1.0 | — | — | — |"
        (tmp_path / f"{run}.md").write_text("\n".join(["### 1. Speed-up", "", header, "|---|", row, ""]))
        (tmp_path / f"{run}.rounds.json").write_text(json.dumps({"rows": [
            {"table": "speed", "model": "deit-tiny", "method": "evit 0.7", "speedups": values, "latency_speedups": [],
             "rounds_per_process": [2, 2]},
        ]}))  # fmt: skip
    assert speed_agreement.speedups_of(str(tmp_path / "a.md")) == {"evit@0.7+fusion": (1.06, None)}  # "—": no batch 1
    assert speed_agreement.main([str(tmp_path / "a.md"), str(tmp_path / "b.md")]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| evit@0.7+fusion | batch |"))
    # the interval over the two process medians (1.01, 1.11) covers 1 - 2 / 4 = 50 %
    assert line.startswith("| evit@0.7+fusion | batch | 1.06× (1.01–1.11, 50 %), 4 in 2 processes | 2.06× (2.01–2.11")
    assert 0.31 < float(line.split(" | ")[-1].rstrip(" |")) < 0.36


def test_diff_results_matches_rows_by_their_settings_not_their_names(tmp_path):
    """Two PiToMe rows an older version named alike (`pitome@0.7` for alpha 1 and 2) are two rows, each matched with
    its own setting in the other run, however it is named there."""
    diff_results = load_benchmark("diff_results")
    row = {"pruning_method": "pitome", "keep_rate": 0.7, "pitome_margin": None, "restore_patch_grid": False,
           "top1": 50.0, "top5": 90.0, "gmacs": 0.5, "tokens": "16", "images": 4}  # fmt: skip
    old = [{**row, "name": "pitome@0.7", "pitome_alpha": 1.0}, {**row, "name": "pitome@0.7", "pitome_alpha": 2.0}]
    new = [{**old[1], "name": "pitome@0.7[pitome_alpha=2]", "top1": 75.0}, {**old[0], "name": "pitome@0.7"}]
    for name, rows in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))
    assert len(diff_results.rows_by_key(str(tmp_path / "old.json"))) == 2
    assert diff_results.diff(str(tmp_path / "old.json"), str(tmp_path / "new.json")) == [
        "pitome@0.7[pitome_alpha=2]: top1 50.0 -> 75.0"
    ]


def test_recipe_study_tabulates_seeds_and_recomputes_the_table_from_its_copy(tmp_path, capsys):
    """`--table-only` gives mean (min–max) over seeds per split and budget; `--copy-results` keeps only the small
    files, in the runs' layout, so the same table comes back from the copy (docs/training.md's tables)."""
    recipe_study = load_benchmark("recipe_study")
    runs = tmp_path / "runs"
    scores = {0: (90.0, 91.0, 89.0), 1: (92.0, 90.0, 88.0)}  # unpruned, keep 0.7, keep 0.5
    for seed, (unpruned, keep07, keep05) in scores.items():
        run = runs / f"unpruned-lr5e-4-seed{seed}"
        for split in ("val", "test"):
            (run / f"eval-{split}").mkdir(parents=True)
            rows = [{"name": "unpruned", "pruning_method": None, "top1": unpruned},
                    {"name": "variance@0.7+fusion", "pruning_method": "variance", "top1": keep07},
                    {"name": "variance@0.5+fusion", "pruning_method": "variance", "top1": keep05}]  # fmt: skip
            (run / f"eval-{split}" / "results.json").write_text(json.dumps({"rows": rows}))
        (run / "pruning_results.json").write_text("{}")
        (run / "model.safetensors").write_text("weights stay behind")
    common = ["--data", "flowers", "--table-only", "--seeds", "0", "1", "--settings", "unpruned-lr5e-4"]
    copy = tmp_path / "copy"
    recipe_study.main([str(runs), *common, "--output", str(tmp_path / "a.md"), "--copy-results", str(copy)])
    table = (tmp_path / "a.md").read_text().split("\n\n", 1)[1]
    cells = "91.00 (90.00–92.00) | 90.50 (90.00–91.00) | 88.50 (88.00–89.00)"
    assert f"| unpruned-lr5e-4 | {cells} | {cells} | 2 |" in table
    assert sorted(p.name for p in (copy / "unpruned-lr5e-4-seed0").rglob("*")) == [
        "eval-test", "eval-val", "pruning_results.json", "results.json", "results.json"]  # fmt: skip
    recipe_study.main([str(copy), *common, "--output", str(tmp_path / "b.md")])
    assert (tmp_path / "b.md").read_text().split("\n\n", 1)[1] == table
