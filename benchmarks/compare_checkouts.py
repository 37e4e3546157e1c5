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

`--logits` checks instead that a change is behaviour-neutral: for every method (and entropy reading) of the old
checkout, through both integration paths (`PrunedViT*.from_pretrained` and `prune()` on the stock class), on the real
DeiT-Tiny of ../shared (real Imagenette images) and on tiny random DINOv2, DINOv2-with-registers, CLIP vision and
distilled-DeiT models, the two checkouts' logits must be bit-identical; so must a checkpoint saved by the old checkout
and loaded by the new one. It prints one line per case and exits non-zero on the first difference.

    python benchmarks/compare_checkouts.py --old /tmp/old --new . --logits
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


SETTINGS = [
    {"pruning_method": None},
    *({"pruning_method": m, "keep_rate": k, "fuse_pruned": f}
      for m in ("variance", "medad", "evit", "random") for k, f in ((0.7, True), (0.5, False))),
    *({"pruning_method": "entropy", "keep_rate": 0.7, "fuse_pruned": True, "entropy_axis": a, "renyi_alpha": r}
      for a in ("query", "key", "heads") for r in (1.0, 2.0)),
    {"pruning_method": "tome", "tome_r": 8},
    {"pruning_method": "bspf", "keep_rate": 0.7, "bspf_block": 3, "bspf_joint": "mean"},
    {"pruning_method": "bspf", "keep_rate": 0.5, "bspf_block": 1, "bspf_joint": "product"},
    {"pruning_method": "pitome", "keep_rate": 0.9},
    {"pruning_method": "pitome", "keep_rate": 0.7, "pitome_margin": 0.5, "pitome_alpha": 2.0},
]  # fmt: skip
"""Every method and reading the logits check covers."""

TINY = {
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", {}),
    "dinov2-registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification",
                         {"num_register_tokens": 2}),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {}),
    "deit-distilled": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {}),
}  # fmt: skip


def _logits(model, pixel_values):
    torch.manual_seed(0)  # the random criterion draws the same on both sides
    with torch.inference_mode():
        output = model(pixel_values=pixel_values)
    return output.logits if getattr(output, "logits", None) is not None else output.pooler_output


def _pruned_stock(package, model, settings: dict):
    """`prune(model, ...)` as every version takes it: the method first, then the other settings by `set_pruning`."""
    package.prune(model, pruning_method=settings["pruning_method"])
    rest = {k: v for k, v in settings.items() if k != "pruning_method"}
    if rest:
        model.set_pruning(**rest)
    return model


def _real_images(count: int = 8) -> torch.Tensor:
    """`count` Imagenette validation images as DeiT preprocesses them (resize 256, centre crop 224, ImageNet
    mean / std)."""
    from PIL import Image
    from torchvision.transforms import v2

    root = os.path.join(SHARED, "data", "imagenette", "val")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".JPEG"))
    transform = v2.Compose([v2.ToImage(), v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC),
                            v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    step = max(len(paths) // count, 1)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[::step][:count]])


SHARED = os.environ.get("HF_VITPRUNE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def check_logits(old, new) -> list[str]:
    """Bit-identical logits of the two checkouts for every case (see the module docstring).

    Raises:
        RuntimeError: naming the first case whose logits differ.
    """
    import tempfile

    import transformers

    lines = []

    def same(case: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if not torch.equal(a, b):
            raise RuntimeError(f"{case}: logits differ (max |Δ| {float((a - b).abs().max()):.3g})")
        lines.append(f"equal: {case}")
        print(lines[-1], file=sys.stderr)

    deit = os.path.join(SHARED, "models", "deit-tiny-patch16-224")
    if os.path.exists(os.path.join(deit, "model.safetensors")):
        images = _real_images()
        for settings in SETTINGS:
            label = ", ".join(f"{k}={v}" for k, v in settings.items())
            a = old.PrunedViTForImageClassification.from_pretrained(deit, **settings).eval()
            b = new.PrunedViTForImageClassification.from_pretrained(deit, **settings).eval()
            same(f"DeiT-Tiny PrunedViT {label}", _logits(a, images), _logits(b, images))
            stock = [transformers.ViTForImageClassification.from_pretrained(deit).eval() for _ in range(2)]
            same(f"DeiT-Tiny prune() {label}", _logits(_pruned_stock(old, stock[0], settings), images),
                 _logits(_pruned_stock(new, stock[1], settings), images))  # fmt: skip
            with tempfile.TemporaryDirectory() as folder:
                a.save_pretrained(folder)
                c = new.PrunedViTForImageClassification.from_pretrained(folder).eval()
                same(f"DeiT-Tiny old checkpoint -> new {label}", _logits(a, images), _logits(c, images))
    else:
        lines.append(f"skipped: the real DeiT-Tiny (not found under {SHARED})")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for family, (config_name, model_name, extra) in TINY.items():
        config = getattr(transformers, config_name)(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=4, num_labels=5, **extra,
        )  # fmt: skip
        for settings in SETTINGS:
            settings = (
                {**settings, "prune_layers": [1, 2]} if settings["pruning_method"] not in (None, "tome") else settings
            )
            label = ", ".join(f"{k}={v}" for k, v in settings.items())
            torch.manual_seed(0)
            a = getattr(transformers, model_name)(config).eval()
            b = getattr(transformers, model_name)(config).eval()
            b.load_state_dict(a.state_dict())
            same(f"{family} prune() {label}", _logits(_pruned_stock(old, a, settings), pixel_values),
                 _logits(_pruned_stock(new, b, settings), pixel_values))  # fmt: skip
        if family == "deit-distilled":
            for settings in SETTINGS:
                fields = set(new.token_reduction.PRUNING_FIELDS) | {"model_type"}  # the stock runs above wrote them
                kwargs = {k: v for k, v in config.to_dict().items() if k not in fields}
                extra = {"prune_layers": [1, 2]} if settings["pruning_method"] not in (None, "tome") else {}
                torch.manual_seed(0)
                a = old.PrunedDeiTForImageClassificationWithTeacher(old.PrunedDeiTConfig(**kwargs, **settings, **extra))
                b = new.PrunedDeiTForImageClassificationWithTeacher(new.PrunedDeiTConfig(**kwargs, **settings, **extra))
                b.load_state_dict(a.state_dict())
                label = ", ".join(f"{k}={v}" for k, v in settings.items())
                same(
                    f"PrunedDeiT (distilled) {label}", _logits(a.eval(), pixel_values), _logits(b.eval(), pixel_values)
                )
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="folder of the reference checkout")
    parser.add_argument("--new", default=".", help="folder of the changed checkout")
    parser.add_argument("--pairs", type=int, default=20, help="timed old/new pairs per variant")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--logits", action="store_true", help="check bit-identical logits instead of timing")
    args = parser.parse_args(argv)
    old, new = import_checkout(args.old, "hf_vitprune_old"), import_checkout(args.new, "hf_vitprune_new")
    if args.logits:
        lines = check_logits(old, new)
        text = (
            f"{sum(line.startswith('equal') for line in lines)} cases bit-identical; old: {args.old}, new: {args.new}"
        )
        print("\n".join([*(line for line in lines if not line.startswith("equal")), text]))
        return text
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
