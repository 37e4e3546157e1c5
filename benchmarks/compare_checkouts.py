"""Is a change slower? Time two checkouts of hf_vitprune against each other, forward pass by forward pass.

Both checkouts are imported into one process (the old one under another package name), the same random-weight model
(DeiT shapes; speed does not depend on the weights) is built by each, and their forward passes alternate: old, new,
new, old, old, new, ... on one fixed batch. Each pair is timed within a second or two, so this machine's drift (up to a
third over minutes) hits both sides alike; the table gives each side's median images/s and the median and interquartile
range of the per-pair ratio new / old (1.00 = as fast; > 1 = the change is faster).

    git archive <old commit> | tar -x -C /tmp/old
    python benchmarks/compare_checkouts.py --old /tmp/old --new . --pairs 20

Only what every version has is used: `PrunedViTConfig`, `PrunedViTForImageClassification` (torch's `inference_mode`,
fp32, the model's default SDPA attention).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

SHAPES = {
    "deit-small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "deit-tiny": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
}
VARIANTS = [
    ("deit-tiny", None, None),
    ("deit-tiny", "variance", 0.7),
    ("deit-tiny", "variance", 0.5),
    ("deit-tiny", "medad", 0.7),
    ("deit-tiny", "evit", 0.7),
    ("deit-tiny", "entropy", 0.7),
    ("deit-tiny", "tome", 13),
    ("deit-small", None, None),
    ("deit-small", "variance", 0.7),
]


def import_checkout(folder: str, name: str):
    """The `hf_vitprune` package of `folder`, imported as the package `name`."""
    init = os.path.join(os.path.abspath(folder), "hf_vitprune", "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build(package, shape: str, method: str | None, setting) -> torch.nn.Module:
    """A random-init 12-layer, 224 px, 16 px-patch DeiT of `shape` with the given pruning."""
    pruning = {"pruning_method": method}
    if method == "tome":
        pruning["tome_r"] = setting
    elif method is not None:
        pruning["keep_rate"] = setting
    config = package.PrunedViTConfig(**SHAPES[shape], num_labels=1000, layer_norm_eps=1e-6, **pruning)
    return package.PrunedViTForImageClassification(config).eval()


def time_pairs(old_model, new_model, pixel_values, pairs: int) -> tuple[list[float], list[float]]:
    """Seconds per forward pass of each model, alternating old/new in ABBA order, after 2 warm-up passes each."""
    times = {"old": [], "new": []}
    models = {"old": old_model, "new": new_model}
    with torch.inference_mode():
        for side in ("old", "new", "old", "new"):
            models[side](pixel_values=pixel_values)
        for pair in range(pairs):
            for side in ("old", "new") if pair % 2 == 0 else ("new", "old"):
                torch.manual_seed(pair)  # the random criterion draws the same on both sides
                start = time.perf_counter()
                models[side](pixel_values=pixel_values)
                times[side].append(time.perf_counter() - start)
    return times["old"], times["new"]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="folder of the reference checkout")
    parser.add_argument("--new", default=".", help="folder of the changed checkout")
    parser.add_argument("--pairs", type=int, default=20, help="timed old/new pairs per variant")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    old, new = import_checkout(args.old, "hf_vitprune_old"), import_checkout(args.new, "hf_vitprune_new")
    pixel_values = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    lines = [
        f"{args.pairs} alternating old/new pairs per variant; batch {args.batch_size}, 224 px, fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; old: {args.old}, new: {args.new}.",
        "",
        "| model | method | setting | old images/s | new images/s | new / old, median | new / old, IQR |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, method, setting in (v for v in VARIANTS if v[0] in args.shapes):
        torch.manual_seed(0)
        old_model = build(old, shape, method, setting)
        new_model = build(new, shape, method, setting)
        new_model.load_state_dict(old_model.state_dict())
        with torch.inference_mode():
            torch.manual_seed(0)
            a = old_model(pixel_values=pixel_values[:2]).logits
            torch.manual_seed(0)
            b = new_model(pixel_values=pixel_values[:2]).logits
        if not torch.equal(a, b):
            raise RuntimeError(f"{shape} {method} {setting}: the two checkouts compute different logits")
        old_times, new_times = time_pairs(old_model, new_model, pixel_values, args.pairs)
        ratios = sorted(o / n for o, n in zip(old_times, new_times))
        quartiles = statistics.quantiles(ratios, n=4)
        old_rate = args.batch_size / statistics.median(old_times)
        new_rate = args.batch_size / statistics.median(new_times)
        lines.append(
            f"| {shape} | {method or 'unpruned'} | {setting if setting is not None else '—'} | {old_rate:.1f} | "
            f"{new_rate:.1f} | {statistics.median(ratios):.3f} | {quartiles[0]:.3f}–{quartiles[2]:.3f} |"
        )
        print(lines[-1], file=sys.stderr)
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
