"""Do two runs of `hf-vitprune evaluate` / `sweep` report the same numbers? Row by row, on what does not depend on
the machine's speed: top-1, top-5, GMACs, tokens per stage (images/s are left out: they drift).

    python benchmarks/diff_results.py benchmarks/results/evaluate_deit_tiny_imagenette.json \
        runs/repro/readme_eval/results.json

Rows are matched by their settings (the method and every setting it reads, as its reducer declares them, and
`matched_target` for the sweep's matched-GMACs rows), not by their names. Prints one line per difference and a summary;
exits 1 if any number differs or a row is missing on either side.
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_vitprune.reducers import REDUCERS

FIELDS = ("top1", "top5", "gmacs", "tokens", "images")


def row_key(row: dict) -> tuple:
    """What identifies a row across runs: its method, the value of every setting the method reads (a method no longer
    registered: every pruning field the row holds), and its matched-GMACs target."""
    method = row.get("pruning_method")
    reducer = REDUCERS.get(method)
    read = reducer.settings_used if reducer is not None else tuple(sorted(k for k in row if k not in FIELDS))
    return method, tuple((name, json.dumps(row.get(name))) for name in read), row.get("matched_target")


def rows_by_key(path: str) -> dict:
    """`{row_key(row): row}` of a results file."""
    with open(path) as f:
        report = json.load(f)
    return {row_key(row): row for row in report["rows"]}


def diff(old_path: str, new_path: str, tolerance: float = 0.0) -> list[str]:
    """The differences between the two files, one line each (empty when they agree).

    Args:
        tolerance (`float`): largest absolute difference of a number that still counts as equal (GMACs are printed
            with 9 digits; 0 means exactly equal).
    """
    old, new = rows_by_key(old_path), rows_by_key(new_path)
    lines = [f"missing in {new_path}: {row['name']}" for key, row in old.items() if key not in new]
    lines += [f"missing in {old_path}: {row['name']}" for key, row in new.items() if key not in old]
    for key in old.keys() & new.keys():
        target = key[2]
        for field in FIELDS:
            a, b = old[key].get(field), new[key].get(field)
            same = a == b or (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= tolerance)
            if not same:
                lines.append(f"{new[key]['name']}{'' if target is None else f' (target {target})'}: {field} {a} -> {b}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args(argv)
    lines = diff(args.old, args.new, args.tolerance)
    print("\n".join(lines) if lines else "")
    print(f"{len(rows_by_key(args.old))} rows compared on {', '.join(FIELDS)}: {len(lines)} difference(s)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
