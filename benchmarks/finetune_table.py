"""Markdown table of fine-tuning runs, from the `pruning_results.json` each `hf-vitprune train` run writes.

Run: `python benchmarks/finetune_table.py runs/train/*/ [--reference NAME] [--output docs/results/finetune.md]`

Columns: pruning setting, patches (stride), tokens per stage, top-1 / top-5, GMACs, inference images/s (the
protocol of `hf_vitprune.measure.measure_throughput`, measured after training), and training images/s as the Trainer
reports them (whole run: data loading and augmentation included), with speed-ups against the reference run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def load_runs(folders: list[str]) -> list[dict]:
    """The results of each run folder, in the order given.

    Raises:
        FileNotFoundError: naming a folder without `pruning_results.json` (a run that did not finish).
    """
    runs = []
    for folder in folders:
        path = Path(folder) / "pruning_results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: did the run in {folder} finish?")
        runs.append({"name": Path(folder).name, **json.loads(path.read_text())})
    return runs


def table(runs: list[dict], reference: str | None = None) -> str:
    """The Markdown table; speed-ups are against the run named `reference` (default: the first)."""
    base = next((r for r in runs if r["name"] == reference), runs[0])
    header = (
        "| run | pruning | patch stride | tokens per stage | top-1 (%) | top-5 (%) | GMACs | images/s | speed-up "
        "| training images/s | training speed-up |"
    )
    lines = [header, "|" + "---|" * 11]
    for run in runs:
        pruning, metrics = run["pruning"], run["metrics"]["pruned"]
        method = pruning.get("pruning_method") or "none"
        setting = (
            "unpruned"
            if method == "none"
            else f"{method}, keep {pruning.get('keep_rate')}" + (", fusion" if pruning.get("fuse_pruned") else "")
        )
        train_ips = metrics.get("train_images_per_s") or float("nan")
        base_train = base["metrics"]["pruned"].get("train_images_per_s") or float("nan")
        lines.append(
            f"| {run['name']} | {setting} | {pruning.get('patch_stride')} | {metrics['tokens']} | "
            f"{metrics['top1']:.2f} | {metrics['top5']:.2f} | {metrics['gmacs']:.3f} | {metrics['images_per_s']:.1f} | "
            f"{metrics['images_per_s'] / base['metrics']['pruned']['images_per_s']:.2f}× | {train_ips:.1f} | "
            f"{train_ips / base_train:.2f}× |"
        )
    first = runs[0]
    notes = [
        "",
        f"top-1 / top-5: {first['protocol']['top1']}.",
        f"images/s: {first['protocol']['throughput']}.",
        "training images/s: the Trainer's `train_samples_per_second` over the whole run (data loading, augmentation "
        "and checkpointing included).",
    ]
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (output_dir of hf-vitprune train)")
    parser.add_argument("--reference", default=None, help="run the speed-ups are measured against (default: first)")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table(load_runs(args.runs), args.reference)
    argv = sys.argv[1:] if argv is None else argv
    text += f"\n\nCommand: `python benchmarks/finetune_table.py {shlex.join(argv)}`\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return text


if __name__ == "__main__":
    main()
