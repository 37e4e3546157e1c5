# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""Token reduction for Vision Transformers, independent of any backbone.

A *token reducer* is one method of removing tokens inside a ViT: it names the attention statistic it needs, scores
the candidate tokens and keeps the best ones (optionally fusing the rest into one extra token), or merges tokens
(ToMe). A backbone (ViT, DeiT, DINOv2, CLIP, ...) only has to compute that statistic at its layers and call
[`TokenReduction.enter`] / [`TokenReduction.exit`] around the attention residual: it holds no method logic.

- [`PruningSettings`]: the pruning fields of a config, validated together.
- [`TokenReducer`] and one subclass per method; [`REDUCERS`] is the registry by name that config validation, the
  command line, the sweep and the docs read. A new method is one class plus one line in `REDUCERS`.
- [`ReductionState`]: what travels between layers during one forward pass (which patch each token stands for, ToMe's
  token sizes, the kept indices).
- [`TokenReduction`]: one forward pass of a reducer, handed to every layer.

Methods: Igaue & Aizawa, "Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in
Vision Transformers", arXiv:2507.19175 (2025) (variance, MedAD, fusion); EViT (Liang et al., ICLR 2022); attention
entropy (Igaue & Aizawa, "Renyi Attention Entropy for Patch Pruning", arXiv:2604.03803, 2026); ToMe (Bolya et al.,
ICLR 2023).

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch.
"""

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------------------------------
# Attention statistics a reducer can ask a backbone for
# ---------------------------------------------------------------------------------------------------------------------

CLASS_ATTENTION = "class_attention"
"""The class token's softmax attention to each candidate token, per head: `(batch, heads, candidates)`, float32."""
ATTENTION = "attention"
"""The layer's full softmax attention matrix: `(batch, heads, tokens, tokens)` (query rows, key columns), float32."""
KEYS = "keys"
"""The keys averaged over heads: `(batch, tokens, head_dim)`, float32 (ToMe's similarity)."""
ATTENTION_AND_KEYS = "attention_and_keys"
"""Both: `(attention (batch, heads, tokens, tokens), keys (batch, tokens, head_dim))` (BSPF-ViT)."""


def class_attention_row(
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    scaling: float,
    num_prefix_tokens: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The class token's attention to the candidate tokens, per head: `softmax(q_cls k^T * scaling)` in float32.

    Computed beside SDPA (which does not return attention weights) at about 1/N of the cost of the full attention
    matrix; it equals row 0 of eager attention's weights (before dropout). Source: the statistic of EViT and of
    arXiv:2507.19175 (eqs. 5-7); computing it on the side is this project's.

    Args:
        query_states (`torch.Tensor` of shape `(batch, heads, tokens, head_dim)`).
        key_states (`torch.Tensor` of shape `(batch, heads, tokens, head_dim)`).
        scaling (`float`): `head_dim ** -0.5`.
        num_prefix_tokens (`int`): leading tokens that are not candidates (their columns are dropped after the
            softmax, which runs over all tokens); the class token is token 0.
        attention_mask (`torch.Tensor`, *optional*): the layer's additive float mask or boolean mask (True = attend),
            broadcastable to `(batch, heads, tokens, tokens)`; its first query row is applied.

    Returns:
        `torch.FloatTensor` of shape `(batch, heads, tokens - num_prefix_tokens)`.
    """
    logits = torch.matmul(query_states[:, :, :1].float(), key_states.float().transpose(2, 3)) * scaling
    if attention_mask is not None:
        row = attention_mask[..., :1, :]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
    return logits.softmax(dim=-1)[:, :, 0, num_prefix_tokens:]


def attention_with_statistic(
    module: nn.Module,
    attention_interface,
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    statistic: str | None,
    num_prefix_tokens: int,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Multi-head attention that also returns the statistic a reducer asked for, keeping SDPA where it can.

    - `statistic=None`, [`CLASS_ATTENTION`] or [`KEYS`]: the attention runs through `attention_interface` (the
      model's configured implementation, SDPA by default) and the statistic is computed on the side.
    - [`ATTENTION`] (and [`ATTENTION_AND_KEYS`]): the full attention matrix is needed, so it is computed once, in
      float32, and used for the layer's own output too (eager attention at this layer only, as transformers'
      `eager_attention_forward`).

    Args:
        module (`nn.Module`): the attention module (passed on to `attention_interface`).
        attention_interface: a transformers attention function (`ALL_ATTENTION_FUNCTIONS` entry).
        query_states, key_states, value_states (`torch.Tensor` of shape `(batch, heads, tokens, head_dim)`).
        attention_mask (`torch.Tensor`, *optional*): as the attention interface takes it.
        scaling (`float`), dropout (`float`): as the interface takes them.
        statistic (`str`, *optional*): what to compute on the side.
        num_prefix_tokens (`int`): leading tokens that are never candidates.

    Returns:
        `(attn_output, attn_weights, statistic)`: `attn_output` of shape `(batch, tokens, heads, head_dim)` (before
        the output projection), the interface's attention weights (or `None`), and the statistic (see the constants
        of this module), float32 whatever the input dtype.

    Raises:
        ValueError: for an unknown `statistic`.
    """
    if statistic in (ATTENTION, ATTENTION_AND_KEYS):
        logits = torch.matmul(query_states, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            logits = (
                logits.masked_fill(~attention_mask, float("-inf"))
                if attention_mask.dtype == torch.bool
                else logits + attention_mask
            )
        probabilities = nn.functional.softmax(logits, dim=-1, dtype=torch.float32)
        attn_weights = probabilities.to(query_states.dtype)
        dropped = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
        attn_output = torch.matmul(dropped, value_states).transpose(1, 2).contiguous()
        if statistic == ATTENTION_AND_KEYS:
            return attn_output, attn_weights, (probabilities, key_states.float().mean(dim=1))
        return attn_output, attn_weights, probabilities
    attn_output, attn_weights = attention_interface(
        module, query_states, key_states, value_states, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    if statistic is None:
        return attn_output, attn_weights, None
    if statistic == CLASS_ATTENTION:
        return (
            attn_output,
            attn_weights,
            class_attention_row(query_states, key_states, scaling, num_prefix_tokens, attention_mask),
        )
    if statistic == KEYS:
        return attn_output, attn_weights, key_states.float().mean(dim=1)
    known = [CLASS_ATTENTION, ATTENTION, KEYS, ATTENTION_AND_KEYS]
    raise ValueError(f"Unknown attention statistic {statistic!r}; known: {known}.")


# ---------------------------------------------------------------------------------------------------------------------
# Criteria: one importance score per candidate token, higher = more important (kept)
# ---------------------------------------------------------------------------------------------------------------------


def evit_scores(class_attention: torch.Tensor) -> torch.Tensor:
    """EViT's attentiveness: the class token's attention to each token, averaged over heads.

    Source: Liang et al., "Not All Patches are What You Need" (EViT), ICLR 2022; eq. 5 of arXiv:2507.19175.

    Args:
        class_attention (`torch.FloatTensor` of shape `(batch, heads, candidates)`): softmax attention of the class
            token to each candidate token, per head.

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    return class_attention.mean(dim=1)


def variance_scores(class_attention: torch.Tensor) -> torch.Tensor:
    """Variance over heads of the class token's attention to each token (eq. 6 of arXiv:2507.19175).

    The biased (population) variance, `mean_h (a_h - mean_h a)^2`, dividing by the number of heads `H`. The unbiased
    one differs by the constant factor `H / (H - 1)`, which changes neither the ranking nor the fusion weights (these
    are normalised by the scores' spread, see `prune_tokens`).

    Args:
        class_attention (`torch.FloatTensor` of shape `(batch, heads, candidates)`).

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    # written out: torch.var over the head dimension of this strided slice is much slower on CPU (torch 2.14)
    centered = class_attention - class_attention.mean(dim=1, keepdim=True)
    return centered.square().mean(dim=1)


def true_median(values: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """The statistical median along `dim`: the middle value, or the mean of the two middle values for an even count.

    `torch.median` returns the lower of the two middle values instead; this matches `torch.quantile(values, 0.5)`
    (and `numpy.median`) without quantile's size limits.

    Args:
        values (`torch.Tensor`): any shape, floating point.
        dim (`int`): dimension to reduce.
        keepdim (`bool`): keep `dim` with size 1.

    Returns:
        `torch.Tensor` with `dim` reduced.
    """
    ordered = values.sort(dim=dim).values
    n = values.shape[dim]
    low = ordered.narrow(dim, (n - 1) // 2, 1)
    high = ordered.narrow(dim, n // 2, 1)
    median = (low + high) / 2
    return median if keepdim else median.squeeze(dim)


def medad_scores(class_attention: torch.Tensor) -> torch.Tensor:
    """Median absolute deviation over heads of the class token's attention (eq. 7 of arXiv:2507.19175).

    `median_h |a_h - median_h a|`, both medians the true median (`true_median`: mean of the two middle values for an
    even head count, e.g. DeiT-S's 6 heads).

    Args:
        class_attention (`torch.FloatTensor` of shape `(batch, heads, candidates)`).

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    center = true_median(class_attention, dim=1, keepdim=True)
    return true_median((class_attention - center).abs(), dim=1)


def renyi_entropy(probabilities: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Renyi entropy of order `alpha` (in nats) of the distributions along `dim`, computed in log space.

    `H_alpha(p) = log(sum_i p_i^alpha) / (1 - alpha)`, evaluated as `logsumexp(alpha * log p) / (1 - alpha)` so that
    no finite order under- or overflows (`p ** 30` of attention probabilities underflows to 0 in float32 and gives
    `log 0`); `alpha == 1` is its limit, the Shannon entropy `-sum_i p_i log p_i` (with `0 log 0 = 0`), and
    `alpha == inf` the min-entropy `-log max_i p_i`. Zero probabilities are read as the smallest normal float (their
    terms then vanish), so the value and its gradient stay finite. Source: Renyi (1961); the criterion of
    arXiv:2604.03803.

    Args:
        probabilities (`torch.FloatTensor`): non-negative, summing to 1 along `dim`.
        alpha (`float`): order, > 0 (`float("inf")` allowed).
        dim (`int`): the distribution's dimension.

    Returns:
        `torch.FloatTensor` with `dim` reduced, finite.

    Raises:
        ValueError: if `alpha` is not > 0 (or is NaN).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for the Renyi entropy, got {alpha}.")
    if alpha == 1:
        return -torch.special.xlogy(probabilities, probabilities).sum(dim=dim)
    log_p = probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()
    if alpha == float("inf"):
        return -log_p.amax(dim=dim)
    return torch.logsumexp(alpha * log_p, dim=dim) / (1 - alpha)


def entropy_scores(token_attention: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Minus the Renyi entropy of each token's own attention distribution (its query row), averaged over heads.

    A token whose attention is concentrated (low entropy) is more important. Source: Igaue & Aizawa, "Renyi Attention
    Entropy for Patch Pruning" (arXiv:2604.03803, 2026; reconstructed from its abstract: "Low-entropy patches, which
    receive selective and concentrated attention, are kept as important"); `alpha == 1` is the Shannon-entropy
    criterion of the same authors. The reading `entropy_axis="query"`.

    Args:
        token_attention (`torch.FloatTensor` of shape `(batch, heads, candidates, tokens)`): each candidate token's
            softmax attention over all tokens.
        alpha (`float`): Renyi order, > 0 (1 = Shannon, inf = min-entropy).

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    return -renyi_entropy(token_attention, alpha, dim=-1).mean(dim=1)


def key_entropy_scores(attention: torch.Tensor, num_prefix_tokens: int, alpha: float = 1.0) -> torch.Tensor:
    """Minus the Renyi entropy of the attention each token *receives* (its key column over all queries, class token
    included, normalised to sum 1), averaged over heads: a token attended to by a few queries only scores high.

    The reading `entropy_axis="key"` of arXiv:2604.03803's abstract ("patches, which receive selective and
    concentrated attention"), reconstructed: the abstract does not say which distribution.

    Args:
        attention (`torch.FloatTensor` of shape `(batch, heads, tokens, tokens)`): the full softmax attention.
        num_prefix_tokens (`int`): leading tokens that are not candidates (their columns are not scored; their rows,
            the class token's among them, count as queries).
        alpha (`float`): Renyi order.

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    received = attention[..., num_prefix_tokens:]  # (batch, heads, queries, candidates)
    distribution = received / received.sum(dim=2, keepdim=True).clamp_min(torch.finfo(received.dtype).tiny)
    return -renyi_entropy(distribution, alpha, dim=2).mean(dim=1)


def head_entropy_scores(class_attention: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Minus the Renyi entropy, across heads, of the class token's attention to each token (normalised over heads): a
    token that one or two heads single out scores high. Cheap: it needs only the class-attention row.

    The reading `entropy_axis="heads"` of arXiv:2604.03803 (reconstructed; close to the variance / MedAD criteria of
    arXiv:2507.19175, which also measure diversity across heads).

    Args:
        class_attention (`torch.FloatTensor` of shape `(batch, heads, candidates)`).
        alpha (`float`): Renyi order.

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    distribution = class_attention / class_attention.sum(dim=1, keepdim=True).clamp_min(
        torch.finfo(class_attention.dtype).tiny
    )
    return -renyi_entropy(distribution, alpha, dim=1)


ENTROPY_AXES = ("query", "key", "heads")
"""The readings of "the entropy of the attention distribution": the token's own row, the column it receives, or the
class token's attention to it across heads."""


def random_scores(batch_size: int, num_candidates: int, device: torch.device | str) -> torch.Tensor:
    """Uniform random scores in [0, 1): the sanity floor every criterion must beat.

    Drawn from torch's global generator (seed it with `torch.manual_seed` for repeatable runs). Under gradient
    checkpointing the recomputation replays the same draws (torch preserves the RNG state).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_candidates)`.
    """
    return torch.rand(batch_size, num_candidates, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# Selection, fusion and merging
# ---------------------------------------------------------------------------------------------------------------------


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
    token can merge into B, so at most `|A|` merges happen. Source: Bolya et al., ICLR 2023, sec. 3.
    """
    first_a = num_prefix_tokens % 2  # candidate index c sits at position c + num_prefix_tokens
    size_a = max(num_candidates - first_a + 1, 0) // 2
    return size_a if num_candidates - size_a > 0 else 0  # B must not be empty


def gather_tokens(hidden_states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The tokens `index[b]` of each sequence `b`, in that order.

    Equal to `hidden_states.gather(1, index[..., None].expand(-1, -1, hidden))` (values and gradients), computed as
    one `index_select` over the flattened batch, which copies whole rows instead of reading an expanded index per
    element (faster on CPU; the pruning-overhead table of `benchmarks/speed.py` times the whole pruning step). Our
    helper, not from a paper.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, tokens, hidden)`).
        index (`torch.LongTensor` of shape `(batch, k)`): token positions in [0, tokens).

    Returns:
        `torch.Tensor` of shape `(batch, k, hidden)`.

    Raises:
        IndexError / RuntimeError (from `index_select`): for a position outside [0, tokens) that lands outside the
        flattened batch; positions are not range-checked per sequence (the callers build them from `argsort`).
    """
    batch_size, num_tokens, hidden_size = hidden_states.shape
    offsets = torch.arange(batch_size, device=index.device).unsqueeze(1) * num_tokens
    flat = hidden_states.reshape(batch_size * num_tokens, hidden_size)
    return flat.index_select(0, (index + offsets).reshape(-1)).view(batch_size, index.shape[1], hidden_size)


class PrunedTokens(NamedTuple):
    """What [`prune_tokens`] returns."""

    hidden_states: torch.Tensor
    """`(batch, prefix + num_keep [+ 1], hidden)`: prefix, kept tokens (in sequence order), the fused token."""
    patch_ids: torch.Tensor
    """`(batch, num_keep [+ 1])`: the new candidates' patch ids (-1 for the fused token)."""
    kept_patch_ids: torch.Tensor
    """`(batch, num_keep)`: the kept candidates' patch ids."""
    key_mask: torch.Tensor | None
    """`(batch, prefix + num_keep [+ 1])` bool, True = attended; `None` without a candidate mask."""


def prune_tokens(
    hidden_states: torch.Tensor,
    scores: torch.Tensor,
    num_keep: int,
    num_prefix_tokens: int,
    patch_ids: torch.Tensor,
    fuse: bool = True,
    fusion_temperature: float = 1.0,
    key_mask: torch.Tensor | None = None,
) -> PrunedTokens:
    """Keep the `num_keep` best-scored candidate tokens and optionally fuse the rest into one appended token.

    Prefix tokens (class, distillation, registers) are never candidates and stay first. Kept tokens follow in their
    sequence order (EViT's code orders them by score; the set is the same, and sequence order makes an image's tokens
    independent of how near-equal scores rank in different batches). With `fuse`, one token is appended: `sum_j w_j x_j`
    over the pruned tokens `j`, with `w = softmax(s_j / (sigma * fusion_temperature))` and `sigma` the standard
    deviation of the scores over all of the image's candidates (eq. 8 of arXiv:2507.19175). Raw criterion values are
    tiny (~1e-5 for the variance of attention probabilities), so dividing by `sigma` makes the weights independent of
    the criterion's scale; as softmax ignores shifts this is the same as z-scoring the scores per image. Equal scores
    (`sigma == 0`) give a plain mean.

    With a `key_mask` (an attention mask over the tokens), masked candidates are kept only when fewer unmasked ones than
    `num_keep` are left, never enter the fused token (weight 0; `sigma` is taken over the unmasked candidates) and stay
    masked; the fused token is masked when every pruned token is.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
        scores (`torch.FloatTensor` of shape `(batch, candidates)`): criterion values, higher = more important.
        num_keep (`int`): candidates to keep, in [1, candidates].
        num_prefix_tokens (`int`): leading tokens that are never pruned.
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): index in the original patch grid of each
            candidate token, -1 for a fused token.
        fuse (`bool`): append the fused token (only when something is pruned).
        fusion_temperature (`float`): > 0.
        key_mask (`torch.BoolTensor` of shape `(batch, prefix + candidates)`, *optional*): True = attended.

    Returns:
        [`PrunedTokens`]: `(hidden_states, patch_ids, kept_patch_ids, key_mask)`.

    Raises:
        ValueError: if `num_keep` is outside [1, candidates].
    """
    batch_size = hidden_states.shape[0]
    num_candidates = scores.shape[1]
    if not 1 <= num_keep <= num_candidates:
        raise ValueError(f"num_keep must lie in [1, {num_candidates}], got {num_keep}.")
    valid = None if key_mask is None else key_mask[:, num_prefix_tokens:]
    ranking = scores if valid is None else scores.masked_fill(~valid, float("-inf"))
    order = ranking.argsort(dim=1, descending=True)
    # kept and pruned tokens each in sequence order: an image's output then depends on which tokens are kept, not on
    # how near-equal scores happen to be ranked (which can differ with the batch the image is in)
    kept = order[:, :num_keep].sort(dim=1).values
    prefix = hidden_states[:, :num_prefix_tokens]
    kept_patch_ids = patch_ids.gather(1, kept)
    new_mask = None if valid is None else torch.cat([key_mask[:, :num_prefix_tokens], valid.gather(1, kept)], dim=1)
    if not (fuse and num_keep < num_candidates):
        output = torch.cat([prefix, gather_tokens(hidden_states, kept + num_prefix_tokens)], dim=1)
        return PrunedTokens(output, kept_patch_ids, kept_patch_ids, new_mask)
    # one gather of every candidate: the kept tokens lead, the pruned ones (fused) follow
    pruned = order[:, num_keep:].sort(dim=1).values
    selected = gather_tokens(hidden_states, torch.cat([kept, pruned], dim=1) + num_prefix_tokens)
    weights = fusion_weights(scores, pruned, fusion_temperature, valid).to(hidden_states.dtype)
    fused = torch.bmm(weights.unsqueeze(1), selected[:, num_keep:])
    new_patch_ids = torch.cat([kept_patch_ids, kept_patch_ids.new_full((batch_size, 1), -1)], dim=1)
    if new_mask is not None:
        new_mask = torch.cat([new_mask, valid.gather(1, pruned).any(dim=1, keepdim=True)], dim=1)
    output = torch.cat([prefix, selected[:, :num_keep], fused], dim=1)
    return PrunedTokens(output, new_patch_ids, kept_patch_ids, new_mask)


def fusion_weights(
    scores: torch.Tensor, pruned: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The weights of the pruned tokens in the fused token: `softmax(s_j / (sigma * temperature))` over the pruned
    tokens `j`, `sigma` the standard deviation of the scores over the image's candidates (eq. 8 of arXiv:2507.19175,
    scale-free; see [`prune_tokens`]).

    Args:
        scores (`torch.FloatTensor` of shape `(batch, candidates)`).
        pruned (`torch.LongTensor` of shape `(batch, pruned)`): the pruned candidates.
        temperature (`float`): > 0.
        valid (`torch.BoolTensor` of shape `(batch, candidates)`, *optional*): unmasked candidates; masked ones get
            weight 0 and are left out of `sigma`, and a row whose pruned tokens are all masked gets all-zero weights.

    Returns:
        `torch.FloatTensor` of shape `(batch, pruned)`, each row summing to 1 (or 0, see `valid`).
    """
    if valid is None:
        centered = scores - scores.mean(dim=1, keepdim=True)
        spread = centered.square().mean(dim=1, keepdim=True).sqrt().clamp_min(torch.finfo(scores.dtype).tiny)
        return (scores.gather(1, pruned) / (spread * temperature)).softmax(dim=1)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1)
    mean = scores.where(valid, 0).sum(dim=1, keepdim=True) / count
    spread = ((scores - mean).square().where(valid, 0).sum(dim=1, keepdim=True) / count).sqrt()
    spread = spread.clamp_min(torch.finfo(scores.dtype).tiny)
    logits = (scores.gather(1, pruned) / (spread * temperature)).masked_fill(~valid.gather(1, pruned), float("-inf"))
    any_valid = valid.gather(1, pruned).any(dim=1, keepdim=True)
    return logits.where(any_valid, 0).softmax(dim=1).where(any_valid, 0)


class MergedTokens(NamedTuple):
    """What [`merge_tokens`] returns."""

    hidden_states: torch.Tensor
    """`(batch, prefix + candidates - r, hidden)`: prefix, unmerged A tokens in order, B tokens."""
    token_sizes: torch.Tensor
    """`(batch, prefix + candidates - r)`: patches each token stands for."""
    patch_ids: torch.Tensor
    """`(batch, candidates - r)`: a merged B token keeps its own patch id."""
    key_mask: torch.Tensor | None
    """`(batch, prefix + candidates - r)` bool, True = attended; `None` without a mask."""


def merge_tokens(
    hidden_states: torch.Tensor,
    token_sizes: torch.Tensor,
    keys: torch.Tensor,
    num_merge: int,
    num_prefix_tokens: int,
    patch_ids: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> MergedTokens:
    """ToMe's bipartite soft matching: merge `num_merge` tokens into their most similar tokens.

    Written from Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023 (sec. 3): the non-prefix tokens
    alternate between sides A and B by sequence position (even positions are A, as in ToMe where the protected class
    token opens A); each A token is linked to its most similar B token by the cosine similarity of the keys averaged
    over heads; the `num_merge` A tokens with the most similar links are merged into their B tokens by size-weighted
    average (a B token may absorb several). Prefix tokens never merge and never absorb. Unmerged A tokens keep their
    order, followed by the B tokens. Sizes (how many patches a token stands for) are summed; the caller feeds
    `log(size)` to the next layers' attention (proportional attention). Computed in float32, cast back.

    With a `key_mask`, a masked token never merges with an unmasked one: links between them are impossible and links
    between two masked tokens rank after every link between unmasked tokens (so masked tokens merge only among
    themselves, once the unmasked pairs are used up, and stay masked).

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
        token_sizes (`torch.FloatTensor` of shape `(batch, prefix + candidates)`): patches per token (1 at first).
        keys (`torch.Tensor` of shape `(batch, prefix + candidates, head_dim)`): keys averaged over heads.
        num_merge (`int`): `r`; capped at the size of side A (`tome_merge_limit`).
        num_prefix_tokens (`int`).
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): original patch index of each candidate.
        key_mask (`torch.BoolTensor` of shape `(batch, prefix + candidates)`, *optional*): True = attended.

    Returns:
        [`MergedTokens`]: `(hidden_states, token_sizes, patch_ids, key_mask)` with `candidates - r` candidates.
    """
    batch_size, _, hidden_size = hidden_states.shape
    first_a = num_prefix_tokens % 2  # candidate c sits at position c + num_prefix_tokens; even positions are A
    candidates = hidden_states[:, num_prefix_tokens:].float()
    sizes = token_sizes[:, num_prefix_tokens:]
    metric = keys[:, num_prefix_tokens:].float()
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    side_a, side_b = slice(first_a, None, 2), slice(1 - first_a, None, 2)
    num_merge = min(num_merge, tome_merge_limit(candidates.shape[1], num_prefix_tokens))
    if num_merge <= 0:
        return MergedTokens(hidden_states, token_sizes, patch_ids, key_mask)

    similarity = metric[:, side_a] @ metric[:, side_b].transpose(1, 2)  # (batch, |A|, |B|)
    if key_mask is not None:
        valid = key_mask[:, num_prefix_tokens:]
        valid_a, valid_b = valid[:, side_a, None], valid[:, None, side_b]
        similarity = similarity.where(valid_a | valid_b, similarity - 4)  # masked-masked: after every real link
        similarity = similarity.masked_fill(valid_a != valid_b, float("-inf"))
    best_similarity, best_b = similarity.max(dim=-1)
    order = best_similarity.argsort(dim=-1, descending=True)
    merged_a = order[:, :num_merge]
    unmerged_a = order[:, num_merge:].sort(dim=-1).values  # keep the sequence order
    destination = best_b.gather(1, merged_a)

    # A token i sits at position num_prefix_tokens + first_a + 2 i of hidden_states
    def a_tokens(index: torch.Tensor) -> torch.Tensor:
        return gather_tokens(hidden_states, num_prefix_tokens + first_a + 2 * index).float()

    tokens_b = candidates[:, side_b]
    sizes_a, sizes_b = sizes[:, side_a], sizes[:, side_b]
    merged_sizes = sizes_a.gather(1, merged_a)
    weighted_sum_b = (tokens_b * sizes_b.unsqueeze(-1)).scatter_add(
        1,
        destination.unsqueeze(-1).expand(-1, -1, hidden_size),
        a_tokens(merged_a) * merged_sizes.unsqueeze(-1),
    )
    new_sizes_b = sizes_b.scatter_add(1, destination, merged_sizes)
    merged = torch.cat([a_tokens(unmerged_a), weighted_sum_b / new_sizes_b.unsqueeze(-1)], dim=1)
    hidden_states = torch.cat([hidden_states[:, :num_prefix_tokens], merged.to(hidden_states.dtype)], dim=1)
    token_sizes = torch.cat([token_sizes[:, :num_prefix_tokens], sizes_a.gather(1, unmerged_a), new_sizes_b], dim=1)
    patch_ids = torch.cat([patch_ids[:, side_a].gather(1, unmerged_a), patch_ids[:, side_b]], dim=1)
    if key_mask is not None:
        key_mask = torch.cat(
            [key_mask[:, :num_prefix_tokens], valid[:, side_a].gather(1, unmerged_a), valid[:, side_b]], dim=1
        )
    return MergedTokens(hidden_states, token_sizes, patch_ids, key_mask)


def joint_importance(
    attention: torch.Tensor, num_prefix_tokens: int, joint: str = "mean", valid: torch.Tensor | None = None
) -> torch.Tensor:
    """BSPF-ViT's joint query / key importance of each candidate token, from its attention column and its row.

    Reconstructed from the abstract of arXiv:2507.12125 ("Q and K tokens are pruned jointly"): a token is removed as a
    query and as a key at once, so its score combines both roles. As a key: the attention it receives, averaged over
    heads and queries (class token included). As a query: how concentrated its own attention row is (minus its
    Shannon entropy, averaged over heads). `joint="mean"`: the mean of the two scores standardised over the image's
    candidates; `joint="product"`: the attention received times `exp(-entropy)` (the row's effective
    concentration). docs/bspf.md measures both.

    Args:
        attention (`torch.FloatTensor` of shape `(batch, heads, tokens, tokens)`): the full softmax attention.
        num_prefix_tokens (`int`).
        joint (`str`): `"mean"` or `"product"`.
        valid (`torch.BoolTensor` of shape `(batch, candidates)`, *optional*): unmasked candidates; the attention
            received is averaged over unmasked queries and `"mean"` standardises over unmasked candidates, so a
            masked token does not change the others' scores.

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`, higher = more important.

    Raises:
        ValueError: for another `joint`.
    """
    if valid is None:
        received = attention[..., num_prefix_tokens:].mean(dim=(1, 2))  # as a key
    else:  # averaged over the unmasked queries only: a masked token's own row does not vote
        queries = torch.cat([valid.new_ones(valid.shape[0], num_prefix_tokens), valid], dim=1).to(attention.dtype)
        per_query = attention[..., num_prefix_tokens:].mean(dim=1)  # (batch, queries, candidates)
        received = (per_query * queries.unsqueeze(-1)).sum(dim=1) / queries.sum(dim=1, keepdim=True)
    row_entropy = renyi_entropy(attention[:, :, num_prefix_tokens:], 1.0, dim=-1).mean(dim=1)  # as a query
    if joint == "product":
        return received * torch.exp(-row_entropy)
    if joint == "mean":
        weight = torch.ones_like(received) if valid is None else valid.to(received.dtype)
        count = weight.sum(dim=1, keepdim=True)

        def standardised(x):  # over the valid candidates; unbiased standard deviation, as torch.std
            mean = (x * weight).sum(dim=1, keepdim=True) / count.clamp_min(1)
            var = ((x - mean).square() * weight).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)
            return (x - mean) / var.sqrt().clamp_min(1e-12)

        return (standardised(received) + standardised(-row_entropy)) / 2
    raise ValueError(f"joint must be 'mean' or 'product', got {joint!r}.")


def block_smooth(scores: torch.Tensor, patch_ids: torch.Tensor, grid: tuple[int, int], block: int) -> torch.Tensor:
    """Each candidate's score averaged with the scores of the candidates in its `block x block` neighbourhood of the
    2-D patch grid (BSPF-ViT's "block-based" judgement, reconstructed from the abstract of arXiv:2507.12125).

    Only tokens still present count: at the grid's border and next to removed patches the average is over fewer
    neighbours. A token with no grid position (patch id -1, e.g. a fused token) keeps its own score. `block=1`
    returns the scores unchanged.

    Args:
        scores (`torch.FloatTensor` of shape `(batch, candidates)`).
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): each candidate's patch in the row-major grid.
        grid (`(rows, cols)`): the patch grid.
        block (`int`): odd neighbourhood size, at most the smaller grid side.

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.

    Raises:
        ValueError: for an even block, or one larger than the grid.
    """
    rows, cols = grid
    if block % 2 == 0 or block < 1 or block > min(rows, cols):
        raise ValueError(
            f"the block size must be an odd number from 1 to the smaller side of the {rows}x{cols} patch grid, "
            f"got {block}."
        )
    if block == 1:
        return scores
    batch_size, cells = scores.shape[0], rows * cols
    placed = patch_ids >= 0
    index = patch_ids.where(placed, cells)  # tokens without a position go to a spare cell past the grid
    values = scores.new_zeros(batch_size, cells + 1).scatter(1, index, scores)[:, :cells]
    present = scores.new_zeros(batch_size, cells + 1).scatter(1, index, torch.ones_like(scores))[:, :cells]
    kernel = scores.new_ones(1, 1, block, block)

    def neighbourhood_sum(grid_values: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(grid_values.view(batch_size, 1, rows, cols), kernel, padding=block // 2).flatten(1)

    averaged = neighbourhood_sum(values) / neighbourhood_sum(present).clamp_min(1)
    return averaged.gather(1, index.clamp_max(cells - 1)).where(placed, scores)


def similarity_fusion(
    hidden_states: torch.Tensor,
    token_sizes: torch.Tensor,
    keys: torch.Tensor,
    kept: torch.Tensor,
    pruned: torch.Tensor,
    num_prefix_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each pruned token into its most similar kept token: size-weighted average, sizes summed.

    BSPF-ViT's "similarity fusion" (reconstructed from the abstract of arXiv:2507.12125), written as ToMe's merge
    (Bolya et al., ICLR 2023): cosine similarity of the keys averaged over heads; a kept token may absorb several;
    the caller feeds `log(size)` to later layers (proportional attention). Computed in float32, cast back.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
        token_sizes (`torch.FloatTensor` of shape `(batch, prefix + candidates)`).
        keys (`torch.Tensor` of shape `(batch, prefix + candidates, head_dim)`).
        kept (`torch.LongTensor` of shape `(batch, k)`), pruned (`(batch, p)`): candidate indices.
        num_prefix_tokens (`int`).

    Returns:
        `(hidden_states (batch, prefix + k, hidden), token_sizes (batch, prefix + k))`: prefix tokens unchanged, the
        kept tokens in the order of `kept`.
    """
    prefix = num_prefix_tokens
    metric = keys[:, prefix:].float()
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kept_metric = gather_tokens(metric, kept)
    pruned_metric = gather_tokens(metric, pruned)
    destination = (pruned_metric @ kept_metric.transpose(1, 2)).argmax(dim=-1)  # (batch, p): index into kept
    candidates = hidden_states[:, prefix:].float()
    sizes = token_sizes[:, prefix:]
    kept_sizes, pruned_sizes = sizes.gather(1, kept), sizes.gather(1, pruned)
    hidden_size = hidden_states.shape[-1]
    absorbed = gather_tokens(candidates, pruned) * pruned_sizes.unsqueeze(-1)
    summed = (gather_tokens(candidates, kept) * kept_sizes.unsqueeze(-1)).scatter_add(
        1, destination.unsqueeze(-1).expand(-1, -1, hidden_size), absorbed
    )
    new_sizes = kept_sizes.scatter_add(1, destination, pruned_sizes)
    merged = (summed / new_sizes.unsqueeze(-1)).to(hidden_states.dtype)
    return torch.cat([hidden_states[:, :prefix], merged], dim=1), torch.cat([token_sizes[:, :prefix], new_sizes], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


_PRUNING_FIELDS = (
    "pruning_method",
    "keep_rate",
    "prune_layers",
    "fuse_pruned",
    "fusion_temperature",
    "renyi_alpha",
    "tome_r",
    "entropy_axis",
    "bspf_block",
    "bspf_joint",
)


@dataclass
class PruningSettings:
    """The pruning fields of a config (`PrunedViTConfig`, or a stock config after `hf_vitprune.prune`).

    Attributes:
        pruning_method (`str` or `None`): a name in [`REDUCERS`], or `None` (pruning off: the stock model).
        keep_rate (`float` or `list[float]`): fraction of the candidate tokens each pruning layer keeps, in (0, 1];
            a list gives one rate per entry of `prune_layers`.
        prune_layers (`list[int]` or `None`): 0-indexed pruning layers, strictly increasing; `None` means
            [`default_prune_layers`] of the model's depth.
        fuse_pruned (`bool`): append one fused token made of the pruned ones (eq. 8 of arXiv:2507.19175).
        fusion_temperature (`float`): > 0, temperature of the fusion softmax.
        renyi_alpha (`float`): > 0, order of the Renyi entropy (1 = Shannon, inf = min-entropy) of `"entropy"`.
        tome_r (`int` or `list[int]`): tokens ToMe merges per layer, >= 0 (a list: one per layer).
        entropy_axis (`str`): which distribution `"entropy"` measures: `"query"` (the token's own attention row),
            `"key"` (the attention it receives) or `"heads"` (the class token's attention to it across heads).
        bspf_block (`int`): odd neighbourhood size on the patch grid over which `"bspf"` smooths the scores (1: none).
        bspf_joint (`str`): how `"bspf"` combines a token's key and query roles: `"mean"` or `"product"`.
    """

    pruning_method: str | None = "variance"
    keep_rate: Any = 0.7
    prune_layers: list[int] | None = None
    fuse_pruned: bool = True
    fusion_temperature: float = 0.1
    renyi_alpha: float = 1.0
    tome_r: Any = 8
    entropy_axis: str = "query"
    bspf_block: int = 3
    bspf_joint: str = "mean"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order: what `set_pruning` may change."""
        return _PRUNING_FIELDS  # spelled out (not dataclasses.fields): torch.compile traces this every forward pass

    @classmethod
    def from_config(cls, config) -> "PruningSettings":
        """The settings recorded on `config` (missing fields take their defaults)."""
        defaults = cls()
        return cls(**{name: getattr(config, name, getattr(defaults, name)) for name in cls.names()})

    def write_to(self, config) -> None:
        """Record these settings on `config`, one attribute per field (as `PrunedViTConfig` holds them)."""
        for name in self.names():
            setattr(config, name, getattr(self, name))

    def with_defaults(self, num_hidden_layers: int) -> "PruningSettings":
        """A copy with tuples turned into lists and `prune_layers=None` replaced by the default for this depth."""
        layers = self.prune_layers
        layers = default_prune_layers(num_hidden_layers) if layers is None else list(layers)
        keep_rate = list(self.keep_rate) if isinstance(self.keep_rate, tuple) else self.keep_rate
        tome_r = list(self.tome_r) if isinstance(self.tome_r, tuple) else self.tome_r
        return PruningSettings(
            self.pruning_method,
            keep_rate,
            layers,
            self.fuse_pruned,
            self.fusion_temperature,
            self.renyi_alpha,
            tome_r,
            self.entropy_axis,
            self.bspf_block,
            self.bspf_joint,
        )

    def validate(self, num_hidden_layers: int) -> None:
        """Check every field and how they fit together and with a model of `num_hidden_layers` layers.

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
        if self.bspf_joint not in ("mean", "product"):
            raise ValueError(f"bspf_joint must be 'mean' or 'product', got {self.bspf_joint!r}.")
        if self.entropy_axis not in ENTROPY_AXES:
            raise ValueError(
                f"entropy_axis={self.entropy_axis!r} is not known: use one of {list(ENTROPY_AXES)} (the token's own "
                "attention row, the attention it receives, or the class token's attention to it across heads)."
            )

    def reducer(self, num_prefix_tokens: int) -> "TokenReducer | None":
        """The reducer these settings describe (`None` when pruning is off)."""
        if self.pruning_method is None:
            return None
        return REDUCERS[self.pruning_method](self, num_prefix_tokens)


# ---------------------------------------------------------------------------------------------------------------------
# The per-forward state and the reducers
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
    """

    patch_ids: torch.Tensor
    token_sizes: torch.Tensor | None = None
    kept_patch_indices: tuple[torch.Tensor, ...] = ()
    key_mask: torch.Tensor | None = None
    layer_mask: Any = "model"
    grid: tuple[int, int] | None = None

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
        """ToMe's proportional attention: `log(token_sizes)` as an additive bias `(batch, 1, 1, tokens)`, or `None`."""
        if self.token_sizes is None:
            return None
        return self.token_sizes.log().to(dtype)[:, None, None, :]


def check_key_mask(mask: torch.Tensor, batch_size: int, num_tokens: int, num_prefix_tokens: int) -> torch.Tensor:
    """A `(batch, tokens)` attention mask as booleans (True = attended), checked.

    Raises:
        ValueError: naming the expected shape `(batch, tokens)` for a mask of another shape (a 4-D mask cannot follow
            the tokens through pruning), for values other than 0 / 1, or for a mask that masks every patch token of an
            image (nothing would be left to attend to).
    """
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch_size, num_tokens):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"attention_mask has shape {shape}; expected (batch, tokens) = ({batch_size}, {num_tokens}): one entry per "
            f"token ({num_prefix_tokens} prefix tokens, then the patches), 1 = attended, 0 = masked. A 4-D mask cannot "
            "follow the tokens through pruning."
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold 0 / 1 (or booleans): 1 = attended, 0 = masked.")
        mask = mask != 0
    empty = ~mask[:, num_prefix_tokens:].any(dim=1)
    if bool(empty.any()):
        image = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"attention_mask masks every patch token of image {image}: nothing would be left to attend to or to keep."
        )
    return mask


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


BIBTEX_IGAUE2025 = """@article{igaue2025patch,
  title   = {Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in Vision
             Transformers},
  author  = {Igaue, Yuki and Aizawa, Hiroaki},
  journal = {arXiv preprint arXiv:2507.19175},
  year    = {2025}
}"""
BIBTEX_IGAUE2026 = """@article{igaue2026renyi,
  title   = {R{\\'e}nyi Attention Entropy for Patch Pruning},
  author  = {Igaue, Yuki and Aizawa, Hiroaki},
  journal = {arXiv preprint arXiv:2604.03803},
  year    = {2026}
}"""
BIBTEX_EVIT = """@inproceedings{liang2022evit,
  title     = {Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations},
  author    = {Liang, Youwei and Ge, Chongjian and Tong, Zhan and Song, Yibing and Wang, Jue and Xie, Pengtao},
  booktitle = {International Conference on Learning Representations},
  year      = {2022}
}"""
BIBTEX_TOME = """@inproceedings{bolya2023tome,
  title     = {Token Merging: Your {ViT} But Faster},
  author    = {Bolya, Daniel and Fu, Cheng-Yang and Dai, Xiaoliang and Zhang, Peizhao and Feichtenhofer, Christoph and
               Hoffman, Judy},
  booktitle = {International Conference on Learning Representations},
  year      = {2023}
}"""
BIBTEX_BSPF = """@article{hsieh2025block,
  title   = {Block-based Symmetric Pruning and Fusion for Efficient Vision Transformers},
  author  = {Hsieh, Jun-Wei and Li, Xin and Hsieh, Yi-Kuan and others},
  journal = {arXiv preprint arXiv:2507.12125},
  year    = {2025}
}"""
"""BibTeX of each method's paper (the reducers' `bibtex`), for model cards."""


class TokenReducer:
    """A token-reduction method: which layers reduce, by how much, with which attention statistic, and how.

    Subclasses set `name` (the `pruning_method` string), `statistic` (one of [`CLASS_ATTENTION`], [`ATTENTION`],
    [`KEYS`] or `None`), `settings_used` (the [`PruningSettings`] fields the method reads, for labels and docs) and
    `source` / `bibtex` (the paper the method comes from, for model cards), and implement `amount` and `reduce`. They
    hold no model and no per-forward state: one instance is built from the settings at the start of each forward pass.

    Args:
        settings ([`PruningSettings`]): validated settings.
        num_prefix_tokens (`int`): leading tokens never reduced (class token, distillation token, registers).
    """

    name: ClassVar[str]
    statistic: ClassVar[str | None] = None
    settings_used: ClassVar[tuple[str, ...]] = ()
    source: ClassVar[str] = ""
    """One line: authors, venue / arXiv id, and whether we reconstructed the method from an abstract."""
    bibtex: ClassVar[str] = ""

    def __init__(self, settings: PruningSettings, num_prefix_tokens: int):
        self.settings = settings
        self.num_prefix_tokens = num_prefix_tokens

    def amount(self, layer_idx: int, num_candidates: int) -> int | None:
        """Tokens kept (or merged) at `layer_idx` when `num_candidates` non-prefix tokens enter it; `None` if the
        layer does not reduce."""
        raise NotImplementedError

    def needs_statistic(self, amount: int, num_candidates: int) -> bool:
        """Whether the layer must compute the statistic (not when nothing will be dropped)."""
        return self.statistic is not None

    def reduce(
        self, hidden_states: torch.Tensor, statistic: torch.Tensor | None, state: ReductionState, amount: int
    ) -> tuple[torch.Tensor, ReductionState]:
        """Reduce the tokens of `hidden_states` `(batch, prefix + candidates, hidden)` after a layer's attention
        residual; return the new hidden states and the new state (the given one is not changed)."""
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

    # Labels, read by the evaluation tables, the sweep, the model cards and the docs ---------------------------------

    @classmethod
    def label(cls, settings: PruningSettings) -> str:
        """The method's name in tables, e.g. `variance`, `entropy (α=2)`, `ToMe (r=8)`."""
        return cls.name

    @classmethod
    def short_name(cls, settings: PruningSettings, explicit: tuple[str, ...] = ()) -> str:
        """A compact label of one setting, e.g. `variance@0.7+fusion`; fields in `explicit` (set by the user rather
        than left at the model's value) are shown too, e.g. `+fusion(T=0.3)`."""
        return cls.name

    @classmethod
    def series(cls, settings: PruningSettings) -> str:
        """The line a setting belongs to in a trade-off plot (the setting's fixed part), e.g. `variance + fusion`."""
        return cls.label(settings)

    @classmethod
    def setting_text(cls, settings: PruningSettings) -> str:
        """The setting that moves along a trade-off line, e.g. `keep 0.7` or `r=8`."""
        return ""

    @classmethod
    def table_cells(cls, settings: PruningSettings, explicit: tuple[str, ...] = ()) -> tuple[str, str]:
        """The `keep rate` and `fusion` cells of a results table (`—` where the method has no such setting)."""
        return "—", "—"


class AttentionPruner(TokenReducer):
    """Pruning by a criterion: keep the `ceil(keep_rate * candidates)` best-scored candidates at each of
    `prune_layers`, optionally fusing the rest into one appended token (arXiv:2507.19175, sec. 3 and eq. 8).

    Subclasses implement `score`. A pruning layer whose keep rate keeps everything computes no statistic and reports
    every candidate as kept.
    """

    settings_used = ("keep_rate", "prune_layers", "fuse_pruned", "fusion_temperature")

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

    def reduce(self, hidden_states, statistic, state, amount):
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
            pruned.patch_ids, state.token_sizes, kept, pruned.key_mask, grid=state.grid
        )

    def _schedule_step(self, amount, num_candidates):
        return amount, int(self.settings.fuse_pruned and amount < num_candidates)

    @classmethod
    def short_name(cls, settings, explicit=()):
        fusion = ""
        if settings.fuse_pruned:
            shown = "fusion_temperature" in explicit
            fusion = f"+fusion(T={settings.fusion_temperature:g})" if shown else "+fusion"
        return f"{cls.name}@{_format_rate(settings.keep_rate)}{fusion}"

    @classmethod
    def series(cls, settings):
        return cls.label(settings) + (" + fusion" if settings.fuse_pruned else "")

    @classmethod
    def setting_text(cls, settings):
        return f"keep {_format_rate(settings.keep_rate)}"

    @classmethod
    def table_cells(cls, settings, explicit=()):
        fusion = "no"
        if settings.fuse_pruned:
            shown = "fusion_temperature" in explicit
            fusion = f"yes (T={settings.fusion_temperature:g})" if shown else "yes"
        return _format_rate(settings.keep_rate), fusion


def _format_rate(rate) -> str:
    return "/".join(f"{r:g}" for r in rate) if isinstance(rate, list) else f"{rate:g}"


class EViTPruner(AttentionPruner):
    """EViT: keep the tokens the class token attends to most, averaged over heads (Liang et al., ICLR 2022; eq. 5 of
    arXiv:2507.19175). Statistic: [`CLASS_ATTENTION`]."""

    name = "evit"
    source = "EViT: Liang et al., ICLR 2022 (arXiv:2202.07800)"
    bibtex = BIBTEX_EVIT
    statistic = CLASS_ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        return evit_scores(statistic)


class VariancePruner(AttentionPruner):
    """Keep the tokens whose class attention varies most across heads (eq. 6 of arXiv:2507.19175).
    Statistic: [`CLASS_ATTENTION`]."""

    name = "variance"
    source = "Igaue & Aizawa, arXiv:2507.19175 (2025)"
    bibtex = BIBTEX_IGAUE2025
    statistic = CLASS_ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        return variance_scores(statistic)


class MedADPruner(AttentionPruner):
    """Keep the tokens whose class attention has the largest median absolute deviation across heads (eq. 7 of
    arXiv:2507.19175). Statistic: [`CLASS_ATTENTION`]."""

    name = "medad"
    source = "Igaue & Aizawa, arXiv:2507.19175 (2025)"
    bibtex = BIBTEX_IGAUE2025
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
    source = "Igaue & Aizawa, arXiv:2604.03803 (2026), reconstructed from the abstract by hf_vitprune"
    bibtex = BIBTEX_IGAUE2026
    statistic = ATTENTION
    settings_used = AttentionPruner.settings_used + ("renyi_alpha", "entropy_axis")

    def __init__(self, settings: PruningSettings, num_prefix_tokens: int):
        super().__init__(settings, num_prefix_tokens)
        self.statistic = CLASS_ATTENTION if settings.entropy_axis == "heads" else ATTENTION

    def score(self, statistic, batch_size, num_candidates, device):
        alpha, axis = self.settings.renyi_alpha, self.settings.entropy_axis
        if axis == "heads":
            return head_entropy_scores(statistic, alpha)
        if axis == "key":
            return key_entropy_scores(statistic, self.num_prefix_tokens, alpha)
        return entropy_scores(statistic[:, :, self.num_prefix_tokens :], alpha)

    @classmethod
    def label(cls, settings):
        axis = "" if settings.entropy_axis == "query" else f", {settings.entropy_axis}"
        return f"entropy (α={settings.renyi_alpha:g}{axis})"

    @classmethod
    def short_name(cls, settings, explicit=()):
        axis = "" if settings.entropy_axis == "query" else f",{settings.entropy_axis}"
        return (
            super().short_name(settings, explicit).replace("entropy", f"entropy(a={settings.renyi_alpha:g}{axis})", 1)
        )


class RandomPruner(AttentionPruner):
    """Keep uniformly random tokens (torch's global generator): the floor every criterion must beat. No statistic."""

    name = "random"
    source = "the random-pruning baseline of Igaue & Aizawa, arXiv:2507.19175 (2025)"
    bibtex = BIBTEX_IGAUE2025
    statistic = None

    def score(self, statistic, batch_size, num_candidates, device):
        return random_scores(batch_size, num_candidates, device)


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
    source = "BSPF-ViT: Hsieh et al., arXiv:2507.12125 (2025), reconstructed from the abstract by hf_vitprune"
    bibtex = BIBTEX_BSPF
    statistic = ATTENTION_AND_KEYS
    settings_used = ("keep_rate", "prune_layers", "bspf_block", "bspf_joint")

    def reduce(self, hidden_states, statistic, state, amount):
        prefix = self.num_prefix_tokens
        num_candidates = hidden_states.shape[1] - prefix
        if amount >= num_candidates:
            return super().reduce(hidden_states, statistic, state, amount)
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
        hidden_states, sizes = similarity_fusion(hidden_states, sizes, keys, kept, pruned, prefix)
        if valid is not None:
            sizes = sizes.clamp_min(torch.finfo(sizes.dtype).tiny)  # a kept masked token weighs (almost) nothing
        patch_ids = state.patch_ids.gather(1, kept)
        key_mask = None
        if valid is not None:
            key_mask = torch.cat([state.key_mask[:, :prefix], valid.gather(1, kept)], dim=1)
        record = (*state.kept_patch_indices, patch_ids)
        return hidden_states, ReductionState(patch_ids, sizes, record, key_mask, grid=state.grid)

    def _schedule_step(self, amount, num_candidates):
        return amount, 0

    @classmethod
    def label(cls, settings):
        return f"BSPF (block {settings.bspf_block}, {settings.bspf_joint})"

    @classmethod
    def short_name(cls, settings, explicit=()):
        return f"bspf(b={settings.bspf_block},{settings.bspf_joint})@{_format_rate(settings.keep_rate)}"

    @classmethod
    def series(cls, settings):
        return cls.label(settings)

    @classmethod
    def table_cells(cls, settings, explicit=()):
        return _format_rate(settings.keep_rate), "similarity"


class ToMeMerger(TokenReducer):
    """ToMe: every layer merges `tome_r` tokens into their most similar ones (bipartite soft matching on the keys,
    size-weighted averages, proportional attention). Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023.
    `keep_rate`, `prune_layers`, `fuse_pruned` and `fusion_temperature` are not used. Statistic: [`KEYS`]."""

    name = "tome"
    source = "ToMe: Bolya et al., ICLR 2023 (arXiv:2210.09461)"
    bibtex = BIBTEX_TOME
    statistic = KEYS
    settings_used = ("tome_r",)

    def amount(self, layer_idx, num_candidates):
        r = self.settings.tome_r
        r = r[layer_idx] if isinstance(r, list) else r
        merges = min(r, tome_merge_limit(num_candidates, self.num_prefix_tokens))
        return merges if merges > 0 else None

    def reduce(self, hidden_states, statistic, state, amount):
        sizes = state.token_sizes
        if sizes is None:
            sizes = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.float32)
        merged = merge_tokens(
            hidden_states, sizes, statistic, amount, self.num_prefix_tokens, state.patch_ids, state.key_mask
        )
        kept = (*state.kept_patch_indices, merged.patch_ids)
        return merged.hidden_states, ReductionState(
            merged.patch_ids, merged.token_sizes, kept, merged.key_mask, grid=state.grid
        )

    def _schedule_step(self, amount, num_candidates):
        return num_candidates - amount, 0

    @classmethod
    def label(cls, settings):
        return f"ToMe (r={_format_rate(settings.tome_r)})"

    @classmethod
    def short_name(cls, settings, explicit=()):
        return f"tome(r={_format_rate(settings.tome_r)})"

    @classmethod
    def series(cls, settings):
        return "ToMe"

    @classmethod
    def setting_text(cls, settings):
        return f"r={_format_rate(settings.tome_r)}"


REDUCERS: dict[str, type[TokenReducer]] = {
    "variance": VariancePruner,
    "medad": MedADPruner,
    "evit": EViTPruner,
    "entropy": EntropyPruner,
    "random": RandomPruner,
    "tome": ToMeMerger,
    "bspf": BSPFPruner,
}
"""Every token-reduction method by its `pruning_method` name. Config validation, the command line's choices, the
sweep and the docs read this registry: a new method is one `TokenReducer` subclass plus one line here."""


def reducer_from_config(config, num_prefix_tokens: int) -> TokenReducer | None:
    """The reducer that the pruning fields recorded on `config` describe (`None` when `pruning_method` is `None` or
    absent). Fields not on `config` take their [`PruningSettings`] defaults."""
    if getattr(config, "pruning_method", None) is None:
        return None
    settings = PruningSettings.from_config(config).with_defaults(config.num_hidden_layers)
    return settings.reducer(num_prefix_tokens)


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

    Raises:
        ValueError: with `key_mask` but no `mask_builder`.
    """

    def __init__(
        self,
        reducer: TokenReducer,
        num_prefix_tokens: int,
        state: ReductionState | None = None,
        key_mask: torch.Tensor | None = None,
        mask_builder=None,
        grid: tuple[int, int] | None = None,
    ):
        if key_mask is not None and mask_builder is None:
            raise ValueError("a TokenReduction with a key_mask needs the mask_builder that rebuilds the layers' mask.")
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
        return None if reducer is None else cls(reducer, num_prefix_tokens, None, key_mask, mask_builder, grid)

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
            hidden_states, state = self.reducer.reduce(hidden_states, statistic, entering, plan.amount)
            if state.patch_ids is not entering.patch_ids:  # the tokens changed: the model's mask no longer fits
                # without a key mask nothing is masked (a mask the model built anyway, e.g. while exporting, held
                # only "attend"); with one, the mask is rebuilt for the tokens left
                state.layer_mask = None if state.key_mask is None else self.mask_builder(hidden_states, state.key_mask)
        if plan.layer_idx not in self._leaving:  # a recomputation must not move the pass's end state back
            self._leaving[plan.layer_idx] = state
            self._current = state
        return hidden_states

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
        **changes: [`PruningSettings`] fields.

    Returns:
        `dict` of the changed fields' previous values (what restores them).

    Raises:
        ValueError: for an unknown field or a value [`PruningSettings.validate`] rejects.
    """
    unknown = sorted(set(changes) - set(PruningSettings.names()))
    if unknown:
        raise ValueError(f"unknown pruning field(s) {unknown}; allowed: {list(PruningSettings.names())}.")
    depth = num_hidden_layers if num_hidden_layers is not None else config.num_hidden_layers
    settings = replace(PruningSettings.from_config(config), **changes).with_defaults(depth)
    settings.validate(depth)
    old = {name: getattr(config, name, getattr(PruningSettings(), name)) for name in changes}
    for name in changes:
        setattr(config, name, getattr(settings, name))
    if getattr(config, "prune_layers", None) is None:
        config.prune_layers = settings.prune_layers
    return old


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
    "ATTENTION",
    "ATTENTION_AND_KEYS",
    "BSPFPruner",
    "CLASS_ATTENTION",
    "KEYS",
    "REDUCERS",
    "AttentionPruner",
    "EViTPruner",
    "EntropyPruner",
    "LayerPlan",
    "MedADPruner",
    "PruningSettings",
    "RandomPruner",
    "MergedTokens",
    "PrunedTokens",
    "ReductionState",
    "ToMeMerger",
    "TokenReducer",
    "TokenReduction",
    "VariancePruner",
    "attention_with_statistic",
    "block_smooth",
    "joint_importance",
    "similarity_fusion",
    "check_key_mask",
    "class_attention_row",
    "default_prune_layers",
    "ENTROPY_AXES",
    "entropy_scores",
    "evit_scores",
    "head_entropy_scores",
    "key_entropy_scores",
    "exact_keep_count",
    "fusion_weights",
    "gather_tokens",
    "medad_scores",
    "merge_tokens",
    "prune_tokens",
    "random_scores",
    "reducer_from_config",
    "renyi_entropy",
    "temporary_pruning",
    "tome_merge_limit",
    "true_median",
    "update_pruning",
    "variance_scores",
]
