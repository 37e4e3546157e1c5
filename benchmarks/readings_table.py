"""The off-the-shelf table of the entropy readings and the BSPF-ViT choices, from one `hf-vitprune evaluate` run.

Reads the `results.json` of a run such as

    hf-vitprune evaluate --model ../shared/models/deit-tiny-patch16-224 --data ../shared/data/imagenette/val \
      --class_list imagenet1k --skip_throughput --num_workers 1 \
      --methods entropy variance medad evit random bspf --entropy_axes query key heads --renyi_alphas 0.5 1 2 inf \
      --keep_rates 0.7 0.5 --fusion off --bspf_blocks 1 3 --bspf_joints mean product --output_dir runs/entropy_readings

and prints (or writes with `--output`) three Markdown tables: every entropy reading (axis x alpha) at each keep rate
with its difference to random pruning at the same keep rate; the class-attention criteria and random beside it; the
BSPF-ViT choices (block size x joint score). Usage: `python benchmarks/readings_table.py runs/entropy_readings
--output benchmarks/results/entropy_readings.md`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def alpha_text(alpha: float) -> str:
    """`0.5`, `1 (Shannon)`, `2`, `∞ (min-entropy)`."""
    if math.isinf(alpha):
        return "∞ (min-entropy)"
    return f"{alpha:g}" + (" (Shannon)" if alpha == 1 else "")


def tables(report: dict) -> list[str]:
    """The Markdown lines of the three tables (see the module docstring)."""
    rows = report["rows"]
    keep_rates = sorted({row["keep_rate"] for row in rows if row["pruning_method"]}, reverse=True)
    by_method = {}
    for row in rows:
        by_method.setdefault(row["pruning_method"], []).append(row)
    random_top1 = {row["keep_rate"]: row["top1"] for row in by_method.get("random", [])}
    unpruned = by_method[None][0]["top1"]

    def cells(selected: list[dict]) -> str:
        top1 = {row["keep_rate"]: row["top1"] for row in selected}
        out = []
        for k in keep_rates:
            delta = f" ({top1[k] - random_top1[k]:+.2f})" if k in random_top1 else ""
            out.append(f"{top1[k]:.2f}{delta}")
        return " | ".join(out)

    header = " | ".join(f"top-1 at keep {k:g} (Δ vs random)" for k in keep_rates)
    rule = "|---" * (2 + len(keep_rates)) + "|"
    lines = ["### Entropy readings", "", f"| distribution (`entropy_axis`) | order α | {header} |", rule]
    entropy = by_method.get("entropy", [])
    for axis in ("query", "key", "heads"):
        for alpha in sorted({row["renyi_alpha"] for row in entropy}):
            selected = [r for r in entropy if r["entropy_axis"] == axis and r["renyi_alpha"] == alpha]
            if selected:
                lines.append(f"| {axis} | {alpha_text(alpha)} | {cells(selected)} |")
    lines += ["", "### Beside them", "", f"| method | | {header} |", rule, f"| unpruned | | {unpruned:.2f} |"
              + " |" * (len(keep_rates) - 1)]  # fmt: skip
    for method in ("variance", "medad", "evit", "random"):
        if method in by_method:
            lines.append(f"| {method} | | {cells(by_method[method])} |")
    bspf = by_method.get("bspf", [])
    if bspf:
        lines += ["", "### BSPF-ViT choices (similarity fusion, no extra token)", "",
                  f"| `bspf_block` | `bspf_joint` | {header} |", rule]  # fmt: skip
        for block in sorted({row["bspf_block"] for row in bspf}):
            for joint in ("mean", "product"):
                selected = [r for r in bspf if r["bspf_block"] == block and r["bspf_joint"] == joint]
                if selected:
                    lines.append(f"| {block} | {joint} | {cells(selected)} |")
    protocol = report["protocol"]
    lines += ["", f"{protocol['images']} images of `{protocol['data']}`, model `{protocol['model']}`, top-1 over all "
              f"model outputs; {protocol['machine']}, torch {protocol['torch']}.", "",
              f"Command: `{protocol['command']}`"]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="output folder of the evaluate run (holding results.json)")
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file (not replaced)")
    args = parser.parse_args(argv)
    text = "\n".join(tables(json.loads((args.run / "results.json").read_text()))) + "\n"
    print(text)
    if args.output:
        if args.output.exists():
            raise SystemExit(f"{args.output} already exists: remove it or choose another --output.")
        args.output.write_text(text)


if __name__ == "__main__":
    main()
