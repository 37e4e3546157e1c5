"""`hf-vitprune sweep`: the accuracy / GMACs / images-per-second trade-off of every method, in one run.

Writes `sweep.json`, `sweep.csv`, `sweep.md`, `top1_vs_gmacs.png`, `top1_vs_images_per_s.png` and, with
`--match_gmacs`, `matched_gmacs.md`: for each target, each method's keep rate (or ToMe's `r`) whose GMACs come
closest to it, evaluated in the same run (the comparison at equal FLOPs of arXiv:2507.19175, Table 2).
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
from dataclasses import dataclass, field, replace

from .evaluation import (
    EvaluateArguments,
    Variant,
    check_output_dir,
    evaluation_protocol,
    markdown_table,
    measure_variants,
    prepare_evaluation,
    table_footer,
    variants_from_args,
)
from .measure import count_gmacs


@dataclass
class SweepArguments(EvaluateArguments):
    """Arguments of `hf-vitprune sweep`: those of `evaluate`, with sweep defaults, plus the matched-GMACs targets."""

    methods: list[str] = field(
        default_factory=lambda: ["evit", "variance", "medad", "entropy", "random", "tome"],
        metadata={"help": "Methods: variance, medad, evit, entropy, random, tome."},
    )
    keep_rates: list[float] = field(
        default_factory=lambda: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], metadata={"help": "Keep rates."}
    )
    fusion: list[str] = field(default_factory=lambda: ["on"], metadata={"help": "Fusion settings: on, off, or both."})
    tome_r: list[int] = field(
        default_factory=lambda: [2, 4, 6, 8, 10, 12, 14, 16], metadata={"help": "ToMe's r values."}
    )
    match_gmacs: list[float] | None = field(
        default=None,
        metadata={"help": "GMACs targets: for each, every method's setting with the closest GMACs is evaluated."},
    )
    output_dir: str = field(default="outputs/sweep", metadata={"help": "Where the tables and plots go."})


def series_name(variant: Variant) -> str:
    """The line a variant belongs to in the plots: method (+ alpha) and fusion, or ToMe."""
    if variant.pruning_method == "tome":
        return "ToMe"
    name = variant.pruning_method
    if name == "entropy":
        name += f" (α={variant.renyi_alpha:g})"
    return name + (" + fusion" if variant.fuse_pruned else "")


def match_gmacs(model, target: float, template: Variant, max_tome_r: int = 64) -> tuple[Variant, float]:
    """The setting of `template`'s method whose GMACs are closest to `target` (ties: the larger keep rate / smaller r).

    Keep rates are searched on a 0.01 grid in (0, 1]; ToMe's `r` over 0..`max_tome_r`. GMACs depend only on the
    token schedule, so each distinct schedule is counted once (fvcore, `count_gmacs`).

    Args:
        model: a PrunedViT model (its pruning fields are restored afterwards).
        target (`float`): GMACs.
        template (`Variant`): the method, fusion setting and alpha to keep.

    Returns:
        `(variant, gmacs)`.
    """
    saved = {k: getattr(model.config, k) for k in template.pruning_fields()}
    num_patches = model.base_model.embeddings.patch_embeddings.num_patches
    if template.pruning_method == "tome":
        candidates = [replace(template, tome_r=r) for r in range(max_tome_r + 1)]
    else:
        candidates = [replace(template, keep_rate=round(k / 100, 2)) for k in range(100, 0, -1)]
    cache, best = {}, None
    try:
        for candidate in candidates:
            model.set_pruning(**candidate.pruning_fields())
            schedule = tuple(model.config.token_schedule(num_patches))
            if schedule not in cache:
                cache[schedule] = count_gmacs(model)
            gmacs = cache[schedule]
            if best is None or abs(gmacs - target) < abs(best[1] - target) - 1e-12:
                best = (candidate, gmacs)
    finally:
        model.set_pruning(**saved)
    return best


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


def matched_table(rows: list[dict]) -> str:
    """Markdown table of the matched-GMACs rows, one block per target."""
    lines = ["| target GMACs | method | setting | GMACs | top-1 (%) | images/s |", "|---|---|---|---|---|---|"]
    for row in sorted((r for r in rows if r.get("matched_target") is not None), key=lambda r: -r["matched_target"]):
        setting = f"r={row['tome_r']}" if row["pruning_method"] == "tome" else f"keep {row['keep_rate']:g}"
        lines.append(
            f"| {row['matched_target']:g} | {row['series']} | {setting} | {row['gmacs']:.3f} | {row['top1']:.2f} | "
            f"{row['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def run_sweep(args: SweepArguments, command: str | None = None) -> dict:
    """Run the sweep `args` describes and write its tables and plots to `args.output_dir`.

    Returns:
        The JSON-ready report (`rows`, `protocol`).

    Raises:
        FileExistsError: if `output_dir` already holds a sweep and `overwrite` is not set.
        ValueError / OSError: for bad settings, data or models, before any evaluation.
    """
    results_file = check_output_dir(args.output_dir, args.overwrite, "sweep.json")
    variants = variants_from_args(args)
    setup = prepare_evaluation(args)
    matched: list[tuple[float, Variant]] = []
    for target in args.match_gmacs or []:
        templates = {series_name(v): v for v in variants[1:]}
        for template in templates.values():
            variant, _ = match_gmacs(setup.model, target, template)
            matched.append((target, variant))
    all_variants = variants + [v for _, v in matched]
    rows, throughput_protocol = measure_variants(setup, all_variants, args)
    for row, variant in zip(rows, all_variants):
        row["series"] = "unpruned" if variant.pruning_method is None else series_name(variant)
        row["matched_target"] = None
    for row, (target, _) in zip(rows[len(variants) :], matched):
        row["matched_target"] = target

    report = {"rows": rows, "protocol": evaluation_protocol(setup, args, command, throughput_protocol)}
    out = results_file.parent
    out.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2))
    columns = ["name", "series", "pruning_method", "keep_rate", "fuse_pruned", "renyi_alpha", "tome_r", "tokens",
               "top1", "top5", "gmacs", "images_per_s", "speedup", "matched_target"]  # fmt: skip
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    footer = table_footer(report)
    text = markdown_table([r for r in rows if r["matched_target"] is None]) + footer
    (out / "sweep.md").write_text(text)
    print(text)
    title = f"{args.model.rstrip('/').split('/')[-1]} on {report['protocol']['data']} ({len(setup.data)} images)"
    plot_tradeoff(rows, "gmacs", "GMACs per image (fvcore)", out / "top1_vs_gmacs.png", title)
    if not args.skip_throughput:
        plot_tradeoff(rows, "images_per_s", "images/s", out / "top1_vs_images_per_s.png", title)
    if matched:
        text = matched_table(rows) + footer
        (out / "matched_gmacs.md").write_text(text)
        print(text)
    return report


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune sweep`: parse `argv` (flags, or one .json / .yaml file) and run."""
    from .cli import parse_arguments

    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(SweepArguments, argv, prog="hf-vitprune sweep", description=__doc__)
    return run_sweep(args, command="hf-vitprune sweep " + shlex.join(argv))
