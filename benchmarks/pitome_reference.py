"""hf_vitprune's PiToMe against the official code, on real DeiT-Tiny activations.

Run: `python benchmarks/pitome_reference.py --reference PiToMe/algo/pitome/merge.py [--images 500] [--keep_rates 0.9
0.95] [--output FILE]`

`--reference` is `algo/pitome/merge.py` of the official repository (`git clone https://github.com/hchautran/PiToMe`;
licensed CC BY-NC 4.0, so it is not copied into this repository). The real DeiT-Tiny (`../shared/models/
deit-tiny-patch16-224`) runs on a seeded random `--images` of the Imagenette validation photographs with
`pruning_method="pitome"` at each keep rate (the official `ratio`). Two checks:

1. **Merges**, tensor for tensor: at every merging layer the tokens, keys and sizes our reducer receives are handed to
   the official `pitome_vision(metric, ratio, margin, class_token=True, use_bsm_pitome=layer < ceil(12 / 2))` and
   `merge_wavg` (what its DeiT patch, `algo/pitome/patch/timm.py`, calls), and the merged tokens and sizes are compared
   with ours: max |Δ| over every layer and batch.
2. **Predictions**: a forward pass written after the official DeiT patch (`PiToMeBlock.forward`: attention without
   proportional attention, then the official merge) on the same weights, against our model: top-1 of each, the images
   whose prediction differs, and max |Δ logit|.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.path.relpath(ROOT.parent / "shared"))  # as a user types it from the repository root: ../shared
MODEL = SHARED / "models" / "deit-tiny-patch16-224"
IMAGES = SHARED / "data" / "imagenette" / "val"


def load_reference(path: Path):
    """The official `merge.py` as a module.

    Raises:
        SystemExit: when the file is absent, saying where to get it.
    """
    if not path.is_file():
        sys.exit(
            f"{path} not found: clone https://github.com/hchautran/PiToMe and pass --reference "
            "PiToMe/algo/pitome/merge.py."
        )
    spec = importlib.util.spec_from_file_location("pitome_official_merge", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_merge(official, hidden_states, keys, sizes, ratio, layer_idx, num_layers):
    """One official merge step, as `PiToMeBlock.forward` calls it: `(merged (batch, tokens', hidden), sizes (batch,
    tokens', 1))`. `keys` `(batch, tokens, head_dim)` include the class token, as `k.mean(1)` there."""
    merge = official.pitome_vision(
        metric=keys,
        ratio=ratio,
        margin=0.75 - 0.75 * (layer_idx / num_layers),
        class_token=True,
        use_bsm_pitome=layer_idx < math.ceil(num_layers * 0.5),
    )
    return official.merge_wavg(merge, hidden_states, sizes)


def compare_merges(model, official, pixel_values, ratio) -> tuple[float, float, int, torch.Tensor]:
    """Run our model once, handing every merging layer's inputs to the official merge too.

    Returns:
        `(max |Δ| of merged tokens, max |Δ| of sizes, merging layers compared, our logits (batch, classes))`.
    """
    from hf_vitprune.reducers import PiToMeMerger

    worst = [0.0, 0.0, 0]
    original = PiToMeMerger.reduce
    num_layers = model.config.num_hidden_layers

    def checked(self, hidden_states, statistic, state, amount, layer_idx):
        out, new_state = original(self, hidden_states, statistic, state, amount, layer_idx)
        sizes = None if state.token_sizes is None else state.token_sizes.unsqueeze(-1).to(hidden_states.dtype)
        reference, reference_sizes = official_merge(
            official, hidden_states, statistic, sizes, ratio, layer_idx, num_layers
        )
        if reference.shape != out.shape:
            raise AssertionError(f"layer {layer_idx}: official {tuple(reference.shape)}, ours {tuple(out.shape)}")
        worst[0] = max(worst[0], (reference - out).abs().max().item())
        worst[1] = max(worst[1], (reference_sizes[..., 0] - new_state.token_sizes).abs().max().item())
        worst[2] += 1
        return out, new_state

    PiToMeMerger.reduce = checked
    try:
        with torch.inference_mode(), model.pruning(pruning_method="pitome", keep_rate=ratio):
            logits = model(pixel_values).logits
    finally:
        PiToMeMerger.reduce = original
    return worst[0], worst[1], worst[2], logits


def official_logits(model, official, pixel_values, ratio) -> torch.Tensor:
    """Logits `(batch, classes)` of a forward pass written after the official DeiT patch on `model`'s weights:
    per layer LayerNorm -> attention (softmax, no size bias) -> residual -> official merge (`ratio < 1`) -> LayerNorm
    -> MLP -> residual; final LayerNorm; classifier on the class token."""
    vit = model.vit
    num_layers = len(vit.layers)
    with torch.inference_mode(), model.pruning(pruning_method=None):
        x = vit.embeddings(pixel_values)
        sizes = None
        for layer_idx, layer in enumerate(vit.layers):
            attention = layer.attention
            normed = layer.layernorm_before(x)
            shape = (*normed.shape[:-1], -1, attention.head_dim)
            q = attention.q_proj(normed).view(shape).transpose(1, 2)
            k = attention.k_proj(normed).view(shape).transpose(1, 2)
            v = attention.v_proj(normed).view(shape).transpose(1, 2)
            weights = ((q @ k.transpose(-2, -1)) * attention.scaling).softmax(dim=-1)
            out = (weights @ v).transpose(1, 2).reshape(*normed.shape[:-1], -1)
            x = x + attention.o_proj(out)
            if ratio < 1.0:
                x, sizes = official_merge(official, x, k.mean(1), sizes, ratio, layer_idx, num_layers)
            x = x + layer.mlp(layer.layernorm_after(x))
        return model.classifier(vit.layernorm(x)[:, 0])


def random_tensor_check(official) -> list[str]:
    """`pitome_merge` against the official `pitome_vision` + `merge_wavg` on seeded random tokens, keys and sizes
    (3 images, 49 candidates), both matchings, ratios 0.9 / 0.75 / 0.5, margin 0.4: one Markdown row each (max |Δ| of
    the merged tokens, sizes equal or not). Moved here from tests/ (CI has no copy of the official code)."""
    from hf_vitprune.token_merging import pitome_merge, pitome_merge_count

    rows = []
    for bipartite in (True, False):
        for ratio in (0.9, 0.75, 0.5):
            generator = torch.Generator().manual_seed(int(ratio * 100) + bipartite)
            x, keys = torch.randn(3, 50, 16, generator=generator), torch.randn(3, 50, 8, generator=generator)
            sizes = torch.randint(1, 5, (3, 50, 1), generator=generator).float()
            sizes[:, 0] = 1
            merge = official.pitome_vision(metric=keys, ratio=ratio, margin=0.4, class_token=True,
                                           use_bsm_pitome=bipartite)  # fmt: skip
            expected, expected_sizes = official.merge_wavg(merge, x, sizes)
            matching = "bipartite" if bipartite else "energy"
            ids = torch.arange(49).expand(3, -1)
            r = pitome_merge_count(ratio, 49)
            out, new_sizes, _, _, _ = pitome_merge(x, sizes[..., 0], keys, r, 1, ids, margin=0.4, matching=matching)
            same_shape = out.shape == expected.shape
            diff = (out - expected).abs().max().item() if same_shape else float("inf")
            sizes_equal = same_shape and torch.equal(new_sizes, expected_sizes[..., 0])
            rows.append(f"| {matching} | {ratio:g} | {diff:.1e} | {'yes' if sizes_equal else 'NO'} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="The official algo/pitome/merge.py.")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--keep_rates", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--attn_implementation", default="eager", help="Our model's attention: eager or sdpa.")
    parser.add_argument("--output", type=Path, help="Write the table (Markdown) here.")
    args = parser.parse_args(argv)
    if not (MODEL / "model.safetensors").exists() or not IMAGES.is_dir():
        sys.exit(f"DeiT-Tiny or the Imagenette images are absent under {SHARED}: this benchmark needs ../shared.")
    official = load_reference(args.reference)

    from tqdm import tqdm

    from hf_vitprune.data import (
        TransformedImages,
        collate_skipping,
        load_image_data,
        load_preprocessing,
        resolve_label_mapping,
    )  # fmt: skip
    from hf_vitprune.loading import load_pruned_model
    from hf_vitprune.measure import count_gmacs, device_name

    # eager attention: the official DeiT patch computes softmax(q k^T * scale) v explicitly, as transformers' eager
    # attention does; with SDPA the last bits differ and a near-tie in the energy order can flip a later merge
    model = load_pruned_model(str(MODEL), pruning_method=None, attn_implementation=args.attn_implementation).eval()
    data = load_image_data(str(IMAGES), max_samples=args.images, seed=0)
    preprocessing = load_preprocessing(str(MODEL), model.config.image_size)
    loader = torch.utils.data.DataLoader(
        TransformedImages(data, preprocessing.eval_transform()), batch_size=args.batch_size,
        collate_fn=collate_skipping, num_workers=1,
    )  # fmt: skip
    # the folders' WordNet ids mapped onto the 1000-way head: a prediction is right when it is its folder's class
    label_ids = torch.tensor(resolve_label_mapping(data.class_names, model.config.id2label, "imagenet1k"))
    stats = {rate: {"tokens": 0.0, "sizes": 0.0, "layers": 0, "ours": 0, "official": 0, "differ": 0, "logit": 0.0,
                    "drifted": 0} for rate in args.keep_rates}  # fmt: skip
    total = 0
    for pixel_values, labels, _ in tqdm(loader, desc="batches"):
        total += len(labels)
        for rate in args.keep_rates:
            tokens, sizes, layers, ours = compare_merges(model, official, pixel_values, rate)
            reference = official_logits(model, official, pixel_values, rate)
            row = stats[rate]
            row["tokens"], row["sizes"] = max(row["tokens"], tokens), max(row["sizes"], sizes)
            row["layers"] = layers
            predicted, predicted_reference = ours.argmax(-1), reference.argmax(-1)
            row["ours"] += int((predicted == label_ids[labels]).sum())
            row["official"] += int((predicted_reference == label_ids[labels]).sum())
            row["differ"] += int((predicted != predicted_reference).sum())
            row["logit"] = max(row["logit"], (ours - reference).abs().max().item())
            row["drifted"] += int(((ours - reference).abs().amax(dim=-1) > 1e-4).sum())
    lines = [
        f"PiToMe, hf_vitprune against the official code ({args.reference.name} of hchautran/PiToMe), real DeiT-Tiny, "
        f"{total} Imagenette val images, our model with {args.attn_implementation} attention "
        f"({device_name(torch.device('cpu'))}, torch {torch.__version__}; `python benchmarks/pitome_reference.py "
        f"--reference PiToMe/algo/pitome/merge.py --images {args.images} --attn_implementation "
        f"{args.attn_implementation}`). Merges: every merging layer's output against the official merge of the same "
        "inputs. Logits: our model against a forward pass written after the official DeiT patch.",
        "",
        "| keep rate (ratio) | GMACs | merging layers | max abs. diff. merged tokens | max abs. diff. sizes "
        "| top-1 ours | top-1 official | predictions differing | images with a logit off by > 1e-4 "
        "| max abs. diff. logits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate, row in stats.items():
        with model.pruning(pruning_method="pitome", keep_rate=rate):
            gmacs = count_gmacs(model)
        lines.append(
            f"| {rate:g} | {gmacs:.3f} | {row['layers']} | {row['tokens']:.1e} | {row['sizes']:.1e} | "
            f"{100 * row['ours'] / total:.2f} | {100 * row['official'] / total:.2f} | {row['differ']} | "
            f"{row['drifted']} | {row['logit']:.1e} |"
        )
    lines += [
        "",
        "Random tensors (3 images, 49 candidates, margin 0.4), `token_merging.pitome_merge` against the official "
        "`pitome_vision` + `merge_wavg`:",
        "",
        "| matching | ratio | max abs. diff. merged tokens | sizes equal |",
        "|---|---|---|---|",
        *random_tensor_check(official),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
