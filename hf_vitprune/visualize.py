"""`hf-vitprune visualize`: which patches each pruning layer keeps, drawn on the image (the paper's Figures 2 and 3).

Pruned patches are greyed out, one panel per pruning layer, one row per image and method. Overlapping patches are
drawn at their true stride and size: a pixel stays visible while at least one kept patch covers it.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .arguments import grid_arguments, overwrite_file_field, parse_arguments
from .token_reduction import reducer_from_config

VISUALIZE_DEFAULTS = {"pruning_method": ["variance", "medad", "evit"], "keep_rate": [0.7], "fuse_pruned": [True]}
"""What `hf-vitprune visualize` draws when a flag is left out: the paper's criteria and EViT at keep 0.7."""


def kept_pixel_mask(
    kept_patch_ids,
    grid_size: tuple[int, int],
    patch_size: int,
    stride: int,
    image_size: tuple[int, int],
) -> np.ndarray:
    """Boolean pixel mask of the patches in `kept_patch_ids`, for one image.

    Patch `i` of the row-major `rows x cols` grid covers rows `[r * stride, r * stride + patch_size)` and columns
    `[c * stride, c * stride + patch_size)` with `r, c = divmod(i, cols)`; with overlap (`stride < patch_size`) the
    covered areas overlap and a pixel is kept if any kept patch covers it. Ids < 0 (fused tokens) are ignored. Pixels
    of a border no patch covers are never kept.

    Args:
        kept_patch_ids (1-D array-like of int): indices into the patch grid.
        grid_size (`(rows, cols)`), patch_size (`int`, px), stride (`int`, px), image_size (`(height, width)`, px).

    Returns:
        `np.ndarray` of bool, shape `image_size`.

    Raises:
        ValueError: for an id outside the grid.
    """
    rows, cols = grid_size
    ids = np.asarray(kept_patch_ids, dtype=np.int64).reshape(-1)
    ids = ids[ids >= 0]
    if ids.size and ids.max() >= rows * cols:
        raise ValueError(f"patch id {ids.max()} is outside the {rows}x{cols} grid.")
    mask = np.zeros(image_size, dtype=bool)
    for r, c in zip(*np.divmod(ids, cols)):
        mask[r * stride : r * stride + patch_size, c * stride : c * stride + patch_size] = True
    return mask


def grey_out(image: np.ndarray, mask: np.ndarray, grey: float = 0.85, strength: float = 0.8) -> np.ndarray:
    """Blend the pixels outside `mask` towards `grey`: `(1 - strength) * pixel + strength * grey`; kept pixels are
    returned unchanged.

    Args:
        image (`np.ndarray` of shape `(H, W, 3)`, float in [0, 1]), mask (`np.ndarray` of bool, `(H, W)`).

    Returns:
        `np.ndarray` of shape `(H, W, 3)`.
    """
    out = image.copy()
    out[~mask] = (1 - strength) * image[~mask] + strength * grey
    return out


@dataclass
class KeptPatches:
    """What one method kept on one image: `masks[l]` is the pixel mask after reducing layer `layer_names[l]`."""

    method: str
    masks: list[np.ndarray]
    kept_counts: list[int]
    layer_names: list[str]
    prediction: str


def kept_patches(model, pixel_values: torch.Tensor) -> list[KeptPatches]:
    """Run `model` on a batch and turn its `kept_patch_indices` into pixel masks, one [`KeptPatches`] per image.

    Args:
        model: a PrunedViT image classifier (eval mode); its configured method is the one drawn.
        pixel_values (`torch.FloatTensor` of shape `(batch, 3, H, W)`).

    Returns:
        `list[KeptPatches]` of length `batch`; `kept_counts` counts original patches (a kept fused token is not one).
    """
    config = model.config
    patches = model.base_model.embeddings.patch_embeddings
    size = tuple(pixel_values.shape[-2:])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    reducer = reducer_from_config(config, config.num_prefix_tokens)
    layers = [] if reducer is None else reducer.reducing_layers(patches.num_patches, config.num_hidden_layers)
    results = []
    for b in range(pixel_values.shape[0]):
        ids = [layer[b].cpu().numpy() for layer in outputs.kept_patch_indices]
        masks = [kept_pixel_mask(i, patches.grid_size, patches.patch_size[0], patches.stride[0], size) for i in ids]
        label = config.id2label[int(outputs.logits[b].argmax())]
        results.append(
            KeptPatches(
                method=config.pruning_method or "unpruned",
                masks=masks,
                kept_counts=[int((i >= 0).sum()) for i in ids],
                layer_names=[f"layer {i + 1}" for i in layers[: len(ids)]],
                prediction=str(label).split(",")[0],
            )
        )
    return results


def draw(rows: list[tuple[np.ndarray, KeptPatches]], title: str | None = None):
    """A matplotlib figure: one row per `(image (H, W, 3) in [0, 1], KeptPatches)`: the image, then one panel per
    reducing layer with the pruned patches greyed out.

    Returns:
        `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 1 + max(len(k.masks) for _, k in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(2.2 * ncols, 2.5 * len(rows)), squeeze=False, layout="constrained"
    )
    for i, (image, kept) in enumerate(rows):
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(f"{kept.method}\n→ {kept.prediction}", fontsize=8)
        for j, (mask, count, name) in enumerate(zip(kept.masks, kept.kept_counts, kept.layer_names)):
            axes[i, j + 1].imshow(grey_out(image, mask))
            axes[i, j + 1].set_title(f"after {name}: {count} kept", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


@dataclass(kw_only=True)
class VisualizeArguments(grid_arguments("VisualizePruningArguments", VISUALIZE_DEFAULTS)):
    """Arguments of `hf-vitprune visualize` (each is a flag of the same name): the pruning settings to draw side by
    side (one or more values each, [`~arguments.grid_arguments`]), then the model, images and output."""

    images: list[str] = field(metadata={"help": "Image files to draw."})
    model_name_or_path: str = field(
        default="facebook/deit-small-patch16-224",
        metadata={"help": "Hub id or local folder of a ViT / DeiT.", "aliases": ["--model"]},
    )
    patch_stride: int | None = field(default=None, metadata={"help": "Patch-embedding stride (overlap)."})
    output: str = field(default="kept_patches.png", metadata={"help": "PNG file to write."})
    overwrite: bool = overwrite_file_field()
    dpi: int = field(default=110, metadata={"help": "Resolution of the PNG."})


def visualize(args: VisualizeArguments, command: str | None = None) -> Path:
    """Draw what each method keeps on each image and save the PNG.

    Returns:
        The path written.

    Raises:
        FileExistsError: if `output` exists and `overwrite` is not set.
        ValueError / OSError: for an unreadable image, an unknown method or a model that cannot be loaded.
    """
    from .data import load_preprocessing, open_rgb
    from .loading import load_pruned_model

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists: pass --overwrite to replace it, or another --output.")
    variants = [v for v in args.variants() if v["pruning_method"] is not None]  # validates every setting
    extra = {"patch_stride": args.patch_stride} if args.patch_stride is not None else {}
    extra.update(args.model_settings())
    model = load_pruned_model(args.model_name_or_path, **extra).eval()
    preprocessing = load_preprocessing(args.model_name_or_path, model.config.image_size)
    mean, std = preprocessing.mean, preprocessing.std
    transform = preprocessing.eval_transform()
    images = [open_rgb({"path": path, "bytes": None}) for path in args.images]
    pixel_values = torch.stack([transform(image) for image in images])
    shown = pixel_values * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    shown = shown.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    rows = []
    for b in range(len(images)):
        for variant in variants:
            with model.pruning(**variant):
                torch.manual_seed(0)  # the random method draws the same scores every time
                rows.append((shown[b], kept_patches(model, pixel_values[b : b + 1])[0]))
    stride = model.config.patch_stride or model.config.patch_size
    keep = "/".join(f"{rate:g}" for rate in args.keep_rate)
    name = Path(args.model_name_or_path).name
    title = f"{name}, keep {keep}, patches {model.config.patch_size} px, stride {stride} px"
    fig = draw(rows, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=args.dpi)
    print(f"wrote {output}" + (f"  ({command})" if command else ""))
    return output


def main(argv: list[str] | None = None) -> Path:
    """Entry point of `hf-vitprune visualize`."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(VisualizeArguments, argv, prog="hf-vitprune visualize", description=__doc__)
    return visualize(args, command="hf-vitprune visualize " + shlex.join(argv))
