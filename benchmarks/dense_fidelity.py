"""How well each method keeps dense features: restored final-layer patch features against the unpruned model's.

Run: `python benchmarks/dense_fidelity.py [--images 1000] [--batch_size 50] [--no_speed] [--output FILE]`

The real DeiT-Tiny (`../shared/models/deit-tiny-patch16-224`) on a seeded random `--images` of the Imagenette
validation photographs (`../shared/data/imagenette/val`, the checkpoint's own preprocessing). For every method at keep
0.9 / 0.7 / 0.5 (pruning layers 3, 6, 9; the attention criteria with fusion and, for variance, without; ToMe at the
`r` whose GMACs come closest to variance's at that keep rate) with `restore_patch_grid=True`, the final layer-normed
patch features `(batch, 196, 192)` are compared, patch by patch, with the unpruned model's by cosine similarity:
mean and 5th percentile over every patch of every image. GMACs are fvcore's (`count_gmacs`); the speed-up of the
model with restoration on is timed against the unpruned model in interleaved rounds (`time_pruning_settings`, batch
64, 5 rounds; leave it out with `--no_speed` on a machine busy with other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.path.relpath(ROOT.parent / "shared"))  # as a user types it from the repository root: ../shared
MODEL = SHARED / "models" / "deit-tiny-patch16-224"
IMAGES = SHARED / "data" / "imagenette" / "val"
KEEP_RATES = (0.9, 0.7, 0.5)
METHODS = (
    ("variance", {"fuse_pruned": True}),
    ("variance", {"fuse_pruned": False}),
    ("medad", {"fuse_pruned": True}),
    ("evit", {"fuse_pruned": True}),
    ("entropy", {"fuse_pruned": True}),
    ("random", {"fuse_pruned": True}),
    ("bspf", {}),
    ("tome", {}),
)


def label(method: str, extra: dict) -> str:
    """The method as the table names it."""
    if method == "tome":
        return "ToMe (merge)"
    if method == "bspf":
        return "BSPF (similarity fusion)"
    return f"{method}, {'fusion' if extra.get('fuse_pruned') else 'no fusion (value where dropped)'}"


def variants(model) -> list[tuple[str, float, dict]]:
    """`(label, keep rate, settings)` of every compared setting; ToMe's `r` matched on GMACs to variance's."""
    from hf_vitprune.evaluation import Variant
    from hf_vitprune.measure import count_gmacs
    from hf_vitprune.sweep import match_gmacs

    out = []
    for keep_rate in KEEP_RATES:
        with model.pruning(pruning_method="variance", keep_rate=keep_rate, fuse_pruned=True):
            target = count_gmacs(model)
        for method, extra in METHODS:
            if method == "tome":
                matched, _ = match_gmacs(model, target, Variant({"pruning_method": "tome"}))
                settings = dict(matched.changes)
            else:
                settings = {"pruning_method": method, "keep_rate": keep_rate, **extra}
            out.append((label(method, extra), keep_rate, {**settings, "restore_patch_grid": True}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--no_speed", action="store_true", help="Leave the speed-up column out.")
    parser.add_argument("--output", type=Path, help="Write the table (Markdown) and a .json beside it here.")
    args = parser.parse_args(argv)
    if not (MODEL / "model.safetensors").exists() or not IMAGES.is_dir():
        sys.exit(f"DeiT-Tiny or the Imagenette images are absent under {SHARED}: this benchmark needs ../shared.")

    from tqdm import tqdm

    from hf_vitprune.data import TransformedImages, collate_skipping, load_image_data, load_preprocessing
    from hf_vitprune.loading import load_pruned_model
    from hf_vitprune.measure import count_gmacs, device_name, time_pruning_settings

    torch.manual_seed(0)
    model = load_pruned_model(str(MODEL), pruning_method=None).eval()
    data = load_image_data(str(IMAGES), max_samples=args.images, seed=0)
    preprocessing = load_preprocessing(str(MODEL), model.config.image_size)
    loader = torch.utils.data.DataLoader(
        TransformedImages(data, preprocessing.eval_transform()), batch_size=args.batch_size,
        collate_fn=collate_skipping, num_workers=1,
    )  # fmt: skip
    settings = variants(model)
    prefix = model.config.num_prefix_tokens
    cosines: list[list[torch.Tensor]] = [[] for _ in settings]
    with torch.inference_mode():
        for pixel_values, _, _ in tqdm(loader, desc="batches"):
            reference = model.base_model(pixel_values).last_hidden_state[:, prefix:]
            for index, (_, _, fields) in enumerate(settings):
                torch.manual_seed(0)  # random pruning: the same draws in every run
                with model.pruning(**fields):
                    restored = model.base_model(pixel_values).last_hidden_state
                assert restored.shape[1] == prefix + reference.shape[1], fields
                cosine = torch.nn.functional.cosine_similarity(restored[:, prefix:], reference, dim=-1)
                cosines[index].append(cosine.flatten())
    unpruned_gmacs = count_gmacs(model)
    rows = []
    for (name, keep_rate, fields), values in zip(settings, cosines, strict=True):
        values = torch.cat(values)
        with model.pruning(**fields):
            gmacs = count_gmacs(model)
        rows.append({"method": name, "keep_rate": keep_rate, "settings": fields, "cosine_mean": values.mean().item(),
                     "cosine_p5": values.quantile(0.05).item(), "gmacs": gmacs, "patches": values.numel()})  # fmt: skip
    protocol = ""
    if not args.no_speed:
        timed = [("unpruned", {"pruning_method": None})] + [(row["method"], row["settings"]) for row in rows]
        timings, protocol = time_pruning_settings(model, timed, batch_size=64, rounds=5, runs=2, latency_runs=0)
        for row, timing in zip(rows, timings[1:], strict=True):
            row["speedup"] = timing.speedup
            row["speedup_min"], row["speedup_max"] = timing.speedup_min, timing.speedup_max

    lines = [
        f"Restored final-layer patch features of DeiT-Tiny against the unpruned model's, {data.source}, "
        f"{len(data)} images x 196 patches ({device_name(torch.device('cpu'))}, torch {torch.__version__}; "
        f"`python benchmarks/dense_fidelity.py --images {args.images}{' --no_speed' if args.no_speed else ''}`). "
        f"Unpruned: {unpruned_gmacs:.3f} GMACs. {protocol}",
        "",
        "| method | keep rate | cosine mean | cosine 5th pct. | GMACs | speed-up at batch 64 (min–max) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        keep = (
            row["keep_rate"]
            if "tome_r" not in row["settings"]
            else f"r={row['settings']['tome_r']} (≈{row['keep_rate']})"
        )
        speed = (
            f"{row['speedup']:.2f}× ({row['speedup_min']:.2f}–{row['speedup_max']:.2f})" if "speedup" in row else "–"
        )
        lines.append(
            f"| {row['method']} | {keep} | {row['cosine_mean']:.4f} | {row['cosine_p5']:.4f} | {row['gmacs']:.3f} | "
            f"{speed} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps({"rows": rows, "protocol": protocol}, indent=1))


if __name__ == "__main__":
    main()
