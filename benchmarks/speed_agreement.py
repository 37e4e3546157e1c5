"""Do timing runs agree? The speed-ups of the rows two or more runs share, side by side, with their relative difference,
and, where the runs kept their per-round speed-ups, how precise each median is and whether the runs differ by more
than their rounds scatter.

Each file is either the `results.json` of `hf-vitprune evaluate` / `sweep` (rows named `variance@0.7+fusion`,
`tome(r=13)`, ...) or the Markdown written by `benchmarks/speed.py` (table 1, rows named `variance 0.7` — the
criteria there run with fusion — or `tome r=13`; pass `--model` to pick one of its shapes). Rows are matched by
setting; the batch-64 speed-up (median over rounds) is compared, and the batch-1 speed-up where every file has one.

    python benchmarks/speed_agreement.py benchmarks/results/benchmark_cpu.md runs/readme_eval/results.json \
        --model deit-tiny --tolerance 0.03

The relative difference of a row is `|a / b - 1|` with `b` the second file's speed-up; with more than two files, the
largest such difference over every pair of files (`b` the later one). Exits 1 when any shared row differs by more than
`--tolerance` at batch 64 (the drift caveat of docs/results.md is dropped only when two runs agree), 2 when the files
share no row.

Per-round speed-ups are in evaluate's `results.json` rows (`speedups`, `latency_speedups`) and in the
`A.rounds.json` that `benchmarks/speed.py --output A.md` writes beside its table. Where every file has them for a row,
a second table gives each run's median with a distribution-free 95 % interval (order statistics of the rounds,
[`median_interval`]), the median of all runs' rounds pooled, and a permutation test ([`permutation_p`]) of "every run's
rounds come from one distribution": a small p says the runs differ by more than their rounds scatter (a between-run
effect that more rounds in one run would not remove), a large one that the difference is what sampling gives.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path

SPEED_ROW = re.compile(r"^(?P<method>[a-z]+) (?:(?P<keep>[0-9.]+)|r=(?P<r>[0-9]+))$")


def key_of_speed_name(name: str) -> str:
    """The evaluate-style name of a `benchmarks/speed.py` row: `variance 0.7` → `variance@0.7+fusion` (speed.py times
    the criteria with fusion), `tome r=13` → `tome(r=13)`, `unpruned` → `unpruned`; other rows (the `ceiling` rows)
    keep their own name, so they match nothing from `evaluate`.
    """
    match = SPEED_ROW.match(name)
    if name == "unpruned" or match is None or match["method"] == "ceiling":
        return name
    if match["r"] is not None:
        return f"tome(r={match['r']})"
    return f"{match['method']}@{float(match['keep']):g}+fusion"


def speedups_of_markdown(text: str, model: str | None) -> dict[str, tuple[float, float | None]]:
    """`{name: (batch-64 speed-up, batch-1 speed-up)}` from table 1 of a `benchmarks/speed.py` Markdown file.

    Raises:
        ValueError: if the file has no table 1, or rows of several models and `model` is not given.
    """
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("### 1."))
    except StopIteration:
        raise ValueError("no '### 1.' speed table in this Markdown file (is it benchmarks/speed.py output?)") from None
    header = next(line for line in lines[start:] if line.startswith("| model |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    models = set()
    for line in lines[lines.index(header, start) + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|"))))
        models.add(cells["model"])
        if model is not None and cells["model"] != model:
            continue
        latency = cells.get("batch-1 speed-up")
        rows[(cells["model"], key_of_speed_name(cells["method"]))] = (
            float(cells["speed-up (min–max)"].split("×")[0]),
            float(latency.rstrip("×")) if latency and latency != "—" else None,  # "—": timed with --latency_runs 0
        )
    if model is None and len(models) > 1:
        raise ValueError(f"the table has rows of {sorted(models)}: pass --model to pick one.")
    if model is not None and model not in models:
        raise ValueError(f"no rows of model {model!r} in the table (it has {sorted(models)}).")
    return {name: value for (_, name), value in rows.items()}


def speedups_of(path: str, model: str | None = None) -> dict[str, tuple[float, float | None]]:
    """`{name: (batch-64 speed-up, batch-1 speed-up or None)}` of an evaluate / sweep JSON or a speed.py Markdown file.

    Raises:
        ValueError: for a JSON file without speed-ups (run with `--skip_throughput`) or a Markdown file without table 1.
    """
    text = Path(path).read_text()
    if not path.endswith(".json"):
        return speedups_of_markdown(text, model)
    rows = json.loads(text)["rows"]
    out = {}
    for row in rows:
        if row.get("matched_target") is not None:  # the sweep's matched-GMACs rows repeat settings
            continue
        speedup = row.get("speedup")
        if speedup is None or speedup != speedup:
            raise ValueError(f"{path}: row {row['name']!r} has no speed-up (was the run made with --skip_throughput?)")
        out[row["name"]] = (speedup, row.get("latency_speedup"))
    return out


def rounds_of(path: str, model: str | None = None) -> dict[str, tuple[list[float], list[float], list[int] | None]]:
    """`{name: (per-round batch speed-ups, per-round batch-1 speed-ups, rounds per process)}` of a run, or `{}` where
    it kept none: the rows of an evaluate / sweep `results.json` (`speedups`, `latency_speedups`; files written before
    those fields existed have none), or the `A.rounds.json` beside a `benchmarks/speed.py` Markdown file `A.md` (rows
    of `model`, or of its only model). `rounds per process` is `None` for a run timed in one process, else the sizes of
    the consecutive blocks of rounds each fresh process of `speed.py --processes` timed.

    Raises:
        ValueError: if the per-round file holds rows of several models and `model` is not given.
    """
    if path.endswith(".json"):
        rows = json.loads(Path(path).read_text())["rows"]
        return {
            row["name"]: (row["speedups"], row.get("latency_speedups") or [], None)
            for row in rows
            if row.get("matched_target") is None and row.get("speedups")
        }
    sidecar = Path(path).with_suffix(".rounds.json")
    if not sidecar.exists():
        return {}
    rows = [row for row in json.loads(sidecar.read_text())["rows"] if row["table"] == "speed"]
    models = {row["model"] for row in rows}
    if model is None and len(models) > 1:
        raise ValueError(f"{sidecar} has rows of {sorted(models)}: pass --model to pick one.")
    return {
        key_of_speed_name(row["method"]): (row["speedups"], row["latency_speedups"], row.get("rounds_per_process"))
        for row in rows
        if model is None or row["model"] == model
    }


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of the distribution `values` were drawn from: the order statistics
    `(x_(k), x_(n+1-k))` with the largest `k` whose coverage `1 - 2 P(B <= k - 1)`, `B ~ Binomial(n, 1/2)`, is at least
    `confidence` (e.g. n = 10: k = 2, coverage 97.9 %); with too few values for that, `(min, max)` and its coverage
    (n = 5: 93.8 %). Assumes independent draws (here: rounds, drift already taken out by the interleaving).

    Source: the binomial (sign-test) interval for a median, e.g. Hollander, Wolfe & Chicken, *Nonparametric
    Statistical Methods*, 3rd ed., section 3.6.

    Returns:
        `(low, high, coverage)`, coverage as a fraction.

    Raises:
        ValueError: for no values, or `confidence` outside (0, 1).
    """
    if not values:
        raise ValueError("no values: an interval for a median needs at least one.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    ordered, n = sorted(values), len(values)

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(B <= k - 1)
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def cut(values: list, sizes: list[int]) -> list[list]:
    """`values` cut into consecutive blocks of the given sizes (e.g. a pooled run's rounds into its processes'):
    `cut([1, 2, 3], [1, 2]) == [[1], [2, 3]]`. Sizes that do not add up to `len(values)` are the caller's to check."""
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [values[starts[i] : starts[i + 1]] for i in range(len(sizes))]


def permutation_p(
    groups: list[list[float]], permutations: int = 9999, seed: int = 0, blocks: list[list[int]] | None = None
) -> float:
    """p-value of a permutation test of "all groups (runs) were drawn from one distribution", with the largest ratio of
    group medians as the statistic: the share of random reassignments of the pooled values to groups of the same sizes
    (seeded) whose statistic is at least the observed one, counting the observed assignment (`(1 + hits) / (1 +
    permutations)`). With `blocks`, whole blocks of consecutive values (the rounds of one process) are reassigned
    instead of single values, since values within a block are not independent draws. Source: the Monte-Carlo
    permutation test, e.g. Good, *Permutation, Parametric and Bootstrap Tests of Hypotheses*, 3rd ed., chapter 3.

    Args:
        groups (`list[list[float]]`): positive values (speed-ups), one list per run.
        permutations (`int`): random reassignments drawn; the smallest p it can give is `1 / (1 + permutations)`.
        seed (`int`): seed of the reassignments (the same inputs give the same p).
        blocks (`list[list[int]]`, *optional*): per group, the sizes of its consecutive blocks (summing to its length).

    Returns:
        `float` in `(0, 1]`.

    Raises:
        ValueError: for fewer than two groups, an empty group, a value that is not positive, or block sizes that do not
            add up to their group's length.
    """
    if len(groups) < 2 or not all(groups):
        raise ValueError(f"need at least two non-empty groups, got sizes {[len(g) for g in groups]}.")
    if any(value <= 0 for group in groups for value in group):
        raise ValueError("speed-ups must be positive (the statistic is a ratio of medians).")
    blocks = blocks or [[1] * len(group) for group in groups]
    if [sum(sizes) for sizes in blocks] != [len(group) for group in groups]:
        raise ValueError(f"block sizes {blocks} do not add up to the group sizes {[len(g) for g in groups]}.")
    units, counts = [], []  # every block as a list, and how many blocks each group holds
    for group, sizes in zip(groups, blocks):
        units += cut(group, sizes)
        counts.append(len(sizes))

    def statistic(split: list[list[float]]) -> float:
        medians = [statistics.median(group) for group in split]
        return max(medians) / min(medians)

    def regroup(order: list[list[float]]) -> list[list[float]]:
        split, start = [], 0
        for count in counts:
            split.append([value for unit in order[start : start + count] for value in unit])
            start += count
        return split

    observed, shuffler, hits = statistic(groups), random.Random(seed), 0
    for _ in range(permutations):
        shuffler.shuffle(units)
        hits += statistic(regroup(units)) >= observed * (1 - 1e-12)
    return (1 + hits) / (1 + permutations)


def largest_difference(values: list[float]) -> float:
    """`max |a / b - 1|` over every pair of runs, `b` the later one (two runs: `|a / b - 1|`)."""
    return max(abs(a / b - 1) for i, a in enumerate(values) for b in values[i + 1 :])


def compare(runs: list[dict]) -> list[tuple[str, list[float], float, tuple | None]]:
    """The rows every run shares (the unpruned reference left out): `(name, speed-ups, largest difference, batch-1)`
    with `batch-1 = (speed-ups, largest difference)` where every run has a batch-1 speed-up, in the first run's
    order."""
    out = []
    for name in runs[0]:
        if name == "unpruned" or not all(name in run for run in runs):
            continue
        speeds = [run[name][0] for run in runs]
        latencies = [run[name][1] for run in runs]
        latency = None if None in latencies else (latencies, largest_difference(latencies))
        out.append((name, speeds, largest_difference(speeds), latency))
    return out


def rounds_table(names: list[str], rounds: list[dict], labels: list[str]) -> list[str]:
    """The second table: per row and batch, each run's median (over all its rounds) with a distribution-free interval
    and its round count, the pooled median of all runs and the permutation p; rows some run kept no rounds for are left
    out. For a run pooled from fresh processes (`speed.py --processes`) the interval is taken over its processes'
    medians, not its rounds (rounds of one process are not independent draws), and, when every run is such a run, the
    test reassigns whole processes. The interval's coverage is printed (at least 95 % where the count allows).
    """
    header = (f"| setting | batch | {' | '.join(f'{label}: median (interval, coverage), rounds' for label in labels)} "
              "| pooled median | p (one distribution) |")  # fmt: skip
    lines = [header, "|---" * (len(labels) + 4) + "|"]
    for name in names:
        if not all(name in run for run in rounds):
            continue
        for which, batch in ((0, "batch"), (1, "batch 1")):
            groups = [run[name][which] for run in rounds]
            if not all(groups):
                continue
            sizes = [run[name][2] if run[name][2] and len(run[name][2]) > 1 else None for run in rounds]
            cells = []
            for group, blocks in zip(groups, sizes):
                count = f"{len(group)}" if blocks is None else f"{len(group)} in {len(blocks)} processes"
                low, high, coverage = median_interval(
                    group if blocks is None else [statistics.median(unit) for unit in cut(group, blocks)]
                )
                cells.append(f"{statistics.median(group):.2f}× ({low:.2f}–{high:.2f}, {100 * coverage:.0f} %), {count}")
            pooled = statistics.median(v for group in groups for v in group)
            by_process = sizes if all(blocks is not None for blocks in sizes) else None
            p = permutation_p(groups, blocks=by_process)
            lines.append(f"| {name} | {batch} | {' | '.join(cells)} | {pooled:.2f}× | {p:.3f} |")
    return lines if len(lines) > 2 else []


def split_into_blocks(rounds: dict, blocks: int) -> list[dict]:
    """One run's per-round speed-ups cut into `blocks` consecutive blocks of rounds (sizes differing by at most one),
    each shaped like a run: testing the blocks of one run against each other asks whether the speed-up drifts within a
    run (or, for a run pooled from `blocks` fresh processes with equal rounds, whether its processes differ), as
    testing runs against each other asks whether it differs between runs.

    Args:
        rounds (`dict`): a run's `rounds_of`: `{name: (batch speed-ups, batch-1 speed-ups, rounds per process)}`.
        blocks (`int`): how many blocks.

    Returns:
        `list[dict]`: `blocks` dicts shaped like `rounds` (rounds within a block counted as independent draws).

    Raises:
        ValueError: if `blocks` < 2 or a row has fewer rounds than blocks.
    """
    if blocks < 2:
        raise ValueError(f"blocks must be at least 2, got {blocks}.")
    out = [{} for _ in range(blocks)]
    for name, series in rounds.items():
        for which, values in enumerate(series[:2]):
            if values and len(values) < blocks:
                raise ValueError(f"{name}: {len(values)} rounds cannot make {blocks} blocks.")
            bounds = [round(i * len(values) / blocks) for i in range(blocks + 1)]
            for block in range(blocks):
                out[block].setdefault(name, ([], [], None))[which].extend(values[bounds[block] : bounds[block + 1]])
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table(s) and a summary line; return the exit status (0 agree, 1 differ, 2 nothing
    shared)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="two or more runs: evaluate/sweep results.json or speed.py Markdown")
    parser.add_argument("--model", default=None, help="shape of the speed.py table to use (deit-tiny, deit-small)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="largest relative difference that agrees")
    parser.add_argument(
        "--blocks",
        type=int,
        default=1,
        help="cut each run's rounds into this many consecutive blocks and compare the blocks in the per-round table "
        "(does the speed-up drift within a run?); with one run, only that table is printed",
    )
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error(f"--blocks must be at least 1 (1: no cutting), got {args.blocks}.")
    if len(args.runs) < 2 and args.blocks < 2:
        parser.error(f"give at least two runs to compare (or one with --blocks N), got {len(args.runs)}.")
    labels = [chr(ord("A") + i) if i < 26 else f"run {i + 1}" for i in range(len(args.runs))]
    speedups = [speedups_of(path, args.model) for path in args.runs]
    rounds = [rounds_of(path, args.model) for path in args.runs]
    round_labels = labels
    if args.blocks > 1:
        try:
            rounds = [block for run in rounds for block in split_into_blocks(run, args.blocks)]
        except ValueError as error:
            parser.error(f"--blocks {args.blocks}: {error}")
        round_labels = [f"{label}{block + 1}" for label in labels for block in range(args.blocks)]
    if len(args.runs) == 1:
        names = [name for name in speedups[0] if name != "unpruned"]
        table = rounds_table(names, rounds, round_labels) if all(rounds) else []
        if not table:
            print(f"{args.runs[0]} kept no per-round speed-ups to cut into blocks.", file=sys.stderr)
            return 2
        print("\n".join(table) + f"\n\n{labels[0]}: {args.runs[0]}, rounds in {args.blocks} consecutive blocks")
        return 0
    rows = compare(speedups)
    if not rows:
        print(f"{' and '.join(args.runs)} share no timed row.", file=sys.stderr)
        return 2
    speed_cells = " | ".join(f"speed-up {label}" for label in labels)
    batch1_cells = " | ".join(f"batch-1 {label}" for label in labels)
    print(f"| setting | {speed_cells} | difference | {batch1_cells} | difference |")
    print("|---" * (2 * len(labels) + 3) + "|")
    for name, speeds, difference, latency in rows:
        batch1 = " | ".join(["—"] * (len(labels) + 1))
        if latency is not None:
            batch1 = " | ".join(f"{value:.2f}×" for value in latency[0]) + f" | {100 * latency[1]:.1f} %"
        print(f"| {name} | {' | '.join(f'{v:.2f}×' for v in speeds)} | {100 * difference:.1f} % | {batch1} |")
    table = rounds_table([row[0] for row in rows], rounds, round_labels)
    if table:
        print("\n" + "\n".join(table))
    beyond = [row for row in rows if row[2] > args.tolerance]
    print("\n" + "\n".join(f"{label}: {path}" for label, path in zip(labels, args.runs)))
    print(
        f"{len(rows) - len(beyond)} of {len(rows)} shared rows agree within {100 * args.tolerance:g} % at batch 64; "
        f"largest difference {100 * max(row[2] for row in rows):.1f} %."
    )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
