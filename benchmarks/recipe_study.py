"""The training-recipe study of docs/training.md (issue 42): does fine-tuning with pruning on pay for itself?

Run: `python benchmarks/recipe_study.py runs/recipe --data flowers [--settings NAME ...] [--seeds 0 1 2]
[--table-only] [--output FILE] [--copy-results DIR]`

For each setting and seed it trains one `hf-vitprune train` run (DeiT-Tiny from `../shared`; skipped when its
`pruning_results.json` exists, so an interrupted study resumes), then evaluates the trained model with
`hf-vitprune evaluate --skip_throughput` on the validation split and (Flowers) the test split, each time unpruned and
with variance pruning at keep 0.7 and 0.5 with fusion. So every trained model is read at every budget: a model trained
unpruned and pruned afterwards, and a model trained pruned evaluated unpruned, come from the same evaluations.
The table gives, per setting and budget, the mean and min-max over seeds of val and test top-1.

Data: `flowers` is `../shared/data/oxford-17-flowers` (train 680 / val 340 / test 340 images, new 17-way head, 4
epochs, batch 32); `imagenette` is `../shared/data/imagenette` (train 9,469 / val 3,925 images, new 10-way head, 2
epochs, batch 64). The learning rate is a setting's flag (the study's reference rate is chosen
on val with the unpruned model). `--copy-results DIR` copies every run's `pruning_results.json` and every
evaluation's `results.json` (no weights) to `DIR/<setting>-seed<N>/` in the runs' own layout, so
`python benchmarks/recipe_study.py DIR --data NAME --table-only` recomputes the table from git.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "../shared/models/deit-tiny-patch16-224"
DATA = {
    "flowers": ("../shared/data/oxford-17-flowers", ("val", "test"), 4, 32),
    "imagenette": ("../shared/data/imagenette", ("val",), 2, 64),
}
"""Data name -> (folder, evaluation splits, epochs, batch size)."""

VARIANCE = ("--pruning_method", "variance")
FROM_START = ("--pruning_start_epoch", "0")  # the paper's recipe: pruning on from the first step
SETTINGS: dict[str, tuple[str, ...]] = {
    # reference: fine-tuned unpruned (pruned afterwards by the evaluations), at three learning rates
    "unpruned-lr5e-4": ("--pruning_method", "none", "--learning_rate", "5e-4"),
    "unpruned-lr2.5e-4": ("--pruning_method", "none", "--learning_rate", "2.5e-4"),
    "unpruned-lr1e-3": ("--pruning_method", "none", "--learning_rate", "1e-3"),
    # the paper's recipe, `train` with pruning on before issue 42: DeiT augmentation, Mixup + CutMix, from the start
    "variance-0.5-lr5e-4": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", *FROM_START),
    "variance-0.7-lr5e-4": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "5e-4", *FROM_START),
    # candidate causes, each one change from variance-0.5-lr5e-4
    "variance-0.5-nocutmix": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--cutmix_alpha", "0",
                              *FROM_START),
    "unpruned-nocutmix": ("--pruning_method", "none", "--learning_rate", "5e-4", "--cutmix_alpha", "0"),
    "variance-0.5-lr1e-3": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "1e-3", *FROM_START),
    "variance-0.5-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "2.5e-4", *FROM_START),
    "variance-0.7-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "2.5e-4", *FROM_START),
    "variance-0.5-warmup2": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4",
                             "--keep_rate_warmup_epochs", "2", *FROM_START),
    "variance-0.7-warmup2": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "5e-4",
                             "--keep_rate_warmup_epochs", "2", *FROM_START),
    "variance-0.5-nofusion": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--fuse_pruned", "off",
                              *FROM_START),
    "random-0.5-lr5e-4": ("--pruning_method", "random", "--keep_rate", "0.5", "--learning_rate", "5e-4",
                          *FROM_START),
    # pruning switched on late: unpruned until the start epoch, pruned after (3 of 4 epochs: the new default)
    "variance-0.5-start3": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--pruning_start_epoch", "3"),
    "variance-0.7-start3": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "5e-4", "--pruning_start_epoch", "3"),
    "variance-0.5-start2": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--pruning_start_epoch", "2"),
    "variance-0.5-start3-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "2.5e-4",
                                     "--pruning_start_epoch", "3"),
    "variance-0.7-start3-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "2.5e-4",
                                     "--pruning_start_epoch", "3"),
    # late start with the unpruned stage distilled into the pruned one
    "variance-0.5-start3-self": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--pruning_start_epoch",
                                 "3", "--distill_from", "self"),
    "variance-0.7-start3-self": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "5e-4", "--pruning_start_epoch",
                                 "3", "--distill_from", "self"),
    # a longer budget: does the gap close with more epochs?
    "unpruned-12ep": ("--pruning_method", "none", "--learning_rate", "5e-4", "--num_train_epochs", "12"),
    "variance-0.5-12ep": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--num_train_epochs", "12",
                          *FROM_START),
    "variance-0.5-12ep-start9": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "5e-4", "--num_train_epochs", "12",
                                 "--pruning_start_epoch", "9"),
    # Imagenette (2 epochs, batch 64, the default learning rate 1e-3 per 256 images): pruning for the last quarter
    "variance-0.7-start1.5-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.7", "--learning_rate", "2.5e-4",
                                       "--pruning_start_epoch", "1.5"),
    "variance-0.5-start1.5-lr2.5e-4": (*VARIANCE, "--keep_rate", "0.5", "--learning_rate", "2.5e-4",
                                       "--pruning_start_epoch", "1.5"),
}  # fmt: skip
"""Setting name -> its `hf-vitprune train` flags (pruning, learning rate, recipe changes). Pruning from the first step
is written out (`FROM_START`): `train` starts pruning after three quarters of the run by default since issue 42."""

BUDGETS = (("unpruned", None), ("keep 0.7", "variance@0.7+fusion"), ("keep 0.5", "variance@0.5+fusion"))
"""Evaluated budget -> the `hf-vitprune evaluate` row it reads (None: the unpruned row)."""


def run(command: list[str], log: Path) -> None:
    """Run `command` from the repository root, its output appended to `log`; stop the study if it fails."""
    print("$", " ".join(command), flush=True)
    with log.open("a") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if completed.returncode != 0:
        sys.exit(f"failed (exit {completed.returncode}); see {log}")


def train_command(data: str, flags: tuple[str, ...], seed: int, run_dir: Path) -> list[str]:
    """The `hf-vitprune train` command of one run (a new head for the data set's classes; no per-epoch evaluation
    or checkpoints)."""
    folder, _, epochs, batch_size = DATA[data]
    return [
        "hf-vitprune", "train", "--model_name_or_path", MODEL, "--dataset_name", folder, "--train_split", "train",
        "--eval_split", "val", "--ignore_mismatched_sizes", "--output_dir", str(run_dir), "--num_train_epochs",
        str(epochs), "--per_device_train_batch_size", str(batch_size), "--base_learning_rate", "0",
        "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "2", "--logging_steps", "10",
        "--throughput_runs", "1", "--seed", str(seed), *flags,
    ]  # fmt: skip


def evaluate(data: str, run_dir: Path, split: str, log: Path) -> dict[str, float]:
    """Top-1 (%) of the trained model on `split` at every budget of [`BUDGETS`]; evaluated once (cached in
    `run_dir/eval-<split>/results.json`)."""
    folder, *_ = DATA[data]
    out = run_dir / f"eval-{split}"
    if not (out / "results.json").exists():
        command = ["hf-vitprune", "evaluate", "--model_name_or_path", str(run_dir), "--dataset_name", folder,
                   "--split", split, "--skip_throughput", "--output_dir", str(out), "--pruning_method", "variance",
                   "--keep_rate", "0.7", "0.5", "--fuse_pruned", "on"]  # fmt: skip
        run(command, log)
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    unpruned = next(row for row in rows.values() if not row.get("pruning_method"))
    return {budget: float((rows[name] if name else unpruned)["top1"]) for budget, name in BUDGETS}


def cell(values: list[float]) -> str:
    """`mean (min–max)` of the seeds' values, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(args, splits: tuple[str, ...], log: Path) -> str:
    """The Markdown table of every finished setting (trained and evaluated on every split): top-1 per split and
    budget, mean (min-max) over seeds."""
    header = "| trained as | " + " | ".join(f"{s} {b}" for s in splits for b, _ in BUDGETS) + " | seeds |"
    lines = [header, "|---|" + "---|" * (len(splits) * len(BUDGETS) + 1)]
    for name in args.settings:
        runs = [args.out / f"{name}-seed{s}" for s in args.seeds]
        runs = [r for r in runs if all((r / f"eval-{split}" / "results.json").exists() for split in splits)]
        if not runs:
            continue
        scores = [{split: evaluate(args.data, r, split, log) for split in splits} for r in runs]
        cells = [cell([s[split][budget] for s in scores]) for split in splits for budget, _ in BUDGETS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return "\n".join(lines)


def copy_results(args, splits: tuple[str, ...]) -> None:
    """Copy each run's `pruning_results.json` and its evaluations' `eval-<split>/results.json` (no weights) under
    `args.copy_results`, in the runs' layout (so `--table-only` reads the copy as it reads the runs)."""
    for name in args.settings:
        for seed in args.seeds:
            run_dir = args.out / f"{name}-seed{seed}"
            if not (run_dir / "pruning_results.json").exists():
                continue
            target = args.copy_results / run_dir.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(run_dir / "pruning_results.json", target / "pruning_results.json")
            for split in splits:
                if (run_dir / f"eval-{split}" / "results.json").exists():
                    (target / f"eval-{split}").mkdir(exist_ok=True)
                    shutil.copy(run_dir / f"eval-{split}" / "results.json", target / f"eval-{split}" / "results.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="Folder of the runs (e.g. runs/recipe/flowers).")
    parser.add_argument("--data", choices=sorted(DATA), default="flowers")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="NAME")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true", help="Tabulate the finished runs; train nothing.")
    parser.add_argument("--output", type=Path, help="Also write the table (Markdown) here.")
    parser.add_argument("--copy-results", type=Path, help="Copy the runs' small result files here.")
    args = parser.parse_args(argv)
    folder, splits, epochs, batch_size = DATA[args.data]
    if not args.table_only and not (ROOT / folder).is_dir():
        sys.exit(f"{folder} is absent: the study needs ../shared (its data and DeiT-Tiny).")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "study.log"
    for seed in args.seeds:  # seed by seed: an interrupted study stays balanced across settings
        for name in args.settings:
            run_dir = args.out / f"{name}-seed{seed}"
            if not args.table_only and not (run_dir / "pruning_results.json").exists():
                run(train_command(args.data, SETTINGS[name], seed, run_dir), log)
            if not args.table_only:
                for split in splits:
                    evaluate(args.data, run_dir, split, log)
    text = (
        f"Top-1 (%) of DeiT-Tiny fine-tuned on {args.data} ({epochs} epochs, batch {batch_size}), each trained model "
        f"evaluated unpruned and with variance pruning at keep 0.7 / 0.5 with fusion; mean (min–max) over seeds "
        f"{', '.join(map(str, args.seeds))}. Command: `python benchmarks/recipe_study.py {args.out} --data "
        f"{args.data}`.\n\n" + table(args, splits, log) + "\n"
    )
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.copy_results:
        copy_results(args, splits)


if __name__ == "__main__":
    main()
