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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from .reducers import REDUCERS, LayerPlan, ReductionState, TokenReducer
from .token_ops import ENTROPY_AXES, gather_tokens, is_number, restore_patch_grid

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
            if not is_number(rate) or not 0 < rate <= 1:
                raise ValueError(
                    f"keep_rate must be a number in (0, 1] (or a list of such numbers, one per pruning layer); "
                    f"got {self.keep_rate!r}. 1.0 keeps every token; a keep rate of 0 would drop them all."
                )
        for name in ("fuse_pruned", "restore_patch_grid"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not is_number(self.fusion_temperature) or not self.fusion_temperature > 0:
            raise ValueError(f"fusion_temperature must be a number > 0, got {self.fusion_temperature!r}.")
        if not is_number(self.renyi_alpha) or not self.renyi_alpha > 0:
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
        if margin is not None and (not is_number(margin) or not -1 <= margin < 1):
            raise ValueError(
                f"pitome_margin must be a number in [-1, 1) (a cosine similarity) or None (the official per-layer "
                f"schedule), got {margin!r}."
            )
        if not is_number(self.pitome_alpha) or not self.pitome_alpha > 0:
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
    "PruningFields",
    "PruningSettings",
    "TokenReduction",
    "UnreadSettingWarning",
    "check_setting_names",
    "default_prune_layers",
    "reducer_from_config",
    "settings_read_by",
    "temporary_pruning",
    "update_pruning",
]
