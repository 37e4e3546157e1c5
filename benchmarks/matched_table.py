"""The off-the-shelf comparison at matched GMACs, as one table: top-1 with its standard error, GMACs, speed-ups.

Run: `python benchmarks/matched_table.py runs/matched/sweep.json [--output FILE]` on the `sweep.json` of

    hf-vitprune sweep --model_name_or_path ../shared/models/deit-tiny-patch16-224 \\
      --dataset_name ../shared/data/imagenette --split val --class_list imagenet1k \\
      --pruning_method tome pitome evit variance medad bspf --keep_rate 0.7 --tome_r 8 \\
      --match_gmacs 0.918 0.629 --output_dir runs/matched

(0.918 and 0.629 GMACs are 0.73 and 0.50 of the unpruned DeiT-Tiny's 1.258). Each matched row: its method's setting
whose fvcore GMACs come closest to the target (`hf_vitprune.sweep.match_gmacs`), its top-1 and the binomial standard
error `sqrt(p (1 - p) / n)`, the drop from the unpruned model, the speed-up at batch 64 (images/s) and at batch 1
(median latency), both interleaved against the unpruned model (median over rounds, min-max).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def table(report: dict) -> str:
    """The Markdown table of the matched rows of a sweep report (`sweep.json`), the unpruned row first."""
    rows = report["rows"]
    unpruned = rows[0]
    images = report["protocol"]["images"]
    lines = [
        f"Off the shelf (no fine-tuning) at matched GMACs: {report['protocol']['model']} on "
        f"{report['protocol']['data']} ({images} images). Timing: {report['protocol']['throughput']}.",
        "",
        "| target GMACs | method | setting | GMACs | top-1 (± s.e.) | drop | speed-up batch 64 (min–max) "
        "| speed-up batch 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def line(target, row):
        p = row["top1"] / 100
        error = 100 * math.sqrt(p * (1 - p) / images)
        batch1 = f"{row['latency_speedup']:.2f}×" if row.get("latency_speedup") is not None else "–"
        return (
            f"| {target} | {row['series']} | {row['name']} | {row['gmacs']:.3f} | {row['top1']:.2f} ± {error:.2f} | "
            f"{row['top1'] - unpruned['top1']:+.2f} | {row['speedup']:.2f}× ({row['speedup_min']:.2f}–"
            f"{row['speedup_max']:.2f}) | {batch1} |"
        )

    lines.append(line("—", unpruned))
    for target in sorted({r["matched_target"] for r in rows if r.get("matched_target")}, reverse=True):
        matched = [r for r in rows if r.get("matched_target") == target]
        for row in sorted(matched, key=lambda r: -r["top1"]):
            lines.append(line(f"{target:g} ({target / unpruned['gmacs']:.2f}×)", row))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_json", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    text = table(json.loads(args.sweep_json.read_text()))
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
