"""Do two timing runs agree? The speed-ups of the rows two runs share, side by side, with their relative difference.

Each file is either the `results.json` of `hf-vitprune evaluate` / `sweep` (rows named `variance@0.7+fusion`,
`tome(r=13)`, ...) or the Markdown written by `benchmarks/speed.py` (table 1, rows named `variance 0.7` — the
criteria there run with fusion — or `tome r=13`; pass `--model` to pick one of its shapes). Rows are matched by
setting; the batch-64 speed-up (median over rounds) is compared, and the batch-1 speed-up where both files have one.

    python benchmarks/speed_agreement.py docs/results/benchmark_cpu.md runs/readme_eval/results.json \
        --model deit-tiny --tolerance 0.03

The relative difference of a row is `|a / b - 1|` with `b` the second file's speed-up. Exits 1 when any shared row
differs by more than `--tolerance` at batch 64 (the README's drift caveat is dropped only when two runs agree), 2 when
the files share no row.
"""

from __future__ import annotations

import argparse
import json
import re
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
            float(latency.rstrip("×")) if latency else None,
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


def compare(a: dict, b: dict) -> list[tuple[str, float, float, float, tuple | None]]:
    """The shared rows (the unpruned reference left out): `(name, speed-up a, speed-up b, |a / b - 1|, batch-1)` with
    `batch-1 = (a, b, |a / b - 1|)` where both have a batch-1 speed-up, in `a`'s order."""
    out = []
    for name, (speed_a, latency_a) in a.items():
        if name == "unpruned" or name not in b:
            continue
        speed_b, latency_b = b[name]
        latency = None
        if latency_a is not None and latency_b is not None:
            latency = (latency_a, latency_b, abs(latency_a / latency_b - 1))
        out.append((name, speed_a, speed_b, abs(speed_a / speed_b - 1), latency))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table and a summary line; return the exit status (0 agree, 1 differ, 2 nothing shared)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="first run: evaluate/sweep results.json or speed.py Markdown")
    parser.add_argument("b", help="second run, the same kinds")
    parser.add_argument("--model", default=None, help="shape of the speed.py table to use (deit-tiny, deit-small)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="largest relative difference that agrees")
    args = parser.parse_args(argv)
    rows = compare(speedups_of(args.a, args.model), speedups_of(args.b, args.model))
    if not rows:
        print(f"{args.a} and {args.b} share no timed row.", file=sys.stderr)
        return 2
    print("| setting | speed-up A | speed-up B | difference | batch-1 A | batch-1 B | difference |")
    print("|---|---|---|---|---|---|---|")
    for name, speed_a, speed_b, difference, latency in rows:
        batch1 = "— | — | —" if latency is None else f"{latency[0]:.2f}× | {latency[1]:.2f}× | {100 * latency[2]:.1f} %"
        print(f"| {name} | {speed_a:.2f}× | {speed_b:.2f}× | {100 * difference:.1f} % | {batch1} |")
    beyond = [row for row in rows if row[3] > args.tolerance]
    print(
        f"\nA: {args.a}\nB: {args.b}\n{len(rows) - len(beyond)} of {len(rows)} shared rows agree within "
        f"{100 * args.tolerance:g} % at batch 64" + (f"; largest difference {100 * max(r[3] for r in rows):.1f} %.")
    )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
