"""The fine-grained study of docs/entropy.md: DeiT-Tiny fine-tuned with pruning on Oxford 17 Flowers, three seeds.

Run: `python benchmarks/flowers_study.py runs/flowers [--epochs 4] [--learning_rate 5e-4] [--seeds 0 1 2]
[--table-only] [--output FILE]`

1. Trains one `hf-vitprune train` run per setting and seed (skipping runs whose `pruning_results.json` exists, so an
   interrupted study resumes): unpruned; keep 0.7 with fusion: variance, EViT, entropy (query, alpha 1 and 0.5),
   BSPF (its similarity fusion), random; keep 0.5: variance, random, and entropy with the reading of the two that
   has the higher mean **val** top-1 at keep 0.7 (chosen on val, never on test).
2. Evaluates every trained model on the **test** split (`hf-vitprune evaluate --split test --skip_throughput`).
3. Evaluates the seed-0 unpruned model off the shelf on test for every method at keep 0.7 and 0.5
   (`hf-vitprune evaluate` grid).
4. Prints (and with `--output` writes) the tables: per setting the test top-1 of each seed, mean, min-max, the
   standard error of the mean from the spread over seeds, and the binomial standard error of one run.

The data: `../shared/data/oxford-17-flowers` (train 40 / val 20 / test 20 images per class, 17 classes). Every run
reads the real DeiT-Tiny in `../shared/models/deit-tiny-patch16-224`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.path.relpath(ROOT.parent / "shared", ROOT))  # ../shared: the commands run from the root
MODEL = SHARED / "models" / "deit-tiny-patch16-224"
DATA = SHARED / "data" / "oxford-17-flowers"

ENTROPY = ("--pruning_method", "entropy", "--entropy_axis", "query")
SETTINGS: dict[str, tuple[str, ...]] = {
    "unpruned": ("--pruning_method", "none"),
    "variance-0.7": ("--pruning_method", "variance", "--keep_rate", "0.7"),
    "evit-0.7": ("--pruning_method", "evit", "--keep_rate", "0.7"),
    "entropy-a1-0.7": (*ENTROPY, "--renyi_alpha", "1", "--keep_rate", "0.7"),
    "entropy-a0.5-0.7": (*ENTROPY, "--renyi_alpha", "0.5", "--keep_rate", "0.7"),
    "bspf-0.7": ("--pruning_method", "bspf", "--keep_rate", "0.7"),
    "random-0.7": ("--pruning_method", "random", "--keep_rate", "0.7"),
    "variance-0.5": ("--pruning_method", "variance", "--keep_rate", "0.5"),
    "random-0.5": ("--pruning_method", "random", "--keep_rate", "0.5"),
}
"""Setting name -> its pruning flags (keep 0.7 / 0.5 with fusion, the default, at layers 3, 6, 9)."""

LABELS = {
    "unpruned": "unpruned",
    "variance-0.7": "variance, keep 0.7, fusion",
    "evit-0.7": "EViT, keep 0.7, fusion",
    "entropy-a1-0.7": "entropy (query, α=1), keep 0.7, fusion",
    "entropy-a0.5-0.7": "entropy (query, α=0.5), keep 0.7, fusion",
    "bspf-0.7": "BSPF (reconstructed), keep 0.7",
    "random-0.7": "random, keep 0.7, fusion",
    "entropy-a1-0.5": "entropy (query, α=1), keep 0.5, fusion",
    "entropy-a0.5-0.5": "entropy (query, α=0.5), keep 0.5, fusion",
    "variance-0.5": "variance, keep 0.5, fusion",
    "random-0.5": "random, keep 0.5, fusion",
}


def train_command(name: str, flags: tuple[str, ...], seed: int, out: Path, epochs: float, lr: float) -> list[str]:
    """The `hf-vitprune train` command of one run (the recipe chosen on val with the unpruned model). The pruned runs
    prune from the first step (`--pruning_start_epoch 0`, the paper's recipe this study measured; `train` now starts
    pruning after three quarters of the run unless told, see docs/training.md)."""
    return [
        "hf-vitprune", "train", "--model_name_or_path", str(MODEL), "--dataset_name", str(DATA),
        "--train_split", "train", "--eval_split", "val", "--ignore_mismatched_sizes",
        "--output_dir", str(out / f"{name}-seed{seed}"), "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", "32", "--base_learning_rate", "0", "--learning_rate", str(lr),
        "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "2", "--logging_steps", "10",
        "--throughput_runs", "1", "--seed", str(seed), *flags,
        *(() if "none" in flags else ("--pruning_start_epoch", "0")),
    ]  # fmt: skip


def run(command: list[str], log: Path) -> None:
    """Run `command`, its output appended to `log`; stop the study if it fails."""
    print("$", " ".join(command), flush=True)
    with log.open("a") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if completed.returncode != 0:
        sys.exit(f"failed (exit {completed.returncode}); see {log}")


def train(name: str, flags: tuple[str, ...], seed: int, args, log: Path) -> None:
    """Train one run unless it finished before (its `pruning_results.json` exists) or `--table-only`."""
    if not args.table_only and not (args.out / f"{name}-seed{seed}" / "pruning_results.json").exists():
        run(train_command(name, flags, seed, args.out, args.epochs, args.learning_rate), log)


def val_top1(run_dir: Path) -> float:
    """The final val top-1 (%) a train run recorded."""
    results = json.loads((run_dir / "pruning_results.json").read_text())
    return float(results["metrics"]["pruned"]["top1"])


def test_top1(run_dir: Path, flags: tuple[str, ...], log: Path) -> tuple[float, int]:
    """`(top-1 %, images)` of the trained model, with its own pruning `flags`, on the test split; evaluated once
    (cached in `run_dir/test/`)."""
    results = run_dir / "test" / "results.json"
    if not results.exists():
        command = ["hf-vitprune", "evaluate", "--model_name_or_path", str(run_dir), "--dataset_name", str(DATA),
                   "--split", "test", "--skip_throughput", "--output_dir", str(run_dir / "test")]  # fmt: skip
        # the run's own setting only (evaluate's default grid would add others, and the setting without fusion)
        command += [*flags, *([] if "bspf" in flags or "none" in flags else ["--fuse_pruned", "on"])]
        run(command, log)
    rows = json.loads(results.read_text())["rows"]
    row = rows[0] if "none" in flags else rows[1]  # the unpruned reference comes first, then the setting
    return float(row["top1"]), int(row["images"])


def summary(values: list[float], images: int) -> dict:
    """Mean, min, max, the standard error of the mean from the spread over seeds, and the binomial standard error of
    one run's top-1 (`sqrt(p (1 - p) / n)`, in points)."""
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    binomial = 100 * math.sqrt(mean / 100 * (1 - mean / 100) / images)
    return {"mean": mean, "min": min(values), "max": max(values), "se_seeds": spread, "se_binomial": binomial}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="Folder of the runs (e.g. runs/flowers).")
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true", help="Tabulate the finished runs; train nothing.")
    parser.add_argument("--output", type=Path, help="Also write the tables (Markdown) here.")
    args = parser.parse_args(argv)
    if not (ROOT / DATA).is_dir():
        sys.exit(f"{DATA} is absent: the study needs ../shared (the Oxford 17 Flowers splits and DeiT-Tiny).")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "study.log"

    settings = dict(SETTINGS)
    # seed by seed (every setting's seed 0 first), so that an interrupted study is balanced across settings; the
    # entropy reading for keep 0.5 is the one with the higher mean val top-1 at keep 0.7 over the seeds run so far
    first = [n for n in settings if not n.endswith("-0.5")]
    order = list(first)
    for seed in args.seeds:
        for name in first:
            train(name, settings[name], seed, args, log)
        if len(order) == len(first):
            means = {}
            for alpha in ("1", "0.5"):
                runs = [args.out / f"entropy-a{alpha}-0.7-seed{s}" for s in args.seeds]
                runs = [r for r in runs if (r / "pruning_results.json").exists()]
                if runs:
                    means[alpha] = statistics.fmean(val_top1(r) for r in runs)
            if len(means) == 2:
                best = max(means, key=means.get)
                print(f"entropy reading for keep 0.5 (mean val top-1 at keep 0.7: {means}): alpha {best}", flush=True)
                settings[f"entropy-a{best}-0.5"] = (*ENTROPY, "--renyi_alpha", best, "--keep_rate", "0.5")
                order += [f"entropy-a{best}-0.5", *(n for n in SETTINGS if n.endswith("-0.5"))]
        for name in order[len(first) :]:
            train(name, settings[name], seed, args, log)

    lines = [
        f"Test top-1 (%) on Oxford 17 Flowers test (340 images, 17 classes), DeiT-Tiny fine-tuned {args.epochs:g} "
        f"epochs at learning rate {args.learning_rate:g} (batch 32), seeds {', '.join(map(str, args.seeds))}; "
        "SE(seeds): standard error of the mean from the spread over seeds; SE(1 run): binomial.",
        "",
        "| pruning | val top-1 mean | test top-1 per seed | mean | min–max | SE(seeds) | SE(1 run) | GMACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        runs = [args.out / f"{name}-seed{s}" for s in args.seeds]
        runs = [r for r in runs if (r / "pruning_results.json").exists()]
        if not runs:
            continue
        tests = [test_top1(r, settings[name], log) for r in runs]
        stats = summary([t for t, _ in tests], tests[0][1])
        gmacs = json.loads((runs[0] / "pruning_results.json").read_text())["metrics"]["pruned"]["gmacs"]
        vals = statistics.fmean(val_top1(r) for r in runs)
        lines.append(
            f"| {LABELS[name]} | {vals:.2f} | {', '.join(f'{t:.2f}' for t, _ in tests)} | {stats['mean']:.2f} | "
            f"{stats['min']:.2f}–{stats['max']:.2f} | {stats['se_seeds']:.2f} | {stats['se_binomial']:.2f} | "
            f"{gmacs:.3f} |"
        )

    reference = args.out / f"unpruned-seed{args.seeds[0]}"
    grid = args.out / "off-the-shelf"
    if (reference / "pruning_results.json").exists():
        if not (grid / "results.json").exists():
            run(["hf-vitprune", "evaluate", "--model_name_or_path", str(reference), "--dataset_name", str(DATA),
                 "--split", "test", "--skip_throughput", "--output_dir", str(grid), "--pruning_method", "evit",
                 "variance", "medad", "entropy", "random", "bspf", "--keep_rate", "0.7", "0.5"], log)  # fmt: skip
        rows = json.loads((grid / "results.json").read_text())["rows"]
        lines += [
            "",
            f"Off the shelf on the fine-tuned unpruned model (seed {args.seeds[0]}), test, no further training:",
            "",
            "| method | keep rate | test top-1 | GMACs |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['name']} | {r['keep_rate'] if r['pruning_method'] else '—'} | {r['top1']:.2f} | "
                  f"{r['gmacs']:.3f} |" for r in rows]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
