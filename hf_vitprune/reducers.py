# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""The token-reduction methods: one [`TokenReducer`] per method, the registry [`REDUCERS`], and the per-pass state
they hand on ([`ReductionState`]).

A reducer names the attention statistic it needs (`statistic`), the settings it reads (`settings_used`), how many
tokens a layer keeps (`amount`) and how it reduces them (`reduce`): it scores the candidate tokens and keeps the best
ones, optionally fusing the rest into one extra token, or merges tokens (ToMe, PiToMe, through [`TokenMerger`]). The
tensor operations are in [`token_ops`] and [`token_merging`]; the settings a reducer is built from and the forward
pass that runs it are in [`token_reduction`]. A new method is one class here plus one line in `REDUCERS`.

Methods: Igaue & Aizawa, arXiv:2507.19175 (2025) (variance, MedAD, fusion); EViT (Liang et al., ICLR 2022); attention
entropy (Igaue & Aizawa, arXiv:2604.03803, 2026, reconstructed); ToMe (Bolya et al., ICLR 2023); PiToMe (Tran et al.,
NeurIPS 2024); BSPF-ViT (Hsieh et al., arXiv:2507.12125, 2025, reconstructed).

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch and its
siblings `token_ops.py` and `token_merging.py`.
"""

import contextlib
import contextvars
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .token_merging import merge_tokens, pitome_merge, pitome_merge_count, tome_merge_limit
from .token_ops import (
    ATTENTION,
    ATTENTION_AND_KEYS,
    CLASS_ATTENTION,
    KEYS,
    block_smooth,
    check_key_mask,
    entropy_scores,
    evit_scores,
    exact_keep_count,
    head_entropy_scores,
    joint_importance,
    key_entropy_scores,
    medad_scores,
    prune_tokens,
    random_scores,
    similarity_fusion,
    variance_scores,
)


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
    amount_setting: ClassVar[str] = "keep_rate"
    """The setting that says how much a layer reduces: `keep_rate` (a fraction kept), or `tome_r` (tokens merged)."""

    def __init_subclass__(cls, **kwargs):
        """Check, when a reducer class is defined, that its `reduce` takes the arguments a forward pass gives it
        (`hidden_states, statistic, state, amount, layer_idx`; `layer_idx` was added in a later version).

        Raises:
            TypeError: naming the class and the signature to write, for a `reduce` that cannot take them.
        """
        super().__init_subclass__(**kwargs)
        reduce = cls.__dict__.get("reduce")
        if reduce is None:
            return
        try:
            inspect.signature(reduce).bind(None, "hidden_states", "statistic", "state", "amount", "layer_idx")
        except TypeError:
            raise TypeError(
                f"{cls.__qualname__}.reduce{inspect.signature(reduce)} cannot take the arguments a forward pass gives "
                "it: write it as reduce(self, hidden_states, statistic, state, amount, layer_idx) (layer_idx, the "
                "0-indexed layer, was added as the fifth argument; see README's Changes)."
            ) from None

    def __init__(self, settings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
        self.settings = settings
        self.num_prefix_tokens = num_prefix_tokens
        self.num_hidden_layers = num_hidden_layers

    @classmethod
    def check_settings(cls, settings, num_hidden_layers: int) -> None:
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
        return [(kept, fused) for _, kept, fused in self.layer_schedule(num_patches, num_hidden_layers)]

    def reducing_layers(self, num_patches: int, num_hidden_layers: int) -> list[int]:
        """The 0-indexed layers that reduce (and report kept indices) for `num_patches` patches, in order."""
        return [layer_idx for layer_idx, _, _ in self.layer_schedule(num_patches, num_hidden_layers)]

    def layer_schedule(self, num_patches: int, num_hidden_layers: int) -> Iterator[tuple[int, int, int]]:
        """`(layer_idx, kept, fused)` of each reducing layer, in order, for an image of `num_patches` patches: the
        candidate tokens the layer keeps and whether it appends a fused token (prefix tokens not counted)."""
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

    def __init__(self, settings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
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
        """The merge of one layer (a `token_merging.merge_tokens`-like result: `hidden_states`, `token_sizes`,
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
    amount_setting = "tome_r"

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
    [`~token_merging.pitome_merge`], equal to the official code). As the official DeiT patch: the first
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

    def __init__(self, settings, num_prefix_tokens: int, num_hidden_layers: int | None = None):
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


__all__ = [
    "REDUCERS",
    "AttentionPruner",
    "BSPFPruner",
    "EViTPruner",
    "EntropyPruner",
    "LayerPlan",
    "MedADPruner",
    "PiToMeMerger",
    "RandomPruner",
    "ReductionState",
    "ToMeMerger",
    "TokenMerger",
    "TokenReducer",
    "VariancePruner",
    "per_sample_random_seeds",
]
