"""`hf-vitprune sweep`: the accuracy / GMACs / images-per-second trade-off of every method, in one run.

Writes `sweep.json`, `sweep.csv`, `sweep.md`, `top1_vs_gmacs.png`, `top1_vs_images_per_s.png` and, with
`--match_gmacs`, `matched_gmacs.md`: for each target, each method's keep rate (or ToMe's `r`) whose GMACs come
closest to it, evaluated in the same run (the comparison at equal FLOPs of arXiv:2507.19175, Table 2).
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import sys
from dataclasses import dataclass, field

from . import methods
from .arguments import parse_arguments, with_grid_defaults
from .evaluation import (
    EvaluateArguments,
    Variant,
    evaluation_protocol,
    measure_variants,
    prepare_evaluation,
    variants_from_args,
    write_results,
)
from .measure import count_gmacs
from .reducers import REDUCERS
from .report import check_output_dir, markdown_delimiter, markdown_table, table_footer

SWEEP_OUTPUTS = ("sweep.json", "sweep.csv", "sweep.md", "top1_vs_gmacs.png", "top1_vs_images_per_s.png",
                 "matched_gmacs.md", "predictions.json")  # fmt: skip
"""The files `hf-vitprune sweep` writes into its `--output_dir`."""


SWEEP_DEFAULTS = {
    "pruning_method": ["evit", "variance", "medad", "entropy", "random", "tome"],
    "keep_rate": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
    "fuse_pruned": [True],
    "tome_r": [2, 4, 6, 8, 10, 12, 14, 16],
}
"""What `hf-vitprune sweep` compares when a flag is left out: every criterion along keep rates with fusion, ToMe
along `r`."""


@dataclass
class SweepArguments(with_grid_defaults(EvaluateArguments, SWEEP_DEFAULTS)):
    """Arguments of `hf-vitprune sweep`: those of `evaluate`, with sweep defaults, plus the matched-GMACs targets."""

    match_gmacs: list[float] | None = field(
        default=None,
        metadata={"help": "GMACs targets: for each, every method's setting with the closest GMACs is evaluated."},
    )
    output_dir: str = field(default="outputs/sweep", metadata={"help": "Where the tables and plots go."})


def series_name(variant: Variant, config) -> str:
    """The line a variant belongs to in the plots ([`methods.series`]: method, alpha, fusion; or ToMe)."""
    return methods.series(variant.settings(config))


def match_gmacs(model, target: float, template: Variant, max_tome_r: int = 64) -> tuple[Variant, float]:
    """The setting of `template`'s method whose GMACs are closest to `target` (ties: the larger keep rate / smaller r).

    The setting that moves is the one the method reads: keep rates on a 0.01 grid from 1 down to 0.01 for the pruning
    criteria, ToMe's `r` from 0 up to `max_tome_r`. Along that order the token counts never grow, so GMACs fall,
    except at the first settings, where pruning or merging switches on and adds the small cost of its own work (the
    class-attention row, fusion, ToMe's similarities). The search therefore counts the first 3 settings, bisects the
    rest for the crossing of `target` and counts 3 settings on each side of it: the result is that of counting every
    setting (`tests/test_sweep.py` checks this against the exhaustive search) with about 20 counts instead of 100.
    Each distinct token schedule is counted once (fvcore, `count_gmacs`).

    Args:
        model: a PrunedViT model (its own pruning setting is left unchanged).
        target (`float`): GMACs.
        template (`Variant`): the method, fusion setting and alpha to keep.
        max_tome_r (`int`): largest `r` tried for ToMe.

    Returns:
        `(variant, gmacs)`.
    """
    candidates = matching_candidates(template, max_tome_r)
    gmacs_of = _GMACsCounter(model, candidates)
    low, high = 3, len(candidates) - 1  # first index at or below the target, by bisection over the falling part
    while low < high:
        middle = (low + high) // 2
        if gmacs_of(middle) <= target:
            high = middle
        else:
            low = middle + 1
    counted = {0, 1, 2} | set(range(max(low - 3, 0), min(low + 4, len(candidates))))
    best = min(sorted(counted), key=lambda i: (abs(gmacs_of(i) - target), i))
    if best > 3:  # the first setting with these GMACs (plateaus: e.g. ToMe's r beyond what a layer can merge)
        first, last = 3, best
        while first < last:
            middle = (first + last) // 2
            first, last = (first, middle) if gmacs_of(middle) <= gmacs_of(best) else (middle + 1, last)
        best = first
    return candidates[best], gmacs_of(best)


def matching_candidates(template: Variant, max_tome_r: int = 64) -> list[Variant]:
    """The settings [`match_gmacs`] searches, in order of falling token counts: keep rates 1.00, 0.99, ..., 0.01 (down
    to the method's `min_keep_rate`, 0.50 for PiToMe) when the method reads `keep_rate`, else ToMe's `r` 0, 1, ...,
    `max_tome_r`."""
    reducer = REDUCERS[template.changes["pruning_method"]]
    if reducer.amount_setting == "tome_r":
        return [Variant({**template.changes, "tome_r": r}) for r in range(max_tome_r + 1)]
    rates = [round(k / 100, 2) for k in range(100, 0, -1) if k / 100 >= reducer.min_keep_rate]
    return [Variant({**template.changes, "keep_rate": rate}) for rate in rates]


class _GMACsCounter:
    """GMACs of `candidates[i]` on `model`, counted once per distinct token schedule."""

    def __init__(self, model, candidates: list[Variant]):
        self.model, self.candidates = model, candidates
        self.num_patches = model.base_model.embeddings.patch_embeddings.num_patches
        self.by_schedule: dict[tuple, float] = {}

    def __call__(self, index: int) -> float:
        with self.model.pruning(**self.candidates[index].changes):
            schedule = tuple(self.model.config.token_schedule(self.num_patches))
            if schedule not in self.by_schedule:
                self.by_schedule[schedule] = count_gmacs(self.model)
        return self.by_schedule[schedule]


def plot_tradeoff(rows: list[dict], x: str, xlabel: str, path: str, title: str) -> None:
    """Top-1 against `x` (GMACs or images/s), one line per method, the unpruned model as a star; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    series: dict[str, list[dict]] = {}
    for row in rows[1:]:
        if row.get("matched_target") is None:
            series.setdefault(row["series"], []).append(row)
    for name, points in series.items():
        points = sorted(points, key=lambda r: r[x])
        ax.plot([p[x] for p in points], [p["top1"] for p in points], marker="o", markersize=4, label=name)
    ax.plot([rows[0][x]], [rows[0]["top1"]], marker="*", markersize=14, color="black", linestyle="", label="unpruned")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matched_table(rows: list[dict], images: int) -> str:
    """Markdown table of the matched-GMACs rows: the unpruned model, then for each target (largest first) each
    method's setting whose GMACs came closest ([`match_gmacs`]), best top-1 first, with its top-1 and the binomial
    standard error `sqrt(p (1 - p) / n)` over the `images` evaluated, the drop from the unpruned model, and (when
    timed) the speed-up at the throughput batch (median over interleaved rounds, min-max) and at batch 1 (median
    latency).

    Args:
        rows (`list[dict]`): the sweep's rows (`run_sweep`), the unpruned model first; images (`int`): images evaluated.
    """
    unpruned = rows[0]

    def line(target: str, row: dict) -> str:
        p = row["top1"] / 100
        error = 100 * math.sqrt(p * (1 - p) / max(images, 1))
        timed = not math.isnan(row.get("speedup", math.nan))
        speed = f"{row['speedup']:.2f}× ({row['speedup_min']:.2f}–{row['speedup_max']:.2f})" if timed else "–"
        batch1 = f"{row['latency_speedup']:.2f}×" if row.get("latency_speedup") is not None else "–"
        return (f"| {target} | {row['series']} | {row['name']} | {row['gmacs']:.3f} | {row['top1']:.2f} ± {error:.2f} "
                f"| {row['top1'] - unpruned['top1']:+.2f} | {speed} | {batch1} |")  # fmt: skip

    header = "| target GMACs | method | setting | GMACs | top-1 (± s.e.) | drop | speed-up (min–max) | batch 1 |"
    lines = [header, markdown_delimiter(header), line("—", unpruned)]
    for target in sorted({r["matched_target"] for r in rows if r.get("matched_target") is not None}, reverse=True):
        matched = sorted((r for r in rows if r.get("matched_target") == target), key=lambda r: -r["top1"])
        lines += [line(f"{target:g} ({target / unpruned['gmacs']:.2f}×)", row) for row in matched]
    return "\n".join(lines)


def run_sweep(args: SweepArguments, command: str | None = None) -> dict:
    """Run the sweep `args` describes and write its tables and plots to `args.output_dir`.

    Returns:
        The JSON-ready report (`rows`, `protocol`).

    Raises:
        FileExistsError: if `output_dir` already holds a sweep and `overwrite` is not set.
        ValueError / OSError: for bad settings, data or models, before any evaluation.
    """
    results_file = check_output_dir(args.output_dir, args.overwrite_output_dir, SWEEP_OUTPUTS)
    variants = variants_from_args(args)
    setup = prepare_evaluation(args)
    matched: list[tuple[float, Variant]] = []
    for target in args.match_gmacs or []:
        templates = {series_name(v, setup.model.config): v for v in variants[1:]}
        for template in templates.values():
            variant, _ = match_gmacs(setup.model, target, template)
            matched.append((target, variant))
    all_variants = variants + [v for _, v in matched]
    rows, throughput_protocol = measure_variants(setup, all_variants, args)
    if rows is None:  # not the main process: wait until the main one has timed and written
        setup.accelerator.wait_for_everyone()
        return {}
    for row, variant in zip(rows, all_variants):
        row["series"] = series_name(variant, setup.model.config)
        row["matched_target"] = None
    for row, (target, _) in zip(rows[len(variants) :], matched):
        row["matched_target"] = target

    report = {"rows": rows, "protocol": evaluation_protocol(setup, args, command, throughput_protocol)}
    out = results_file.parent
    write_results(out, {"sweep.json": json.dumps(report, indent=2)}, setup, all_variants)
    columns = ["name", "series", "pruning_method", "keep_rate", "fuse_pruned", "renyi_alpha", "entropy_axis", "tome_r",
               "tokens",
               "top1", "top5", "gmacs", "images_per_s", "speedup", "realisation", "latency_ms", "latency_p90_ms",
               "matched_target"]  # fmt: skip
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    footer = table_footer(report)
    text = markdown_table([r for r in rows if r["matched_target"] is None]) + footer
    (out / "sweep.md").write_text(text)
    print(text)
    name = args.model_name_or_path.rstrip("/").split("/")[-1]
    title = f"{name} on {report['protocol']['data']} ({setup.num_images} images)"
    plot_tradeoff(rows, "gmacs", "GMACs per image (fvcore)", out / "top1_vs_gmacs.png", title)
    if not args.skip_throughput:
        plot_tradeoff(rows, "images_per_s", "images/s", out / "top1_vs_images_per_s.png", title)
    if matched:
        text = matched_table(rows, setup.num_images) + footer
        (out / "matched_gmacs.md").write_text(text)
        print(text)
    setup.accelerator.wait_for_everyone()
    return report


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune sweep`: parse `argv` (flags, or one .json / .yaml file) and run."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(SweepArguments, argv, prog="hf-vitprune sweep", description=__doc__)
    return run_sweep(args, command="hf-vitprune sweep " + shlex.join(argv))
