# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""Token merging's tensor operations: ToMe's bipartite soft matching and PiToMe's energy-protected merging.

Pure functions of tensors, with no model, config or per-forward state, as ToMe's own `merge.py`: each is tested
against hand-computed values and the official code it mirrors (tests/test_tome.py, tests/test_pitome.py).
[`token_reduction`] builds the merging methods from them.

Sources: ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023); PiToMe (Tran et al., "Accelerating
Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024).

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch and its
sibling `token_ops.py`.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

from .token_ops import gather_tokens, is_number


def tome_merge_limit(num_candidates: int, num_prefix_tokens: int) -> int:
    """Most tokens ToMe can merge in one layer: the size of the bipartite side "A" among `num_candidates` tokens.

    The non-prefix tokens alternate between sides A and B by their position in the sequence (position `p` is in A
    when `p` is even, as in ToMe, where the class token at position 0 is the protected first member of A); each A
    token can merge into B, so at most `|A|` merges happen. Source: Bolya et al., ICLR 2023, sec. 3.
    """
    first_a = num_prefix_tokens % 2  # candidate index c sits at position c + num_prefix_tokens
    size_a = max(num_candidates - first_a + 1, 0) // 2
    return size_a if num_candidates - size_a > 0 else 0  # B must not be empty


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
    destination: torch.Tensor
    """`(batch, candidates)`: for each entering candidate, the index among the new candidates of the token that now
    carries it (its own, or the B token it was merged into)."""


def _masked_links(similarity: torch.Tensor, valid_a: torch.Tensor, valid_b: torch.Tensor) -> torch.Tensor:
    """Bipartite link scores `(batch, |A|, |B|)` under a key mask (`valid_a (batch, |A|)`, `valid_b (batch, |B|)`,
    True = unmasked): a link between a masked and an unmasked token is impossible (-inf), one between two masked tokens
    ranks after every real link (cosine similarities lie in [-1, 1], so minus 4 puts it below them). Our rule, shared
    by ToMe and PiToMe."""
    valid_a, valid_b = valid_a[:, :, None], valid_b[:, None, :]
    similarity = similarity.where(valid_a | valid_b, similarity - 4)
    return similarity.masked_fill(valid_a != valid_b, float("-inf"))


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
        [`MergedTokens`]: `(hidden_states, token_sizes, patch_ids, key_mask, destination)` with `candidates - r`
        candidates.
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
        unchanged = torch.arange(candidates.shape[1], device=hidden_states.device).expand(batch_size, -1)
        return MergedTokens(hidden_states, token_sizes, patch_ids, key_mask, unchanged)

    similarity = metric[:, side_a] @ metric[:, side_b].transpose(1, 2)  # (batch, |A|, |B|)
    if key_mask is not None:
        valid = key_mask[:, num_prefix_tokens:]
        similarity = _masked_links(similarity, valid[:, side_a], valid[:, side_b])
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
    # where each candidate went: unmerged A tokens lead (in order), the B tokens follow, merged A tokens in their B
    num_a, num_b, num_unmerged = sizes_a.shape[1], sizes_b.shape[1], unmerged_a.shape[1]
    index = torch.arange(num_a + num_b, device=hidden_states.device).expand(batch_size, -1)
    destination_a = torch.zeros_like(index[:, :num_a]).scatter(1, unmerged_a, index[:, :num_unmerged])
    destination_a = destination_a.scatter(1, merged_a, num_unmerged + destination)
    positions_a, positions_b = first_a + 2 * index[:, :num_a], 1 - first_a + 2 * index[:, :num_b]
    moved = torch.zeros_like(index).scatter(1, positions_a, destination_a)
    moved = moved.scatter(1, positions_b, num_unmerged + index[:, :num_b])
    return MergedTokens(hidden_states, token_sizes, patch_ids, key_mask, moved)


# ---------------------------------------------------------------------------------------------------------------------
# PiToMe: energy-protected token merging
# ---------------------------------------------------------------------------------------------------------------------

PITOME_MATCHINGS = ("bipartite", "energy")
"""The two ways PiToMe pairs tokens (`pitome_merge(matching=...)`), as the official code's `pitome_bsm` and `pitome`."""


def pitome_merge_count(keep_rate: float, num_candidates: int) -> int:
    """Tokens one PiToMe layer merges away: `floor(T - T * keep_rate)` for `T = num_candidates`, computed in float as
    the official code does (`math.floor(T - T*ratio)` in `algo/pitome/merge.py`), so the token counts are the
    official ones (`T=100, keep_rate=0.55` merges 44, where `T - ceil(0.55 T)` is 45).

    Args:
        keep_rate (`float`): PiToMe's `ratio`, the fraction of tokens each layer keeps, in [0.5, 1].
        num_candidates (`int`): non-prefix tokens entering the layer, >= 0.

    Returns:
        `int` in [0, num_candidates // 2]; 0 for `keep_rate` 1.

    Raises:
        ValueError: for a keep rate outside [0.5, 1] (each merged token needs a token to merge into).
    """
    if not is_number(keep_rate) or not 0.5 <= keep_rate <= 1:
        raise ValueError(
            f"PiToMe's keep_rate must lie in [0.5, 1] (a layer merges at most half of its tokens), got {keep_rate!r}."
        )
    if keep_rate >= 1:
        return 0
    return max(0, min(math.floor(num_candidates - num_candidates * keep_rate), num_candidates // 2))


def pitome_energy(
    similarity: torch.Tensor, margin: float, alpha: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """PiToMe's energy score of each token: the mean over tokens `j` of `elu(cos(k_i, k_j) - margin, alpha)`.

    Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024, eq. 4, as the
    official code computes it (`pitome_vision` in `algo/pitome/merge.py`: `F.elu(sim - margin, alpha).mean(-1)`,
    self-similarity included). A high energy means many similar tokens (redundant: merged first); a low one an
    isolated, informative token (protected).

    Args:
        similarity (`torch.Tensor` of shape `(batch, T, T)`): cosine similarity of the tokens' keys.
        margin (`float`): similarities above it count linearly, below it through `alpha * (exp(x) - 1)`.
        alpha (`float`): the ELU's `alpha`.
        valid (`torch.BoolTensor` of shape `(batch, T)`, *optional*): unmasked tokens; the mean then runs over them
            only and a masked token's energy is `-inf` (ranked last).

    Returns:
        `torch.Tensor` of shape `(batch, T)`, in `similarity`'s dtype.
    """
    energy = nn.functional.elu(similarity - margin, alpha=alpha)
    if valid is None:
        return energy.mean(dim=-1)
    weight = valid[:, None, :].to(energy.dtype)
    energy = (energy * weight).sum(dim=-1) / weight.sum(dim=-1).clamp_min(1)
    return energy.masked_fill(~valid, float("-inf"))


def pitome_merge(
    hidden_states: torch.Tensor,
    token_sizes: torch.Tensor,
    keys: torch.Tensor,
    num_merge: int,
    num_prefix_tokens: int,
    patch_ids: torch.Tensor,
    margin: float,
    alpha: float = 1.0,
    matching: str = "energy",
    key_mask: torch.Tensor | None = None,
) -> MergedTokens:
    """PiToMe: merge `num_merge` tokens, protecting the informative (low-energy) ones.

    Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024 (sec. 3), written
    from the official code (github.com/hchautran/PiToMe, `algo/pitome/merge.py`: `pitome_vision`, `pitome`,
    `pitome_bsm`, `merge_wavg`) and equal to it (benchmarks/pitome_reference.py). The candidates' keys (averaged over
    heads) are L2-normalised; their cosine similarities give each token an energy ([`pitome_energy`]); the tokens are
    ordered by decreasing energy and then

    - `matching="energy"` (official `pitome`): the `2 r` highest-energy tokens alternate between sides A and B (in that
      order); every A token merges into its most similar B token; the other tokens are protected. Output: prefix,
      protected tokens (by decreasing energy), B tokens.
    - `matching="bipartite"` (official `pitome_bsm`): all tokens alternate between A and B in energy order; the `r` A
      tokens with the most similar B token merge into it (ToMe's soft matching). Output: prefix, unmerged A tokens (by
      decreasing link similarity), B tokens.

    Merges are size-weighted averages (`merge_wavg`: `sum(size * x) / sum(size)`), sizes are summed. The official
    DeiT patch uses `"bipartite"` in the first `ceil(layers / 2)` layers and `"energy"` in the others. Prefix tokens
    never merge. Computed in float32, cast back.

    With a `key_mask`, masked tokens never merge with unmasked ones: their energy is `-inf` (protected in `"energy"`,
    last in `"bipartite"`), unmasked tokens' energies average over unmasked tokens only, links between a masked and an
    unmasked token are impossible and links between two masked tokens rank after every other link.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + T, hidden)`).
        token_sizes (`torch.FloatTensor` of shape `(batch, prefix + T)`): patches per token (1 at first).
        keys (`torch.Tensor` of shape `(batch, prefix + T, head_dim)`): keys averaged over heads.
        num_merge (`int`): `r`, in [1, T // 2] ([`pitome_merge_count`]).
        num_prefix_tokens (`int`).
        patch_ids (`torch.LongTensor` of shape `(batch, T)`).
        margin (`float`), alpha (`float`): of [`pitome_energy`].
        matching (`str`): `"energy"` or `"bipartite"`.
        key_mask (`torch.BoolTensor` of shape `(batch, prefix + T)`, *optional*): True = attended.

    Returns:
        [`MergedTokens`] with `T - r` candidates (a merged B token keeps its patch id).

    Raises:
        ValueError: for another `matching`, or `num_merge` outside [1, T // 2].
    """
    if matching not in PITOME_MATCHINGS:
        raise ValueError(f"matching must be one of {list(PITOME_MATCHINGS)}, got {matching!r}.")
    batch_size, num_tokens, hidden_size = hidden_states.shape
    prefix, num_candidates = num_prefix_tokens, num_tokens - num_prefix_tokens
    r = num_merge
    if not 1 <= r <= num_candidates // 2:
        raise ValueError(f"num_merge must lie in [1, {num_candidates // 2}] for {num_candidates} tokens, got {r}.")
    metric = nn.functional.normalize(keys[:, prefix:].float(), p=2, dim=-1)
    similarity = metric @ metric.transpose(-1, -2)  # (batch, T, T)
    valid = None if key_mask is None else key_mask[:, prefix:]
    order = torch.argsort(pitome_energy(similarity, margin, alpha, valid), dim=-1, descending=True)

    if matching == "energy":
        side_a, side_b = order[:, : 2 * r : 2], order[:, 1 : 2 * r : 2]
        kept = order[:, 2 * r :]  # protected
    else:
        side_a, side_b = order[:, ::2], order[:, 1::2]
    links = similarity.gather(-1, side_b.unsqueeze(-2).expand(-1, num_candidates, -1))
    links = links.gather(-2, side_a.unsqueeze(-1).expand(-1, -1, side_b.shape[1]))  # (batch, |A|, |B|)
    if valid is not None:
        links = _masked_links(links, valid.gather(1, side_a), valid.gather(1, side_b))
    best, best_b = links.max(dim=-1)
    if matching == "energy":
        merged_a, into = torch.arange(r, device=order.device).expand(batch_size, -1), best_b
    else:
        ranked = best.argsort(dim=-1, descending=True)
        merged_a, unmerged_a = ranked[:, :r], ranked[:, r:]
        into = best_b.gather(1, merged_a)
        kept = side_a.gather(1, unmerged_a)

    candidates = hidden_states[:, prefix:].float()
    sizes = token_sizes[:, prefix:].float()
    weighted = candidates * sizes.unsqueeze(-1)  # merge_wavg: merge(x * size, "sum") / merge(size, "sum")
    source = gather_tokens(weighted, side_a.gather(1, merged_a))
    index = into.unsqueeze(-1).expand(-1, -1, hidden_size)
    summed_b = gather_tokens(weighted, side_b).scatter_reduce(1, index, source, reduce="sum")
    sizes_b = sizes.gather(1, side_b).scatter_reduce(1, into, sizes.gather(1, side_a.gather(1, merged_a)), "sum")
    new_sizes = torch.cat([sizes.gather(1, kept), sizes_b], dim=1)
    merged = torch.cat([gather_tokens(weighted, kept), summed_b], dim=1) / new_sizes.unsqueeze(-1)
    hidden_states = torch.cat([hidden_states[:, :prefix], merged.to(hidden_states.dtype)], dim=1)
    token_sizes = torch.cat([token_sizes[:, :prefix], new_sizes.to(token_sizes.dtype)], dim=1)
    new_patch_ids = torch.cat([patch_ids.gather(1, kept), patch_ids.gather(1, side_b)], dim=1)
    if key_mask is not None:
        key_mask = torch.cat([key_mask[:, :prefix], valid.gather(1, kept), valid.gather(1, side_b)], dim=1)
    # where each candidate went: the kept tokens lead (in their order), then the B tokens; a merged A token to its B
    num_kept = kept.shape[1]
    position = torch.arange(num_candidates, device=order.device).expand(batch_size, -1)
    moved = torch.zeros_like(position).scatter(1, kept, position[:, :num_kept])
    moved = moved.scatter(1, side_b, num_kept + position[:, : side_b.shape[1]])
    moved = moved.scatter(1, side_a.gather(1, merged_a), num_kept + into)
    return MergedTokens(hidden_states, token_sizes, new_patch_ids, key_mask, moved)


__all__ = [
    "PITOME_MATCHINGS",
    "MergedTokens",
    "merge_tokens",
    "pitome_energy",
    "pitome_merge",
    "pitome_merge_count",
    "tome_merge_limit",
]
