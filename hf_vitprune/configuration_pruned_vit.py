# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""PrunedViT model configuration.

This file is shipped to the Hugging Face Hub next to `config.json` when a model is saved with
`trust_remote_code`: it must stay flat and import only torch, transformers and its sibling files.
"""

from fractions import Fraction
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

PRUNING_METHODS = ("variance", "medad", "evit", "entropy", "random", "tome")
"""Token-reduction methods known to `PrunedViTConfig.pruning_method` (`None` switches pruning off)."""

PRUNING_FIELDS = (
    "pruning_method",
    "keep_rate",
    "prune_layers",
    "fuse_pruned",
    "fusion_temperature",
    "renyi_alpha",
    "tome_r",
)
"""The config fields that describe pruning (what `PrunedViTPreTrainedModel.set_pruning` may change)."""


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@strict
class PrunedViTConfig(ViTConfig):
    r"""
    Configuration of a [`PrunedViTModel`]: a ViT / DeiT whose pruning layers drop the least important patch tokens
    after attention and (optionally) fuse them into one extra token.

    It holds every field of [`~transformers.ViTConfig`] plus the pruning fields below, so any ViT or DeiT checkpoint
    config can be turned into a pruned one (`PrunedViTConfig.from_pretrained("facebook/deit-small-patch16-224",
    keep_rate=0.5)`).

    Method: Igaue & Aizawa, "Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight
    Diversity in Vision Transformers", arXiv:2507.19175 (2025). Baselines: EViT (Liang et al., ICLR 2022) and
    attention entropy (Igaue & Aizawa, "Renyi Attention Entropy for Patch Pruning", 2026).

    Args:
        pruning_method (`str` or `None`, *optional*, defaults to `"variance"`):
            How a pruning layer scores each candidate token (higher = more important, kept):
            `"variance"` (variance over heads of the class token's attention to the token, paper eq. 6),
            `"medad"` (median absolute deviation over heads, paper eq. 7), `"evit"` (mean over heads, EViT,
            paper eq. 5), `"entropy"` (minus the Renyi entropy of the token's own attention row, averaged over
            heads), `"random"` (uniform random scores). `None` switches pruning off: the model is then exactly the
            stock ViT. `"tome"` is not a pruning criterion but the token-merging baseline (ToMe, Bolya et al., ICLR
            2023): every layer merges `tome_r` tokens into their most similar ones, and `keep_rate`,
            `prune_layers`, `fuse_pruned` and `fusion_temperature` are not used.
        keep_rate (`float` or `list[float]`, *optional*, defaults to 0.7):
            Fraction of the candidate tokens a pruning layer keeps, in (0, 1]; a list gives one rate per entry of
            `prune_layers`. A layer keeps `ceil(keep_rate * candidates)` tokens (computed exactly, so at least one),
            where the candidates are all non-prefix tokens present at that layer, a fused token made by an earlier
            pruning layer included. `1.0` keeps everything (the layer is then an ordinary ViT layer).
        prune_layers (`list[int]`, *optional*, defaults to `[3, 6, 9]`):
            0-indexed layers that prune, strictly increasing, each `< num_hidden_layers` (the paper's blocks 4, 7
            and 10 of a 12-layer model).
        fuse_pruned (`bool`, *optional*, defaults to `True`):
            Whether each pruning layer appends one fused token: the pruned tokens averaged with weights
            `softmax(s / (std(s) * fusion_temperature))`, `s` their criterion scores and `std(s)` the standard
            deviation of the scores over that image's candidates (paper eq. 8 with a scale-free normalisation).
        fusion_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the fusion softmax, > 0. Small values approach "take the best pruned token", large
            values a plain mean of the pruned tokens. The default was chosen by measurement: best mean top-1 of the
            paper's criteria on real images (docs/fusion_temperature.md).
        renyi_alpha (`float`, *optional*, defaults to 1.0):
            Order alpha > 0 of the Renyi entropy used by `pruning_method="entropy"`; 1.0 is the Shannon entropy.
        patch_stride (`int`, *optional*):
            Stride of the patch embedding, in pixels, 1 <= stride <= `patch_size`; `None` (the default) means the
            patch size, i.e. no overlap. With 16 px patches and stride 12 (patches overlap by a quarter) a 224 px image
            gives 18 x 18 = 324 patches instead of 196 (arXiv:2507.19175, sec. 3.3). The grid is
            `(image_size - patch_size) // patch_stride + 1` per side: a border that does not fit a whole patch at the
            last stride step is not seen (as `Conv2d` without padding), e.g. 8 px for 224 px, 16 px patches, stride 10.
            Changing it changes the number of position embeddings: load a checkpoint with another stride through
            `from_pretrained(..., patch_stride=...)`, which resizes them (and then needs fine-tuning).
        tome_r (`int` or `list[int]`, *optional*, defaults to 8):
            Tokens merged per layer by `pruning_method="tome"` (ToMe's `r`), >= 0; a list gives one value per layer
            (`num_hidden_layers` values). A layer merges at most half of its non-prefix tokens.

    Raises:
        ValueError: when a pruning field is out of range; the message names the field and the allowed values.
    """

    model_type = "pruned_vit"
    base_model_types = ("vit",)
    num_prefix_tokens = 1
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "kept_patch_indices"]

    # Typed `Any` for the strict dataclass: `check_pruning_fields` validates them together and raises a ValueError that
    # names the field and the allowed values (documented types above).
    pruning_method: Any = "variance"
    keep_rate: Any = 0.7
    prune_layers: Any = None
    fuse_pruned: Any = True
    fusion_temperature: Any = 0.1
    renyi_alpha: Any = 1.0
    tome_r: Any = 8
    patch_stride: Any = None

    def __post_init__(self, **kwargs):
        # A config dict read from a plain ViT/DeiT checkpoint carries its own `model_type`: never let it shadow ours.
        kwargs.pop("model_type", None)
        if self.prune_layers is None:
            self.prune_layers = [3, 6, 9]
        elif isinstance(self.prune_layers, tuple):
            self.prune_layers = list(self.prune_layers)
        if isinstance(self.keep_rate, tuple):
            self.keep_rate = list(self.keep_rate)
        self.check_pruning_fields()
        self.check_patch_stride()
        super().__post_init__(**kwargs)

    def check_pruning_fields(self) -> None:
        """Validate the pruning fields against each other.

        Raises:
            ValueError: naming the offending field, its value and what is allowed.
        """
        if self.pruning_method is not None and self.pruning_method not in PRUNING_METHODS:
            raise ValueError(
                f"pruning_method={self.pruning_method!r} is not known. Use one of {list(PRUNING_METHODS)}, "
                "or None to switch pruning off."
            )
        layers = self.prune_layers
        if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"prune_layers must be a list of integer layer indices, got {layers!r}.")
        for i in layers:
            if not 0 <= i < self.num_hidden_layers:
                raise ValueError(
                    f"prune_layers={layers} holds {i}, which is not a layer of this model: indices are 0-indexed "
                    f"and must lie in [0, {self.num_hidden_layers - 1}] (num_hidden_layers={self.num_hidden_layers})."
                )
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"prune_layers must be strictly increasing (sorted, no repeats), got {layers}.")
        rates = self.keep_rate if isinstance(self.keep_rate, list) else [self.keep_rate]
        if isinstance(self.keep_rate, list) and len(rates) != len(layers):
            raise ValueError(
                f"keep_rate is a list of {len(rates)} values but prune_layers={layers} has {len(layers)} pruning "
                "layers: give one keep rate per pruning layer, or a single float for all of them."
            )
        for rate in rates:
            if not _is_number(rate) or not 0 < rate <= 1:
                raise ValueError(
                    f"keep_rate must be a number in (0, 1] (or a list of such numbers, one per pruning layer); "
                    f"got {self.keep_rate!r}. 1.0 keeps every token; a keep rate of 0 would drop them all."
                )
        if not isinstance(self.fuse_pruned, bool):
            raise ValueError(f"fuse_pruned must be True or False, got {self.fuse_pruned!r}.")
        if not _is_number(self.fusion_temperature) or not self.fusion_temperature > 0:
            raise ValueError(f"fusion_temperature must be a number > 0, got {self.fusion_temperature!r}.")
        if not _is_number(self.renyi_alpha) or not self.renyi_alpha > 0:
            raise ValueError(f"renyi_alpha must be a number > 0 (1.0 = Shannon entropy), got {self.renyi_alpha!r}.")
        merges = self.tome_r if isinstance(self.tome_r, list) else [self.tome_r]
        if isinstance(self.tome_r, list) and len(merges) != self.num_hidden_layers:
            raise ValueError(
                f"tome_r is a list of {len(merges)} values but the model has {self.num_hidden_layers} layers: give "
                "one merge count per layer, or a single integer for all of them."
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in merges):
            raise ValueError(f"tome_r must be an integer >= 0 (or a list of them, one per layer), got {self.tome_r!r}.")

    def check_patch_stride(self) -> None:
        """Validate `patch_stride` against the patch and image sizes.

        Raises:
            ValueError: naming the field, its value and the allowed range.
        """
        if self.patch_stride is None:
            return
        patch = _pair(self.patch_size)
        if not isinstance(self.patch_stride, int) or isinstance(self.patch_stride, bool):
            raise ValueError(f"patch_stride must be an integer number of pixels or None, got {self.patch_stride!r}.")
        if not 1 <= self.patch_stride <= min(patch):
            raise ValueError(
                f"patch_stride must lie in [1, {min(patch)}] (the patch size; larger strides would skip pixels), got "
                f"{self.patch_stride}. None means no overlap."
            )

    def patch_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Rows and columns of patches for an input of `height` x `width` pixels (default: `image_size`).

        `(size - patch_size) // stride + 1` per side, stride = `patch_stride` or the patch size.

        Raises:
            ValueError: if the input is smaller than one patch.
        """
        image = _pair(self.image_size)
        height, width = height or image[0], width or image[1]
        patch = _pair(self.patch_size)
        stride = _pair(self.patch_stride) if self.patch_stride is not None else patch
        if height < patch[0] or width < patch[1]:
            raise ValueError(f"An input of {height}x{width} px is smaller than one {patch[0]}x{patch[1]} px patch.")
        return (height - patch[0]) // stride[0] + 1, (width - patch[1]) // stride[1] + 1

    def layer_merge_count(self, layer_idx: int) -> int:
        """ToMe's `r` at layer `layer_idx`: tokens to merge there (0 unless `pruning_method == "tome"`)."""
        if self.pruning_method != "tome":
            return 0
        return self.tome_r[layer_idx] if isinstance(self.tome_r, list) else self.tome_r

    def layer_keep_rate(self, layer_idx: int) -> float | None:
        """The keep rate of layer `layer_idx`, or `None` if that layer does not prune.

        Args:
            layer_idx (`int`): 0-indexed layer.

        Returns:
            `float` in (0, 1], or `None` when pruning is off or the layer is not in `prune_layers`.
        """
        if self.pruning_method in (None, "tome") or layer_idx not in self.prune_layers:
            return None
        if isinstance(self.keep_rate, list):
            return self.keep_rate[self.prune_layers.index(layer_idx)]
        return self.keep_rate

    def token_schedule(self, num_patches: int) -> list[tuple[int, int]]:
        """Candidate tokens left, and fused tokens appended, by each token-reducing layer, for `num_patches` patches.

        Args:
            num_patches (`int`): patch tokens after the embedding (196 for 224 px and 16 px patches).

        Returns:
            `list[(kept, fused)]`: for the attention criteria one entry per entry of `prune_layers`, `fused` being 1
            when the layer appends a fused token (DeiT-S at keep 0.7 with fusion: `[(138, 1), (98, 1), (70, 1)]`);
            for ToMe one entry per layer with `r > 0` (`fused` is 0: merging leaves no extra token). Empty when
            pruning is off.
        """
        schedule = []
        candidates = num_patches
        if self.pruning_method == "tome":
            for layer_idx in range(self.num_hidden_layers):
                r = self.layer_merge_count(layer_idx)
                if r > 0:
                    candidates -= min(r, tome_merge_limit(candidates, self.num_prefix_tokens))
                    schedule.append((candidates, 0))
            return schedule
        for layer_idx in self.prune_layers if self.pruning_method is not None else []:
            kept = exact_keep_count(self.layer_keep_rate(layer_idx), candidates)
            fused = int(self.fuse_pruned and kept < candidates)
            schedule.append((kept, fused))
            candidates = kept + fused
        return schedule

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Mirrors [`~transformers.PretrainedConfig.from_dict`], but pruning fields given as `kwargs` go into the
        config before it is built, so they are validated together with the checkpoint's fields (transformers sets
        other kwargs after construction, which would validate the file's `prune_layers` against a model that may
        have too few layers for them). `id2label` / `label2id` go in too, so a new head's labels agree with
        `num_labels` from the start."""
        config_dict = dict(config_dict)
        for name in (*PRUNING_FIELDS, "patch_stride", "id2label", "label2id"):
            if name in kwargs:
                config_dict[name] = kwargs.pop(name)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read a config dict, adopting a plain ViT/DeiT checkpoint's config as the base of a pruned one.

        Mirrors [`~transformers.PretrainedConfig.get_config_dict`]; a checkpoint of one of `cls.base_model_types`
        loses its `model_type` and `architectures` so the result is a genuine `cls` config.

        Raises:
            ValueError: for a checkpoint whose architecture this class cannot hold (e.g. a distilled DeiT, with its
                extra distillation token, loaded as a plain `PrunedViTConfig`).
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type in cls.base_model_types:
            config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")}
        elif model_type not in (None, cls.model_type):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is a `{model_type}` checkpoint; {cls.__name__} holds "
                f"`{cls.model_type}` or plain {list(cls.base_model_types)} checkpoints. "
                + (
                    "Distilled DeiT checkpoints (class + distillation token, model_type 'deit') load with "
                    "PrunedDeiTConfig / PrunedDeiTForImageClassificationWithTeacher."
                    if model_type in ("deit", "pruned_deit")
                    else "Plain ViT checkpoints (model_type 'vit', e.g. facebook/deit-small-patch16-224) load with "
                    "PrunedViTConfig / PrunedViTForImageClassification."
                    if model_type in ("vit", "pruned_vit")
                    else "Only ViT / DeiT checkpoints are supported."
                )
            )
        return config_dict, kwargs


@strict
class PrunedDeiTConfig(PrunedViTConfig):
    r"""
    Configuration of a [`PrunedDeiTModel`]: a distilled DeiT (class token + distillation token, as
    `facebook/deit-small-distilled-patch16-224`) with patch pruning. Same fields as [`PrunedViTConfig`]; the two
    prefix tokens are never pruned and the criteria read the class token's attention.
    """

    model_type = "pruned_deit"
    base_model_types = ("deit",)
    num_prefix_tokens = 2


def exact_keep_count(keep_rate: float, num_candidates: int) -> int:
    """Number of tokens a pruning layer keeps: `ceil(keep_rate * num_candidates)`, without float error.

    The rate is read as the decimal it prints as (`0.07` is 7/100, so `0.07 * 100` gives 7, where float
    arithmetic gives 8). Because of the ceiling, at least one token is kept whenever there is one.

    Args:
        keep_rate (`float`): in (0, 1].
        num_candidates (`int`): non-prefix tokens present at the layer, >= 0.

    Returns:
        `int` in [min(1, num_candidates), num_candidates].

    Raises:
        ValueError: if `keep_rate` is not in (0, 1] or `num_candidates` is negative.
    """
    if not _is_number(keep_rate) or not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be a number in (0, 1], got {keep_rate!r}.")
    if num_candidates < 0:
        raise ValueError(f"num_candidates must be >= 0, got {num_candidates}.")
    product = Fraction(repr(float(keep_rate))) * num_candidates
    return min(num_candidates, -(-product.numerator // product.denominator))


def tome_merge_limit(num_candidates: int, num_prefix_tokens: int) -> int:
    """Most tokens ToMe can merge in one layer: the size of the bipartite side "A" among `num_candidates` tokens.

    The non-prefix tokens alternate between sides A and B by their position in the sequence (position `p` is in A
    when `p` is even, as in ToMe, where the class token at position 0 is the protected first member of A); each A
    token can merge into B, so at most `|A|` merges happen.
    """
    first_a = num_prefix_tokens % 2  # candidate index c sits at position c + num_prefix_tokens
    size_a = max(num_candidates - first_a + 1, 0) // 2
    return size_a if num_candidates - size_a > 0 else 0  # B must not be empty


__all__ = [
    "PRUNING_FIELDS",
    "PRUNING_METHODS",
    "PrunedDeiTConfig",
    "PrunedViTConfig",
    "exact_keep_count",
    "tome_merge_limit",
]
