# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""Token reduction for Vision Transformers, independent of any backbone: the settings, the methods and one forward
pass.

A *token reducer* is one method of removing tokens inside a ViT: it names the attention statistic it needs, scores
the candidate tokens and keeps the best ones (optionally fusing the rest into one extra token), or merges tokens
(ToMe). A backbone (ViT, DeiT, DINOv2, CLIP, ...) only has to compute that statistic at its layers and call
[`TokenReduction.enter`] / [`TokenReduction.exit`] around the attention residual: it holds no method logic. The tensor
operations the methods are made of are in [`token_ops`].

- [`PruningFields`]: every pruning setting, declared once (type, default, help). The config fields, `prune(model,
  **settings)`, `set_pruning` / `pruning()`, `from_pretrained(..., **settings)` and every command's flags derive from
  it. [`PruningSettings`] adds validation.
- [`TokenReducer`] and one subclass per method, each naming the settings it reads (`settings_used`); [`REDUCERS`] is
  the registry by name (the merging methods, ToMe and PiToMe, share [`TokenMerger`]). A new method is one class
  plus one line in `REDUCERS`; a new setting is one field of `PruningFields` plus its check in
  [`PruningSettings.validate`].
- [`ReductionState`]: what travels between layers during one forward pass (which patch each token stands for, ToMe's
  token sizes, the kept indices).
- [`TokenReduction`]: one forward pass of a reducer, handed to every layer.

Methods: Igaue & Aizawa, "Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in
Vision Transformers", arXiv:2507.19175 (2025) (variance, MedAD, fusion); EViT (Liang et al., ICLR 2022); attention
entropy (Igaue & Aizawa, "Renyi Attention Entropy for Patch Pruning", arXiv:2604.03803, 2026); ToMe (Bolya et al.,
ICLR 2023); BSPF-ViT (Hsieh et al., arXiv:2507.12125, 2025).

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch and its
sibling `token_ops.py`.
"""

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

from .token_ops import (
    ATTENTION,
    ATTENTION_AND_KEYS,
    CLASS_ATTENTION,
    ENTROPY_AXES,
    KEYS,
    _is_number,
    block_smooth,
    check_key_mask,
    entropy_scores,
    evit_scores,
    exact_keep_count,
    gather_tokens,
    head_entropy_scores,
    joint_importance,
    key_entropy_scores,
    medad_scores,
    merge_tokens,
    pitome_merge,
    pitome_merge_count,
    prune_tokens,
    random_scores,
    restore_patch_grid,
    similarity_fusion,
    tome_merge_limit,
    variance_scores,
)

# ---------------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------------


def default_prune_layers(num_hidden_layers: int) -> list[int]:
    """The paper's pruning layers scaled to the model's depth: 0-indexed `[3, 6, 9]` for 12 layers (its blocks 4, 7
    and 10, arXiv:2507.19175), i.e. after a quarter, half and three quarters of the layers (`[6, 12, 18]` for 24).

    Raises:
        ValueError: for fewer than 2 layers (no layer is left to prune after).
    """
    if num_hidden_layers < 2:
        raise ValueError(f"a model needs at least 2 layers to prune tokens, this one has {num_hidden_layers}.")
    layers = sorted({min(max(round(num_hidden_layers * q / 12), 1), num_hidden_layers - 1) for q in (3, 6, 9)})
    return layers


def _setting(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class PruningFields:
    """Every pruning setting, declared once: name, type, default and help (`dataclasses.fields(PruningFields)`).

    `PrunedViTConfig` inherits these fields (so they are config fields, saved in config.json and type-checked by the
    strict dataclass), and `prune`, `set_pruning`, `pruning()`, `from_pretrained(..., **settings)` and the command
    line flags are generated from them. Which methods read a setting is declared by each reducer
    (`TokenReducer.settings_used`); [`PruningSettings.validate`] checks the values.
    """

    pruning_method: str | None = _setting(
        "variance",
        "The token-reduction method, a name in token_reduction.REDUCERS; None (none on the command line) switches "
        "reduction off: the stock model, bit for bit.",
    )
    keep_rate: int | float | list[int | float] = _setting(
        0.7,
        "Fraction of the candidate tokens each pruning layer keeps, in (0, 1]; a list gives one rate per pruning "
        "layer. A layer keeps ceil(keep_rate * candidates) tokens, a fused token of an earlier layer included.",
    )
    prune_layers: list[int] | None = _setting(
        None,
        "0-indexed pruning layers, strictly increasing; None: a quarter, half and three quarters of the depth "
        "(3, 6, 9 of 12: the paper's blocks 4, 7, 10).",
    )
    fuse_pruned: bool = _setting(
        True,
        "Append one fused token per pruning layer: the pruned tokens averaged with weights "
        "softmax(s / (std(s) * fusion_temperature)) of their scores s (arXiv:2507.19175, eq. 8).",
    )
    fusion_temperature: int | float = _setting(
        0.1, "Temperature of the fusion softmax, > 0 (small: the best pruned token; large: their mean)."
    )
    renyi_alpha: int | float = _setting(
        1.0, "Order of the Renyi entropy of the entropy method, > 0 (1: Shannon, inf: min-entropy)."
    )
    tome_r: int | list[int] = _setting(
        8, "Tokens ToMe merges per layer, >= 0 (a list: one per layer); at most half of a layer's candidates."
    )
    entropy_axis: str = _setting(
        "query",
        "The distribution the entropy method measures: query (the token's own attention row), key (the attention it "
        "receives) or heads (the class token's attention to it across heads); docs/entropy.md.",
    )
    bspf_block: int = _setting(
        3, "Odd size of the patch-grid neighbourhood BSPF smooths its scores over (1: no smoothing); docs/bspf.md."
    )
    bspf_joint: str = _setting("mean", "How BSPF combines a token's key and query importance: mean or product.")
    pitome_margin: int | float | None = _setting(
        None,
        "PiToMe's energy margin in [-1, 1): cosine similarities above it count as redundancy; None: the official "
        "schedule 0.75 - 0.75 * layer / layers (0.75 at the first layer, down to 0.0625 at the last of 12).",
    )
    pitome_alpha: int | float = _setting(1.0, "PiToMe's ELU alpha for similarities below the margin, > 0.")
    restore_patch_grid: bool = _setting(
        False,
        "Return every hidden state on the full patch grid (batch, prefix + patches, hidden), in patch order: a pruned "
        "patch gets the token it was fused or merged into, or without fusion its value where it was dropped. For "
        "dense heads (Dinov2Backbone feature maps, DPT, Depth Anything); docs/dense.md.",
    )


PRUNING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PruningFields))
"""The pruning settings' names, in order (computed once: torch.compile traces the code that reads them)."""


@dataclass
class PruningSettings(PruningFields):
    """The pruning settings of one model (the fields of [`PruningFields`]), with their validation.

    Attributes:
        pruning_method (`str` or `None`): a name in [`REDUCERS`], or `None` (pruning off: the stock model).
        keep_rate (`float` or `list[float]`): in (0, 1]; a list gives one rate per entry of `prune_layers`.
        prune_layers (`list[int]` or `None`): 0-indexed, strictly increasing; `None`: [`default_prune_layers`].
        fuse_pruned (`bool`), fusion_temperature (`float` > 0), renyi_alpha (`float` > 0), tome_r (`int` >= 0 or one
        per layer), entropy_axis (`"query"`, `"key"` or `"heads"`), bspf_block (odd `int` >= 1), bspf_joint
        (`"mean"` or `"product"`), restore_patch_grid (`bool`): see each field's help in [`PruningFields`].
    """

    @classmethod
    def from_config(cls, config) -> "PruningSettings":
        """The settings recorded on `config` (missing fields take their defaults)."""
        defaults = _DEFAULTS
        return cls(**{name: getattr(config, name, getattr(defaults, name)) for name in PRUNING_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        """`{name: value}` of every field, in order."""
        return {name: getattr(self, name) for name in PRUNING_FIELDS}

    def write_to(self, config) -> None:
        """Record these settings on `config`, one attribute per field (as `PrunedViTConfig` holds them)."""
        for name in PRUNING_FIELDS:
            setattr(config, name, getattr(self, name))

    def with_defaults(self, num_hidden_layers: int) -> "PruningSettings":
        """A copy with tuples turned into lists and `prune_layers=None` replaced by the default for this depth."""
        layers = self.prune_layers
        layers = default_prune_layers(num_hidden_layers) if layers is None else list(layers)
        keep_rate = list(self.keep_rate) if isinstance(self.keep_rate, tuple) else self.keep_rate
        tome_r = list(self.tome_r) if isinstance(self.tome_r, tuple) else self.tome_r
        return replace(self, keep_rate=keep_rate, prune_layers=layers, tome_r=tome_r)

    def validate(self, num_hidden_layers: int, grid: tuple[int, int] | None = None) -> None:
        """Check every field and how they fit together and with a model of `num_hidden_layers` layers (and, when
        given, its patch grid `(rows, cols)` at its configured image size).

        Raises:
            ValueError: naming the offending field, its value and what is allowed.
        """
        if self.pruning_method is not None and self.pruning_method not in REDUCERS:
            raise ValueError(
                f"pruning_method={self.pruning_method!r} is not known. Use one of {list(REDUCERS)}, "
                "or None to switch pruning off."
            )
        layers = self.prune_layers
        if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"prune_layers must be a list of integer layer indices, got {layers!r}.")
        for i in layers:
            if not 0 <= i < num_hidden_layers:
                raise ValueError(
                    f"prune_layers={layers} holds {i}, which is not a layer of this model: indices are 0-indexed "
                    f"and must lie in [0, {num_hidden_layers - 1}] (num_hidden_layers={num_hidden_layers})."
                )
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"prune_layers must be strictly increasing (sorted, no repeats), got {layers}.")
        rates = self.keep_rate if isinstance(self.keep_rate, list) else [self.keep_rate]
        reducer = REDUCERS.get(self.pruning_method)
        if isinstance(self.keep_rate, list) and reducer is not None and reducer.keep_rate_per_layer:
            if len(rates) != num_hidden_layers:
                raise ValueError(
                    f"keep_rate is a list of {len(rates)} values but pruning_method={self.pruning_method!r} reduces "
                    f"in every layer and the model has {num_hidden_layers}: give one keep rate per layer, or a single "
                    "float for all of them."
                )
        elif isinstance(self.keep_rate, list) and len(rates) != len(layers):
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
        for name in ("fuse_pruned", "restore_patch_grid"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not _is_number(self.fusion_temperature) or not self.fusion_temperature > 0:
            raise ValueError(f"fusion_temperature must be a number > 0, got {self.fusion_temperature!r}.")
        if not _is_number(self.renyi_alpha) or not self.renyi_alpha > 0:
            raise ValueError(
                "renyi_alpha must be a number > 0 (1.0 = Shannon entropy, inf = min-entropy), "
                f"got {self.renyi_alpha!r}."
            )
        merges = self.tome_r if isinstance(self.tome_r, list) else [self.tome_r]
        if isinstance(self.tome_r, list) and len(merges) != num_hidden_layers:
            raise ValueError(
                f"tome_r is a list of {len(merges)} values but the model has {num_hidden_layers} layers: give "
                "one merge count per layer, or a single integer for all of them."
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in merges):
            raise ValueError(f"tome_r must be an integer >= 0 (or a list of them, one per layer), got {self.tome_r!r}.")
        if not isinstance(self.bspf_block, int) or isinstance(self.bspf_block, bool) or self.bspf_block < 1:
            raise ValueError(f"bspf_block must be an odd integer >= 1 (1: no smoothing), got {self.bspf_block!r}.")
        if self.bspf_block % 2 == 0:
            raise ValueError(f"bspf_block must be odd (a neighbourhood centred on the token), got {self.bspf_block}.")
        if grid is not None and self.pruning_method == "bspf" and self.bspf_block > min(grid):
            raise ValueError(
                f"bspf_block={self.bspf_block} is larger than this model's {grid[0]}x{grid[1]} patch grid: use an odd "
                f"block from 1 to {min(grid) - (min(grid) + 1) % 2}."
            )
        if self.bspf_joint not in ("mean", "product"):
            raise ValueError(f"bspf_joint must be 'mean' or 'product', got {self.bspf_joint!r}.")
        margin = self.pitome_margin
        if margin is not None and (not _is_number(margin) or not -1 <= margin < 1):
            raise ValueError(
                f"pitome_margin must be a number in [-1, 1) (a cosine similarity) or None (the official per-layer "
                f"schedule), got {margin!r}."
            )
        if not _is_number(self.pitome_alpha) or not self.pitome_alpha > 0:
            raise ValueError(f"pitome_alpha must be a number > 0 (the ELU's alpha), got {self.pitome_alpha!r}.")
        if reducer is not None:
            reducer.check_settings(self, num_hidden_layers)
        if self.entropy_axis not in ENTROPY_AXES:
            raise ValueError(
                f"entropy_axis={self.entropy_axis!r} is not known: use one of {list(ENTROPY_AXES)} (the token's own "
                "attention row, the attention it receives, or the class token's attention to it across heads)."
            )

    def reducer(self, num_prefix_tokens: int, num_hidden_layers: int | None = None) -> "TokenReducer | None":
        """The reducer these settings describe (`None` when pruning is off), for a model of `num_hidden_layers`
        layers (needed by methods whose schedule follows the depth, e.g. PiToMe)."""
        if self.pruning_method is None:
            return None
        return REDUCERS[self.pruning_method](self, num_prefix_tokens, num_hidden_layers)


_DEFAULTS = PruningSettings()


def settings_read_by(method: str | None) -> tuple[str, ...]:
    """The settings `method` reads: `pruning_method` plus its reducer's `settings_used` (none for `None`).

    Raises:
        ValueError: for a method not in [`REDUCERS`], listing them.
    """
    if method is None:
        return ("pruning_method",)
    if method not in REDUCERS:
        raise ValueError(
            f"pruning_method={method!r} is not known. Use one of {list(REDUCERS)}, or None to switch pruning off."
        )
    return ("pruning_method", *REDUCERS[method].settings_used)


_ANY = object()


class UnreadSettingWarning(UserWarning):
    """A pruning setting was given that the chosen method does not read: it is recorded on the config and has no
    effect (e.g. `tome_r` with `pruning_method="variance"`)."""


def check_setting_names(names, method: str | None = _ANY, context: str = "") -> None:
    """Refuse setting names that are not pruning settings; warn about settings (given with `method`) that `method`
    does not read.

    The one check every entry point applies (`prune`, `set_pruning`, `pruning()`, `from_pretrained(..., **settings)`
    and the command line). A setting the method does not read is a documented no-op, the same everywhere: the config
    holds every setting (so one dict of settings serves every method, and switching methods later finds them), the
    method ignores it, and an [`UnreadSettingWarning`] names it and the methods that do read it.

    Args:
        names (`Iterable[str]`): the settings a caller gave explicitly.
        method (`str` or `None`, *optional*): the method they apply to; leave out to check the names only.
        context (`str`): how the caller names the settings in the messages (e.g. `"--"` for flags).

    Raises:
        ValueError: listing the unknown names and every known one.
    """
    names = list(names)
    unknown = [n for n in names if n not in PRUNING_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown pruning setting(s) {[context + n for n in unknown]}; the pruning settings are "
            f"{[context + n for n in PRUNING_FIELDS]}."
        )
    if method is _ANY or (method is not None and method not in REDUCERS):
        return  # an unknown method is reported by `PruningSettings.validate`
    read = settings_read_by(method)
    unused = [n for n in names if n not in read]
    if unused:
        readers = {n: [m for m in REDUCERS if n in REDUCERS[m].settings_used] for n in unused}
        detail = "; ".join(f"{context}{n} is read by {', '.join(r) or 'no method'}" for n, r in readers.items())
        warnings.warn(
            f"pruning_method={method!r} does not read {[context + n for n in unused]} ({detail}): recorded, no effect.",
            UnreadSettingWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ReductionState:
    """What travels between the layers of one forward pass.

    Attributes:
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): for each non-prefix token, its index in the
            original (row-major) patch grid; -1 for a fused token. A ToMe-merged token keeps the id of the token it
            was merged into.
        token_sizes (`torch.FloatTensor` of shape `(batch, tokens)`, *optional*): how many patches each token stands
            for (ToMe); its log is added to the attention logits of later layers (proportional attention). `None`
            while every token stands for one patch.
        kept_patch_indices (`tuple[torch.LongTensor]`): one entry per reducing layer so far, each `(batch, kept)`:
            the patch ids of the candidates that layer kept (see [`ReductionState.patch_ids`]).
        key_mask (`torch.BoolTensor` of shape `(batch, tokens)`, *optional*): the attention mask over the current
            tokens (True = attended as a key), gathered along with them; `None` without a mask.
        layer_mask (*optional*): the layers' attention mask for the current tokens, rebuilt from `key_mask` once a
            reduction changed them (`None`: no mask needed); the string `"model"` while the model's own mask still
            fits (no reduction has changed the tokens).
        grid (`(rows, cols)`, *optional*): the patch grid the patch ids index (for block-based methods).
        destination (`torch.LongTensor` of shape `(batch, candidates before)`, *optional*): set by the reduction that
            made this state: for each candidate entering it, the index among this state's candidates of the token that
            carries it now, -1 if dropped (see `token_ops.PrunedTokens.destination`). A reducer that leaves it `None`
            cannot restore the patch grid.
        patch_map (`torch.LongTensor` of shape `(batch, patches)`, *optional*): with `restore_patch_grid`, for each
            patch of the image the candidate that carries it, -1 for a patch dropped without fusion.
        dropped (`torch.Tensor` of shape `(batch, patches, hidden)`, *optional*): with `restore_patch_grid`, the value
            of each dropped patch at the layer that dropped it (after its attention); `None` while none was dropped.
        proportional_attention (`bool`): whether later layers add `log(token_sizes)` to their attention logits (ToMe:
            yes; PiToMe, as its official DeiT patch: no, the sizes weight its merges only).
    """

    patch_ids: torch.Tensor
    token_sizes: torch.Tensor | None = None
    kept_patch_indices: tuple[torch.Tensor, ...] = ()
    key_mask: torch.Tensor | None = None
    layer_mask: Any = "model"
    grid: tuple[int, int] | None = None
    destination: torch.Tensor | None = None
    patch_map: torch.Tensor | None = None
    dropped: torch.Tensor | None = None
    proportional_attention: bool = True

    @classmethod
    def start(
        cls,
        hidden_states: torch.Tensor,
        num_prefix_tokens: int,
        key_mask: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> "ReductionState":
        """The state of a forward pass before any reduction: candidate `c` is patch `c`.

        Args:
            hidden_states (`torch.Tensor` of shape `(batch, prefix + patches, hidden)`).
            num_prefix_tokens (`int`).
            key_mask (`torch.Tensor` of shape `(batch, prefix + patches)`, *optional*): the attention mask, 1 / True =
                attended, 0 / False = masked (padding); bool, integer or floating point holding only 0 and 1.
            grid (`(rows, cols)`, *optional*): the patch grid; by default the square one when the patch count is a
                square number.

        Raises:
            ValueError: if the sequence holds no token beyond the prefix, or for a mask of another shape, other values,
                or one that masks every patch token of an image.
        """
        batch_size, num_tokens = hidden_states.shape[:2]
        if num_tokens <= num_prefix_tokens:
            raise ValueError(
                f"the sequence has {num_tokens} tokens but {num_prefix_tokens} prefix tokens: there is no patch token "
                "to prune (is num_prefix_tokens right for this backbone?)."
            )
        patch_ids = torch.arange(num_tokens - num_prefix_tokens, device=hidden_states.device).expand(batch_size, -1)
        if key_mask is not None:
            key_mask = check_key_mask(key_mask, batch_size, num_tokens, num_prefix_tokens)
        num_patches = num_tokens - num_prefix_tokens
        side = math.isqrt(num_patches)
        if grid is None and side * side == num_patches:
            grid = (side, side)
        return cls(patch_ids=patch_ids, key_mask=key_mask, grid=grid)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """ToMe's proportional attention: `log(token_sizes)` as an additive bias `(batch, 1, 1, tokens)`, or `None`
        (no sizes, or `proportional_attention` off)."""
        if self.token_sizes is None or not self.proportional_attention:
            return None
        return self.token_sizes.log().to(dtype)[:, None, None, :]


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does in one forward pass, decided before its attention runs.

    Attributes:
        layer_idx (`int`): 0-indexed layer.
        num_candidates (`int`): non-prefix tokens entering the layer.
        amount (`int` or `None`): tokens kept (pruning methods) or merged (ToMe) after the attention; `None` when the
            layer reduces nothing.
        statistic (`str` or `None`): the attention statistic the reducer needs (`None`: none, e.g. nothing is dropped
            or the method is random).
    """

    layer_idx: int
    num_candidates: int
    amount: int | None
    statistic: str | None


class TokenReducer:
    """A token-reduction method: which layers reduce, by how much, with which attention statistic, and how.

    Subclasses set `name` (the `pruning_method` string), `statistic` (one of [`CLASS_ATTENTION`], [`ATTENTION`],
    [`KEYS`] or `None`) and `settings_used` (the [`PruningFields`] the method reads besides `pruning_method`; any other
    given with it is recorded with a warning, [`check_setting_names`]), and implement `amount` and `reduce`. They hold
    no model and no per-forward state: one instance is built from the settings at the start of each forward pass.
    Their names in tables and their papers are in `hf_vitprune.methods` (not shipped).

    Args:
        settings ([`PruningSettings`]): validated settings.
        num_prefix_tokens (`int`): leading tokens never reduced (class token, distillation token, registers).
        num_hidden_layers (`int`, *optional*): the model's depth (methods whose schedule follows it require it).
    """

    name: ClassVar[str]
    statistic: ClassVar[str | None] = None
    settings_used: ClassVar[tuple[str, ...]] = ()
    keep_rate_per_layer: ClassVar[bool] = False
    """Whether a list `keep_rate` holds one rate per layer (else one per entry of `prune_layers`)."""
    min_keep_rate: ClassVar[float] = 0.0
    """The smallest keep rate the method takes (exclusive at 0: a pruning layer keeps at least one token)."""

    def __init__(self, settings: PruningSettings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
        self.settings = settings
        self.num_prefix_tokens = num_prefix_tokens
        self.num_hidden_layers = num_hidden_layers

    @classmethod
    def check_settings(cls, settings: PruningSettings, num_hidden_layers: int) -> None:
        """Checks of the settings that only this method needs (called by [`PruningSettings.validate`]).

        Raises:
            ValueError: naming the setting, its value and what is allowed.
        """

    def amount(self, layer_idx: int, num_candidates: int) -> int | None:
        """Tokens kept (or merged) at `layer_idx` when `num_candidates` non-prefix tokens enter it; `None` if the
        layer does not reduce."""
        raise NotImplementedError

    def needs_statistic(self, amount: int, num_candidates: int) -> bool:
        """Whether the layer must compute the statistic (not when nothing will be dropped)."""
        return self.statistic is not None

    def reduce(
        self,
        hidden_states: torch.Tensor,
        statistic: torch.Tensor | None,
        state: ReductionState,
        amount: int,
        layer_idx: int,
    ) -> tuple[torch.Tensor, ReductionState]:
        """Reduce the tokens of `hidden_states` `(batch, prefix + candidates, hidden)` after the attention residual of
        layer `layer_idx` (0-indexed), by `amount` (what `amount` returned for it); return the new hidden states and
        the new state (the given one is not changed)."""
        raise NotImplementedError

    def token_schedule(self, num_patches: int, num_hidden_layers: int) -> list[tuple[int, int]]:
        """Candidate tokens left, and fused tokens appended, by each reducing layer, for `num_patches` patches.

        Returns:
            `list[(kept, fused)]`, one entry per reducing layer (DeiT-S at keep 0.7 with fusion:
            `[(138, 1), (98, 1), (70, 1)]`; ToMe: `fused` is 0).
        """
        return [(kept, fused) for _, kept, fused in self._schedule(num_patches, num_hidden_layers)]

    def reducing_layers(self, num_patches: int, num_hidden_layers: int) -> list[int]:
        """The 0-indexed layers that reduce (and report kept indices) for `num_patches` patches, in order."""
        return [layer_idx for layer_idx, _, _ in self._schedule(num_patches, num_hidden_layers)]

    def _schedule(self, num_patches: int, num_hidden_layers: int) -> Iterator[tuple[int, int, int]]:
        candidates = num_patches
        for layer_idx in range(num_hidden_layers):
            amount = self.amount(layer_idx, candidates)
            if amount is not None:
                kept, fused = self._schedule_step(amount, candidates)
                yield layer_idx, kept, fused
                candidates = kept + fused

    def _schedule_step(self, amount: int, num_candidates: int) -> tuple[int, int]:
        raise NotImplementedError


class AttentionPruner(TokenReducer):
    """Pruning by a criterion: keep the `ceil(keep_rate * candidates)` best-scored candidates at each of
    `prune_layers`, optionally fusing the rest into one appended token (arXiv:2507.19175, sec. 3 and eq. 8).

    Subclasses implement `score`. A pruning layer whose keep rate keeps everything computes no statistic and reports
    every candidate as kept.
    """

    settings_used = ("keep_rate", "prune_layers", "fuse_pruned", "fusion_temperature", "restore_patch_grid")

    def score(self, statistic: torch.Tensor | None, batch_size: int, num_candidates: int, device) -> torch.Tensor:
        """One importance score per candidate, `(batch_size, num_candidates)`, higher = kept."""
        raise NotImplementedError

    def keep_rate(self, layer_idx: int) -> float | None:
        """The keep rate of `layer_idx`, or `None` if it is not a pruning layer."""
        layers = self.settings.prune_layers
        if layer_idx not in layers:
            return None
        rate = self.settings.keep_rate
        return rate[layers.index(layer_idx)] if isinstance(rate, list) else rate

    def amount(self, layer_idx: int, num_candidates: int) -> int | None:
        rate = self.keep_rate(layer_idx)
        return None if rate is None else exact_keep_count(rate, num_candidates)

    def needs_statistic(self, amount: int, num_candidates: int) -> bool:
        return self.statistic is not None and amount < num_candidates

    def reduce(self, hidden_states, statistic, state, amount, layer_idx):
        num_candidates = hidden_states.shape[1] - self.num_prefix_tokens
        if amount >= num_candidates:  # keeps everything: an ordinary layer that lists what it kept
            kept = (*state.kept_patch_indices, state.patch_ids)
            return hidden_states, ReductionState(
                state.patch_ids, state.token_sizes, kept, state.key_mask, state.layer_mask, state.grid
            )
        scores = self.score(statistic, hidden_states.shape[0], num_candidates, hidden_states.device)
        pruned = prune_tokens(
            hidden_states,
            scores,
            amount,
            self.num_prefix_tokens,
            state.patch_ids,
            fuse=self.settings.fuse_pruned,
            fusion_temperature=self.settings.fusion_temperature,
            key_mask=state.key_mask,
        )
        kept = (*state.kept_patch_indices, pruned.kept_patch_ids)
        return pruned.hidden_states, ReductionState(
            pruned.patch_ids, state.token_sizes, kept, pruned.key_mask, grid=state.grid, destination=pruned.destination
        )

    def _schedule_step(self, amount, num_candidates):
        return amount, int(self.settings.fuse_pruned and amount < num_candidates)


class EViTPruner(AttentionPruner):
    """EViT: keep the tokens the class token attends to most, averaged over heads (Liang et al., ICLR 2022; eq. 5 of
    arXiv:2507.19175). Statistic: [`CLASS_ATTENTION`]."""

    name = "evit"
    statistic = CLASS_ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        return evit_scores(statistic)


class VariancePruner(AttentionPruner):
    """Keep the tokens whose class attention varies most across heads (eq. 6 of arXiv:2507.19175).
    Statistic: [`CLASS_ATTENTION`]."""

    name = "variance"
    statistic = CLASS_ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        return variance_scores(statistic)


class MedADPruner(AttentionPruner):
    """Keep the tokens whose class attention has the largest median absolute deviation across heads (eq. 7 of
    arXiv:2507.19175). Statistic: [`CLASS_ATTENTION`]."""

    name = "medad"
    statistic = CLASS_ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        return medad_scores(statistic)


class EntropyPruner(AttentionPruner):
    """Keep the tokens with the most concentrated attention: minus the Renyi entropy of order `renyi_alpha`
    (arXiv:2604.03803, reconstructed from its abstract) of the distribution `entropy_axis` names: `"query"` the
    token's own attention row (averaged over heads; statistic [`ATTENTION`], the full matrix, eager at that layer),
    `"key"` the attention it receives (same statistic), `"heads"` the class token's attention to it across heads
    (statistic [`CLASS_ATTENTION`], SDPA stays on)."""

    name = "entropy"
    statistic = ATTENTION
    settings_used = AttentionPruner.settings_used + ("renyi_alpha", "entropy_axis")

    def __init__(self, settings: PruningSettings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
        super().__init__(settings, num_prefix_tokens, num_hidden_layers)
        self.statistic = CLASS_ATTENTION if settings.entropy_axis == "heads" else ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        alpha, axis = self.settings.renyi_alpha, self.settings.entropy_axis
        if axis == "heads":
            return head_entropy_scores(statistic, alpha)
        if axis == "key":
            return key_entropy_scores(statistic, self.num_prefix_tokens, alpha)
        return entropy_scores(statistic[:, :, self.num_prefix_tokens :], alpha)


_SAMPLE_SEEDS: contextvars.ContextVar = contextvars.ContextVar("hf_vitprune_sample_seeds", default=None)


@contextlib.contextmanager
def per_sample_random_seeds(seeds: torch.Tensor | None) -> Iterator[None]:
    """Within the block, random pruning draws each image's scores from its own seed (`seeds`, `(batch,)`, one per
    image of the batch the model is called with) instead of torch's global generator: an image's kept tokens no
    longer depend on the batch or process it is evaluated in. `hf-vitprune evaluate` / `sweep` seed every image
    this way ([`~token_ops.random_scores`]); `None` leaves the global generator in use."""
    token = _SAMPLE_SEEDS.set(seeds)
    try:
        yield
    finally:
        _SAMPLE_SEEDS.reset(token)


class RandomPruner(AttentionPruner):
    """Keep uniformly random tokens (torch's global generator, or one seed per image inside
    [`per_sample_random_seeds`]): the floor every criterion must beat. No statistic."""

    name = "random"
    statistic = None

    def score(self, statistic, batch_size, num_candidates, device):
        return random_scores(batch_size, num_candidates, device, _SAMPLE_SEEDS.get())


class BSPFPruner(AttentionPruner):
    """BSPF-ViT, reconstructed from the abstract of arXiv:2507.12125 ("Block-based Symmetric Pruning and Fusion"):
    at each of `prune_layers`, score every candidate by its joint query / key importance ([`joint_importance`],
    `bspf_joint`), smooth the scores over its `bspf_block x bspf_block` neighbourhood of the patch grid
    ([`block_smooth`]), keep the best `ceil(keep_rate * candidates)` (in sequence order), and merge every other token
    into its most similar kept token ([`similarity_fusion`]: no extra token; ToMe's sizes and proportional
    attention). The symmetric attention of the abstract is the model option `tie_query_key` (one projection for
    queries and keys).
    Statistic: [`ATTENTION_AND_KEYS`] (the full matrix, eager at the pruning layers). docs/bspf.md gives the source
    sentence of each choice and what measured it."""

    name = "bspf"
    statistic = ATTENTION_AND_KEYS
    settings_used = ("keep_rate", "prune_layers", "bspf_block", "bspf_joint", "restore_patch_grid")

    def reduce(self, hidden_states, statistic, state, amount, layer_idx):
        prefix = self.num_prefix_tokens
        num_candidates = hidden_states.shape[1] - prefix
        if amount >= num_candidates:
            return super().reduce(hidden_states, statistic, state, amount, layer_idx)
        if state.grid is None:
            raise ValueError(
                "bspf smooths scores over the patch grid, but the grid of this input is unknown (the patch count is "
                "not a square number): pass the grid to TokenReduction."
            )
        attention, keys = statistic
        valid = None if state.key_mask is None else state.key_mask[:, prefix:]
        scores = joint_importance(attention, prefix, self.settings.bspf_joint, valid)
        # masked tokens take no part in their neighbours' averages (no grid position for the smoothing)
        positions = state.patch_ids if valid is None else state.patch_ids.where(valid, -1)
        scores = block_smooth(scores, positions, state.grid, self.settings.bspf_block)
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        order = scores.argsort(dim=1, descending=True)
        # the kept tokens stay in sequence order: an image's output then depends on which tokens are kept, not on
        # how near-equal scores happen to be ranked among them (which can differ with the batch it is in)
        kept, pruned = order[:, :amount].sort(dim=1).values, order[:, amount:]
        sizes = state.token_sizes
        if sizes is None:
            sizes = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.float32)
        if valid is not None:  # a masked token is dropped, never merged into another
            sizes = torch.cat([sizes[:, :prefix], sizes[:, prefix:].where(valid, 0)], dim=1)
        hidden_states, sizes, destination = similarity_fusion(hidden_states, sizes, keys, kept, pruned, prefix)
        if valid is not None:
            sizes = sizes.clamp_min(torch.finfo(sizes.dtype).tiny)  # a kept masked token weighs (almost) nothing
        patch_ids = state.patch_ids.gather(1, kept)
        key_mask = None
        if valid is not None:
            key_mask = torch.cat([state.key_mask[:, :prefix], valid.gather(1, kept)], dim=1)
        record = (*state.kept_patch_indices, patch_ids)
        return hidden_states, ReductionState(
            patch_ids, sizes, record, key_mask, grid=state.grid, destination=destination
        )

    def _schedule_step(self, amount, num_candidates):
        return amount, 0


class TokenMerger(TokenReducer):
    """A method that merges tokens into others (size-weighted averages) rather than dropping them: `reduce` merges
    `amount` candidates with [`TokenMerger.merge`] and carries the token sizes, the patch ids and the key mask on;
    `proportional_attention` says whether later layers add `log(size)` to their attention logits. Statistic:
    [`KEYS`]. Source: ToMe's merge-and-carry (`merge_wavg`, Bolya et al., ICLR 2023), which PiToMe's code reuses."""

    statistic = KEYS
    proportional_attention: ClassVar[bool] = True

    def merge(self, hidden_states, sizes, statistic, amount, state, layer_idx):
        """The merge of one layer (a `token_ops.merge_tokens`-like result: `hidden_states`, `token_sizes`,
        `patch_ids`, `key_mask`, `destination`); `sizes` `(batch, tokens)` float32, all ones before any merge.

        Raises:
            NotImplementedError: in this base class (each merging method implements it).
        """
        raise NotImplementedError

    def reduce(self, hidden_states, statistic, state, amount, layer_idx):
        sizes = state.token_sizes
        if sizes is None:
            sizes = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.float32)
        merged = self.merge(hidden_states, sizes, statistic, amount, state, layer_idx)
        kept = (*state.kept_patch_indices, merged.patch_ids)
        return merged.hidden_states, ReductionState(
            merged.patch_ids,
            merged.token_sizes,
            kept,
            merged.key_mask,
            grid=state.grid,
            destination=merged.destination,
            proportional_attention=self.proportional_attention,
        )

    def _schedule_step(self, amount, num_candidates):
        return num_candidates - amount, 0


class ToMeMerger(TokenMerger):
    """ToMe: every layer merges `tome_r` tokens into their most similar ones (bipartite soft matching on the keys,
    size-weighted averages, proportional attention). Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023.
    `keep_rate`, `prune_layers`, `fuse_pruned` and `fusion_temperature` are not used. Statistic: [`KEYS`]."""

    name = "tome"
    settings_used = ("tome_r", "restore_patch_grid")

    def amount(self, layer_idx, num_candidates):
        r = self.settings.tome_r
        r = r[layer_idx] if isinstance(r, list) else r
        merges = min(r, tome_merge_limit(num_candidates, self.num_prefix_tokens))
        return merges if merges > 0 else None

    def merge(self, hidden_states, sizes, statistic, amount, state, layer_idx):
        return merge_tokens(
            hidden_states, sizes, statistic, amount, self.num_prefix_tokens, state.patch_ids, state.key_mask
        )


class PiToMeMerger(TokenMerger):
    """PiToMe: every layer merges `floor(T - T * keep_rate)` of its `T` tokens, protecting the informative ones by
    an energy score (Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024;
    [`~token_ops.pitome_merge`], equal to the official code). As the official DeiT patch: the first
    `ceil(layers / 2)` layers match by bipartite soft matching over the energy order, the others merge the `2 r`
    highest-energy tokens pairwise; the margin falls from 0.75 at the first layer to `0.75 / layers` at the last
    unless `pitome_margin` fixes it; merges are size-weighted averages, and, as in the official DeiT patch, the
    attention does not take the token sizes (no proportional attention). `keep_rate` is the official `ratio`: one
    float for every layer, or a list of one per layer, each in [0.5, 1]. Statistic: [`KEYS`].

    Raises:
        ValueError: when built without `num_hidden_layers` (its schedule follows the depth).
    """

    name = "pitome"
    proportional_attention = False
    settings_used = ("keep_rate", "pitome_margin", "pitome_alpha", "restore_patch_grid")
    keep_rate_per_layer = True
    min_keep_rate = 0.5

    def __init__(self, settings: PruningSettings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
        if num_hidden_layers is None:
            raise ValueError("PiToMe's schedule follows the model's depth: build its reducer with num_hidden_layers.")
        super().__init__(settings, num_prefix_tokens, num_hidden_layers)

    @classmethod
    def check_settings(cls, settings, num_hidden_layers):
        rates = settings.keep_rate if isinstance(settings.keep_rate, list) else [settings.keep_rate]
        if any(rate < cls.min_keep_rate for rate in rates):
            raise ValueError(
                f"pruning_method='pitome' keeps at least half of each layer's tokens (a merged token needs a token to "
                f"merge into): keep_rate must lie in [0.5, 1], got {settings.keep_rate!r}."
            )

    def keep_rate(self, layer_idx: int) -> float:
        """The fraction of its tokens layer `layer_idx` keeps."""
        rate = self.settings.keep_rate
        return rate[layer_idx] if isinstance(rate, list) else rate

    def margin(self, layer_idx: int) -> float:
        """The energy margin of layer `layer_idx`: `pitome_margin`, or the official `0.75 - 0.75 * layer / layers`."""
        if self.settings.pitome_margin is not None:
            return float(self.settings.pitome_margin)
        return 0.75 - 0.75 * (layer_idx / self.num_hidden_layers)

    def matching(self, layer_idx: int) -> str:
        """`"bipartite"` in the first `ceil(layers / 2)` layers, `"energy"` after (the official DeiT patch)."""
        return "bipartite" if layer_idx < math.ceil(self.num_hidden_layers * 0.5) else "energy"

    def amount(self, layer_idx, num_candidates):
        merges = pitome_merge_count(self.keep_rate(layer_idx), num_candidates)
        return merges if merges > 0 else None

    def merge(self, hidden_states, sizes, statistic, amount, state, layer_idx):
        return pitome_merge(
            hidden_states,
            sizes,
            statistic,
            amount,
            self.num_prefix_tokens,
            state.patch_ids,
            self.margin(layer_idx),
            self.settings.pitome_alpha,
            self.matching(layer_idx),
            state.key_mask,
        )


REDUCERS: dict[str, type[TokenReducer]] = {
    "variance": VariancePruner,
    "medad": MedADPruner,
    "evit": EViTPruner,
    "entropy": EntropyPruner,
    "random": RandomPruner,
    "tome": ToMeMerger,
    "bspf": BSPFPruner,
    "pitome": PiToMeMerger,
}
"""Every token-reduction method by its `pruning_method` name. Config validation, the command line's choices, the
sweep and the docs read this registry: a new method is one `TokenReducer` subclass plus one line here."""


def reducer_from_config(config, num_prefix_tokens: int) -> TokenReducer | None:
    """The reducer that the pruning fields recorded on `config` describe (`None` when `pruning_method` is `None` or
    absent). Fields not on `config` take their [`PruningSettings`] defaults."""
    if getattr(config, "pruning_method", None) is None:
        return None
    settings = PruningSettings.from_config(config).with_defaults(config.num_hidden_layers)
    return settings.reducer(num_prefix_tokens, config.num_hidden_layers)


# ---------------------------------------------------------------------------------------------------------------------
# One forward pass
# ---------------------------------------------------------------------------------------------------------------------


class TokenReduction:
    """One forward pass of a reducer: handed to every layer, which calls `enter` before its attention and `exit`
    after the attention residual.

    It keeps the [`ReductionState`] entering each layer, so a layer that runs again for the same forward pass (as
    gradient checkpointing recomputes it during the backward pass) sees the state it saw the first time.

    With an attention mask, the key mask (`(batch, tokens)`, True = attended) travels with the tokens: masked tokens
    are never kept in place of unmasked ones, never fused or merged with them, and after each reduction the layers'
    mask is rebuilt for the tokens left by `mask_builder` (the model's own mask function, so its form, boolean for
    SDPA or additive for eager attention, is the model's). Until a reduction changes the tokens the layers use the
    model's own mask, so a run that drops nothing equals the stock model exactly.

    Args:
        reducer ([`TokenReducer`]).
        num_prefix_tokens (`int`): as the reducer's.
        state ([`ReductionState`], *optional*): the state before the first layer; by default every token stands for
            one patch, in grid order ([`ReductionState.start`]).
        key_mask (`torch.Tensor` of shape `(batch, prefix + patches)`, *optional*): the attention mask the model was
            given (1 = attended, 0 = masked), checked by [`check_key_mask`] at the first layer.
        mask_builder (`Callable[[hidden_states, key_mask], mask]`, *optional*): the layers' attention mask for the
            given tokens and key mask; required with `key_mask`.
        grid (`(rows, cols)`, *optional*): the patch grid of this input (block-based methods); by default the square
            grid when the patch count is a square number.
        num_hidden_layers (`int`, *optional*): the model's depth; with the reducer's `restore_patch_grid` setting,
            [`TokenReduction.finish`] puts the output of the last layer back on the patch grid.

    With `restore_patch_grid` the state also follows every patch to the token that carries it (`patch_map`), so that
    [`TokenReduction.restore`] can put any layer's output back on the full grid (`token_ops.restore_patch_grid`).

    Raises:
        ValueError: with `key_mask` but no `mask_builder`; with `restore_patch_grid` but no `num_hidden_layers`.
    """

    def __init__(
        self,
        reducer: TokenReducer,
        num_prefix_tokens: int,
        state: ReductionState | None = None,
        key_mask: torch.Tensor | None = None,
        mask_builder=None,
        grid: tuple[int, int] | None = None,
        num_hidden_layers: int | None = None,
    ):
        if key_mask is not None and mask_builder is None:
            raise ValueError("a TokenReduction with a key_mask needs the mask_builder that rebuilds the layers' mask.")
        self.restores = bool(getattr(reducer.settings, "restore_patch_grid", False))
        if self.restores and num_hidden_layers is None:
            raise ValueError("a TokenReduction that restores the patch grid needs the model's num_hidden_layers.")
        self.num_hidden_layers = num_hidden_layers
        self._restored_hidden_states: tuple | None = None
        self.reducer = reducer
        self.num_prefix_tokens = num_prefix_tokens
        self.key_mask = key_mask
        self.mask_builder = mask_builder
        self.grid = grid
        self._entering: dict[int, ReductionState] = {}
        self._leaving: dict[int, ReductionState] = {}
        self._current: ReductionState | None = state

    @classmethod
    def from_config(
        cls, config, num_prefix_tokens: int, key_mask=None, mask_builder=None, grid=None
    ) -> "TokenReduction | None":
        """The reduction `config`'s pruning fields describe, or `None` when pruning is off (`pruning_method=None`)."""
        reducer = reducer_from_config(config, num_prefix_tokens)
        if reducer is None:
            return None
        return cls(reducer, num_prefix_tokens, None, key_mask, mask_builder, grid, config.num_hidden_layers)

    def enter(
        self, layer_idx: int, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[LayerPlan, torch.Tensor | None]:
        """Plan layer `layer_idx` for the tokens `hidden_states` `(batch, prefix + candidates, hidden)` entering it.

        Args:
            layer_idx (`int`), hidden_states (`torch.Tensor`).
            attention_mask (*optional*): the mask the model handed the layer (for its original tokens).

        Returns:
            `(plan, attention_mask)`: the [`LayerPlan`], and the mask the layer's attention must use: the model's
            while the tokens are the original ones, else the rebuilt one, plus ToMe's proportional-attention bias
            `log(size)` (additive, `(batch, 1, 1, tokens)`) once tokens were merged.
        """
        state = self._entering.get(layer_idx)
        if state is None:
            state = self._current
            if state is None:
                state = ReductionState.start(hidden_states, self.num_prefix_tokens, self.key_mask, self.grid)
                if self.restores:
                    state.patch_map = state.patch_ids
            self._entering[layer_idx] = state
        num_candidates = int(hidden_states.shape[1]) - self.num_prefix_tokens  # int(): a tensor while tracing
        amount = self.reducer.amount(layer_idx, num_candidates)
        statistic = None
        if amount is not None and self.reducer.needs_statistic(amount, num_candidates):
            statistic = self.reducer.statistic
        plan = LayerPlan(layer_idx, num_candidates, amount, statistic)
        mask = attention_mask if isinstance(state.layer_mask, str) else state.layer_mask
        bias = state.attention_bias(hidden_states.dtype)
        if bias is not None:
            if mask is not None and mask.dtype == torch.bool:  # SDPA's boolean mask, made additive to take the bias
                mask = torch.zeros(mask.shape, dtype=bias.dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(bias.dtype).min
                )
            mask = bias if mask is None else mask + bias
        return plan, mask

    def exit(self, plan: LayerPlan, hidden_states: torch.Tensor, statistic: torch.Tensor | None) -> torch.Tensor:
        """Reduce the tokens after layer `plan.layer_idx`'s attention residual, as planned.

        Args:
            plan ([`LayerPlan`]): from `enter`.
            hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
            statistic (`torch.Tensor`, *optional*): what `plan.statistic` names.

        Returns:
            `torch.Tensor` of shape `(batch, prefix + candidates', hidden)`.
        """
        entering = state = self._entering[plan.layer_idx]
        if plan.amount is not None:
            before = hidden_states
            hidden_states, state = self.reducer.reduce(hidden_states, statistic, entering, plan.amount, plan.layer_idx)
            if state.patch_ids is not entering.patch_ids:  # the tokens changed: the model's mask no longer fits
                # without a key mask nothing is masked (a mask the model built anyway, e.g. while exporting, held
                # only "attend"); with one, the mask is rebuilt for the tokens left
                state.layer_mask = None if state.key_mask is None else self.mask_builder(hidden_states, state.key_mask)
                if self.restores:
                    self._follow_patches(entering, state, before)
            elif self.restores:
                state.patch_map, state.dropped = entering.patch_map, entering.dropped
        if plan.layer_idx not in self._leaving:  # a recomputation must not move the pass's end state back
            self._leaving[plan.layer_idx] = state
            self._current = state
        return hidden_states

    def _follow_patches(self, entering: ReductionState, state: ReductionState, before: torch.Tensor) -> None:
        """Update the patch map (and the values of dropped patches) of `state` after a reduction from `entering`;
        `before` `(batch, prefix + candidates, hidden)` is what the reduction was given."""
        if state.destination is None:
            raise ValueError(
                f"pruning_method={self.reducer.name!r} does not record where each token goes, so restore_patch_grid "
                "cannot be used with it: set restore_patch_grid=False, or use a method that records it "
                "(its reducer sets ReductionState.destination)."
            )
        old = entering.patch_map
        carried = old >= 0
        new = state.destination.gather(1, old.clamp_min(0)).where(carried, -1)
        newly_dropped = (carried & (new < 0)).unsqueeze(-1)
        values = gather_tokens(before[:, self.num_prefix_tokens :], old.clamp_min(0))
        dropped = entering.dropped if entering.dropped is not None else torch.zeros_like(values)
        state.patch_map, state.dropped = new, values.where(newly_dropped, dropped)

    def restore(self, hidden_states: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """The output of layer `layer_idx`, `(batch, prefix + candidates, hidden)`, back on the full patch grid:
        `(batch, prefix + patches, hidden)` (`token_ops.restore_patch_grid`).

        Raises:
            ValueError: when the reduction does not restore the patch grid (`restore_patch_grid=False`).
        """
        if not self.restores:
            raise ValueError("this forward pass does not follow the patches: set restore_patch_grid=True.")
        state = self._leaving[layer_idx]
        return restore_patch_grid(hidden_states, state.patch_map, self.num_prefix_tokens, state.dropped)

    def finish(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Called by each layer with its output: the last layer's output back on the patch grid with
        `restore_patch_grid` (so the final norm, pooler, heads and `last_hidden_state` see every patch), any other
        output unchanged."""
        if self.restores and layer_idx == self.num_hidden_layers - 1:
            return self.restore(hidden_states, layer_idx)
        return hidden_states

    def restore_hidden_states(self, hidden_states: tuple) -> tuple:
        """A model's `hidden_states` (the embeddings, then each layer's output; `None` for the ones not selected)
        back on the patch grid. The embeddings are on it already and so is the last layer's output ([`finish`]); a
        tuple this method returned is returned as it is (the models around an encoder pass it on).

        Raises:
            ValueError: for a tuple that is not `num_hidden_layers + 1` long (then which layer made which entry is
                unknown).
        """
        if hidden_states is self._restored_hidden_states:
            return hidden_states
        if len(hidden_states) != self.num_hidden_layers + 1:
            raise ValueError(
                f"restore_patch_grid needs the model's {self.num_hidden_layers + 1} hidden states (the embeddings and "
                f"every layer's output), got {len(hidden_states)}."
            )
        last = self.num_hidden_layers
        restored = tuple(
            h if h is None or k in (0, last) else self.restore(h, k - 1) for k, h in enumerate(hidden_states)
        )
        self._restored_hidden_states = restored
        return restored

    @property
    def state(self) -> ReductionState | None:
        """The state after the last layer that ran (`None` before any layer ran)."""
        return self._current

    @property
    def kept_patch_indices(self) -> tuple[torch.Tensor, ...]:
        """What each reducing layer kept, `(batch, kept)` each (see [`ReductionState`])."""
        return () if self._current is None else self._current.kept_patch_indices


# ---------------------------------------------------------------------------------------------------------------------
# Changing the settings of a model
# ---------------------------------------------------------------------------------------------------------------------


def update_pruning(config, num_hidden_layers: int | None = None, **changes) -> dict:
    """Validate `changes` against the pruning fields already on `config`, then write them; return the old values.

    Nothing is written when validation fails.

    Args:
        config: any config carrying pruning fields (a `PrunedViTConfig`, or a stock config after `prune`).
        num_hidden_layers (`int`, *optional*): defaults to `config.num_hidden_layers`.
        **changes: [`PruningFields`] settings (one the resulting method does not read is recorded with an
            [`UnreadSettingWarning`], [`check_setting_names`]).

    Returns:
        `dict` of the changed fields' previous values (what restores them).

    Raises:
        ValueError: for an unknown setting or a value [`PruningSettings.validate`] rejects.
    """
    check_setting_names(changes)
    depth = num_hidden_layers if num_hidden_layers is not None else config.num_hidden_layers
    settings = replace(PruningSettings.from_config(config), **changes).with_defaults(depth)
    settings.validate(depth, config_patch_grid(config))
    check_setting_names(changes, settings.pruning_method)
    old = {name: getattr(config, name, getattr(_DEFAULTS, name)) for name in changes}
    for name in changes:
        setattr(config, name, getattr(settings, name))
    if getattr(config, "prune_layers", None) is None:
        config.prune_layers = settings.prune_layers
    return old


def pair(value) -> tuple[int, int]:
    """`(height, width)` of a config size given as one int or a pair (as ViT configs hold `image_size`)."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def config_patch_grid(config) -> tuple[int, int] | None:
    """The patch grid `(rows, cols)` of `config` at its configured image size: `config.patch_grid()` where it has one
    (PrunedViT, overlapping patches included), else `image_size // patch_size` per side; `None` when the config does
    not say."""
    if hasattr(config, "patch_grid"):
        return config.patch_grid()
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if size is None or patch is None:
        return None
    (height, width), (patch_h, patch_w) = pair(size), pair(patch)
    return height // patch_h, width // patch_w


@contextlib.contextmanager
def temporary_pruning(config, **changes) -> Iterator[None]:
    """Change pruning fields of `config` for the duration of a `with` block; every field is restored on exit, also
    when the block raises.

    Raises:
        ValueError: as [`update_pruning`], before the block runs.
    """
    old = update_pruning(config, **changes)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(config, name, value)


__all__ = [
    "PRUNING_FIELDS",
    "REDUCERS",
    "AttentionPruner",
    "BSPFPruner",
    "EViTPruner",
    "EntropyPruner",
    "LayerPlan",
    "MedADPruner",
    "PruningFields",
    "PruningSettings",
    "RandomPruner",
    "ReductionState",
    "ToMeMerger",
    "TokenReducer",
    "TokenReduction",
    "UnreadSettingWarning",
    "VariancePruner",
    "check_setting_names",
    "default_prune_layers",
    "reducer_from_config",
    "settings_read_by",
    "temporary_pruning",
    "update_pruning",
]
