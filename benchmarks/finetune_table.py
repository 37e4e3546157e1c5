"""Markdown table of fine-tuning runs, from the `pruning_results.json` each `hf-vitprune train` run writes.

Run: `python benchmarks/finetune_table.py runs/train/*/ [--reference NAME] [--no_speed | --in_run_speedup]
[--grid] [--output FILE]`

Each argument is a run folder (holding `pruning_results.json`) or such a JSON file itself (e.g. the copies under
benchmarks/results/finetune/). Columns: pruning setting (with distillation), seed, patch stride, tokens per stage,
top-1 /
top-5, GMACs, inference images/s (measured after training, interleaved with the unpruned model), and training
images/s as the Trainer reports them (whole run: data loading and augmentation included), with speed-ups against the
reference run. `--no_speed` leaves the speed columns out (for runs that shared the machine with other jobs: speed is
a property of the architecture, which `benchmarks/speed.py` measures alone). Settings run with more than one seed get
a second table: mean top-1 and the range over seeds. `--grid` adds a table of mean top-1 with one row per pruning
setting and one column per training recipe (plain, keep-rate warm-up, distilled, ...), each against the unpruned mean.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hf_vitprune.report import markdown_delimiter


def load_runs(paths: list[str]) -> list[dict]:
    """The results of each run folder (or results JSON file), in the order given.

    Raises:
        FileNotFoundError: naming a folder without `pruning_results.json` (a run that did not finish).
    """
    runs = []
    for given in paths:
        path = Path(given)
        if path.suffix != ".json":
            path = path / "pruning_results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: did the run in {given} finish?")
        results = json.loads(path.read_text())
        name = Path(given).stem if Path(given).suffix == ".json" else Path(given).name
        runs.append({"name": name, **results})
    return runs


def run_seed(run: dict) -> int:
    """The run's training seed: recorded in `training.seed`, or read from the command line (`--seed`, default 0)."""
    seed = run.get("training", {}).get("seed")
    if seed is not None:
        return int(seed)
    argv = shlex.split(run.get("command", ""))
    return int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0


def setting_text(run: dict) -> str:
    """The pruning setting and the training recipe of a run: [`pruning_text`] followed by [`recipe_text`], e.g.
    `variance, keep 0.7, fusion, keep-rate warm-up 1 epoch, distilled`."""
    return pruning_text(run) + recipe_text(run)


def pruning_text(run: dict) -> str:
    """`unpruned`, or the method's label from the reducer registry with its setting and fusion, e.g. `variance, keep
    0.7, fusion`, `entropy (α=0.5), keep 0.7, fusion`, `BSPF (block 3, mean), keep 0.7, similarity fusion`.

    Raises:
        KeyError: for a `pruning_method` this version of hf_vitprune does not know.
    """
    from hf_vitprune import methods
    from hf_vitprune.reducers import REDUCERS
    from hf_vitprune.token_reduction import PRUNING_FIELDS, PruningSettings

    pruning = run["pruning"]
    method = pruning.get("pruning_method") or "none"
    if method == "none":
        return "unpruned"
    if method not in REDUCERS:
        raise KeyError(f"pruning_method {method!r} is not known to this version of hf_vitprune")
    settings = PruningSettings(**{k: v for k, v in pruning.items() if k in PRUNING_FIELDS})
    fusion = methods.table_cells(settings)[1]
    return f"{methods.label(settings)}, {methods.setting_text(settings)}" + {
        "yes": ", fusion", "similarity": ", similarity fusion"
    }.get(fusion, "")  # fmt: skip


def recipe_text(run: dict) -> str:
    """How the run was trained beyond the common recipe, as a suffix (empty for plain fine-tuning): `, keep-rate
    warm-up N epochs` when the run had one and `, distilled` when it had a teacher (`from the pre-trained checkpoint`
    for `--distill_from unpruned` or the base model's own path, `(α a, τ t)` away from the defaults 0.5 / 1,
    `+ class-token MSE (w)` with `--distill_token_weight w`)."""
    text = ""
    training = run.get("training") or {}
    if training.get("keep-rate warm-up epochs"):
        epochs = training["keep-rate warm-up epochs"]
        text += f", keep-rate warm-up {epochs:g} epoch{'' if epochs == 1 else 's'}"
    distillation = training.get("distillation")
    if distillation:
        text += ", distilled"
        teacher = str(distillation.get("teacher", ""))
        if teacher.endswith("with pruning off") or teacher == run.get("base_model"):
            text += " from the pre-trained checkpoint"
        if (distillation.get("alpha", 0.5), distillation.get("temperature", 1.0)) != (0.5, 1.0):
            text += f" (α {distillation.get('alpha', 0.5):g}, τ {distillation.get('temperature', 1.0):g})"
        if distillation.get("class_token_mse_weight"):
            text += f" + class-token MSE ({distillation['class_token_mse_weight']:g})"
    return text


def recipe_grid(runs: list[dict]) -> list[str]:
    """Lines of a table with one row per pruning setting (and patch stride) and one column per training recipe
    ([`recipe_text`]; `plain` for none), in the order they first appear. A cell is the mean top-1 over the runs of
    that pair (one per seed), its difference to the mean of the plain unpruned runs of the same patch stride (left out
    where there are none, and for that cell itself) and, for more than one seed, the seed count: `96.96 (-0.47; 2
    seeds)`; `—` where that pair was not run. Runs are grouped by pruning setting, stride, tokens per stage (rows
    whose label alone would be the same, e.g. other pruning layers, name their tokens) and recipe only: pass runs of
    one protocol (base model, data, epochs, teacher).

    Raises:
        ValueError: two runs of the same setting, recipe and seed (e.g. a run folder and its results JSON both given),
            which would be averaged as two seeds.
    """
    cells: dict[tuple, dict[str, dict[int, dict]]] = {}
    recipes: list[str] = []
    for run in runs:
        recipe = recipe_text(run).removeprefix(", ") or "plain"
        if recipe not in recipes:
            recipes.append(recipe)
        # tokens per stage tell apart settings the label does not name (other pruning layers)
        key = (pruning_text(run), run["pruning"].get("patch_stride"), run["metrics"]["pruned"].get("tokens"))
        seeds = cells.setdefault(key, {}).setdefault(recipe, {})
        seed = run_seed(run)
        if seed in seeds:
            raise ValueError(
                f"{seeds[seed]['name']} and {run['name']} are the same setting ({key[0]}, {recipe}) and seed {seed}: "
                "pass each run once."
            )
        seeds[seed] = run

    def mean_top1(seeds):
        return sum(r["metrics"]["pruned"]["top1"] for r in seeds.values()) / len(seeds)

    header = "| pruning | patch stride | " + " | ".join(recipes) + " |"
    lines = ["", header, markdown_delimiter(header)]
    unpruned = {key[1]: row["plain"] for key, row in cells.items() if key[0] == "unpruned" and "plain" in row}
    for (setting, stride, tokens), row in cells.items():
        reference = unpruned.get(stride)
        texts = []
        for recipe in recipes:
            if recipe not in row:
                texts.append("—")
                continue
            top1, notes = mean_top1(row[recipe]), []
            if reference is not None and row[recipe] is not reference:
                notes.append(f"{top1 - mean_top1(reference):+.2f}")
            if len(row[recipe]) > 1:
                notes.append(f"{len(row[recipe])} seeds")
            texts.append(f"{top1:.2f}" + (f" ({'; '.join(notes)})" if notes else ""))
        same_label = [key for key in cells if key[:2] == (setting, stride)]
        label = setting if len(same_label) == 1 else f"{setting} ({tokens} tokens)"
        lines.append(f"| {label} | {stride} | " + " | ".join(texts) + " |")
    missing = sorted({key[1] for key in cells} - set(unpruned), key=str)
    note = "Cells: mean top-1 (%) over the seeds run (difference to the plain unpruned mean of the same patch stride"
    note += f"; none at stride {', '.join(map(str, missing))}, so no difference there" if missing else ""
    note += "; seed count where more than one); —: not run"
    return lines + ["", note + "."]


def table(
    runs: list[dict], reference: str | None = None, speed: bool = True, in_run: bool = False, grid: bool = False
) -> str:
    """The Markdown table; speed-ups are against the run named `reference` (default: the first). Without `speed`
    the images/s columns are left out. With `grid`, a last table of top-1 by pruning setting and training recipe
    ([`recipe_grid`]). With `in_run`, the inference speed-up is each run's own (`metrics.pruned.
    speedup`: interleaved with the unpruned model in the same process after training, "—" where the run did not record
    one) and training images/s are shown without a speed-up (runs on different machines or days)."""
    base = next((r for r in runs if r["name"] == reference), runs[0])
    header = "| run | pruning | seed | patch stride | tokens per stage | top-1 (%) | top-5 (%) | GMACs |"
    if speed and in_run:
        header += " images/s | speed-up (in run) | training images/s |"
    elif speed:
        header += " images/s | speed-up | training images/s | training speed-up |"
    lines = [header, markdown_delimiter(header)]
    for run in runs:
        pruning, metrics = run["pruning"], run["metrics"]["pruned"]
        line = (
            f"| {run['name']} | {setting_text(run)} | {run_seed(run)} | {pruning.get('patch_stride')} | "
            f"{metrics['tokens']} | {metrics['top1']:.2f} | {metrics['top5']:.2f} | {metrics['gmacs']:.3f} |"
        )
        train_ips = metrics.get("train_images_per_s") or float("nan")
        if speed and in_run:
            own = metrics.get("speedup")
            own_text = "—" if own is None else f"{own:.2f}×"
            line += f" {metrics['images_per_s']:.1f} | {own_text} | {train_ips:.1f} |"
        elif speed:
            base_train = base["metrics"]["pruned"].get("train_images_per_s") or float("nan")
            speedup = metrics["images_per_s"] / base["metrics"]["pruned"]["images_per_s"]
            line += (
                f" {metrics['images_per_s']:.1f} | {speedup:.2f}× | {train_ips:.1f} | {train_ips / base_train:.2f}× |"
            )
        lines.append(line)
    first = runs[0]
    notes = ["", f"top-1 / top-5: {first['protocol']['top1']}."]
    if speed and in_run:
        machines = sorted({r["protocol"].get("machine", "?") for r in runs})
        timed = next((r for r in runs if r["metrics"]["pruned"].get("speedup") is not None), first)
        notes += [
            "images/s and speed-up (in run): measured by each run after training, interleaved with the unpruned model "
            f"in the same process ({timed['protocol']['throughput']}); machines: {'; '.join(machines)}.",
            "training images/s: the Trainer's `train_samples_per_second` over the whole run (data loading, "
            "augmentation and checkpointing included); no speed-up is given, as the runs did not all share a machine.",
        ]
    elif speed:
        notes += [
            f"images/s: {first['protocol']['throughput']}.",
            "training images/s: the Trainer's `train_samples_per_second` over the whole run (data loading, "
            "augmentation and checkpointing included).",
        ]
    else:
        notes.append(
            "Speed columns left out (`--no_speed`): these runs shared the machine with other jobs; images/s of each "
            "setting, measured alone and interleaved with the unpruned model, are in docs/benchmark_cpu.md."
        )
    return "\n".join(lines + notes + seed_summary(runs) + (recipe_grid(runs) if grid else []))


def seed_summary(runs: list[dict]) -> list[str]:
    """Lines of a second table for settings run with more than one seed: seeds, mean top-1 and min–max."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (setting_text(run), run["pruning"].get("patch_stride"))
        groups.setdefault(key, []).append(run)
    repeated = {key: group for key, group in groups.items() if len({run_seed(r) for r in group}) > 1}
    if not repeated:
        return []
    lines = ["", "| pruning | patch stride | seeds | top-1 mean (%) | top-1 min–max (%) |", "|---|---|---|---|---|"]
    for (setting, stride), group in repeated.items():
        top1 = [r["metrics"]["pruned"]["top1"] for r in group]
        seeds = ", ".join(str(run_seed(r)) for r in group)
        lines.append(
            f"| {setting} | {stride} | {seeds} | {sum(top1) / len(top1):.2f} | {min(top1):.2f}–{max(top1):.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    """Print the tables (and write them to `--output`) for the command line `argv` (default `sys.argv[1:]`); returns
    the text.

    Raises:
        SystemExit: `--output` exists and `--overwrite` was not given (nothing is written).
        FileNotFoundError, ValueError: see [`load_runs`] and [`recipe_grid`].
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", help="run folders (output_dir of hf-vitprune train) or their pruning_results.json files"
    )
    parser.add_argument("--reference", default=None, help="run the speed-ups are measured against (default: first)")
    parser.add_argument("--no_speed", action="store_true", help="leave the images/s columns out (see above)")
    parser.add_argument(
        "--in_run_speedup",
        action="store_true",
        help="each run's own interleaved speed-up against the unpruned model, not one against the reference run",
    )
    parser.add_argument(
        "--grid", action="store_true", help="add a table of mean top-1: pruning settings by training recipes"
    )
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise SystemExit(f"{args.output} already exists: pass --overwrite to replace it, or another --output.")
    text = table(
        load_runs(args.runs), args.reference, speed=not args.no_speed, in_run=args.in_run_speedup, grid=args.grid
    )
    argv = sys.argv[1:] if argv is None else argv
    text += f"\n\nCommand: `python benchmarks/finetune_table.py {shlex.join(argv)}`\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return text


if __name__ == "__main__":
    main()
