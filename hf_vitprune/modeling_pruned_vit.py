# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
# Built on transformers' `modeling_vit.py` / `modeling_deit.py` (Copyright Google AI, Ross Wightman, The HuggingFace
# Inc. team, Apache License 2.0), whose structure and style it follows.
"""PyTorch PrunedViT: ViT / DeiT with attention-statistics patch pruning and fusion.

Method: Igaue & Aizawa, "Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in
Vision Transformers", arXiv:2507.19175 (2025): at the pruning layers each non-prefix token is scored by how diverse
the class token's attention to it is across heads (variance, eq. 6, or median absolute deviation, eq. 7), the best
`keep_rate` fraction is kept, and the rest are fused into one extra token (eq. 8).

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch,
transformers and its sibling `configuration_pruned_vit.py`.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.deit.modeling_deit import DeiTEmbeddings
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTLayer,
    ViTPooler,
    ViTPreTrainedModel,
    eager_attention_forward,
)
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_pruned_vit import (
    PRUNING_FIELDS,
    PrunedDeiTConfig,
    PrunedViTConfig,
    exact_keep_count,
    tome_merge_limit,
)

logger = logging.get_logger(__name__)

# Hub ViT/DeiT checkpoints use the 4.x weight names (`encoder.layer.N.attention.attention.query`); transformers renames
# them on load only for its own classes. Registering the ViT renaming for our backbone classes makes
# `PrunedViTForImageClassification.from_pretrained("facebook/deit-small-patch16-224")` load every weight (and saving
# writes the same legacy names back). `overwrite=True`: this file is imported twice when loaded as remote code.
for _backbone in ("PrunedViTModel", "PrunedDeiTModel"):
    register_checkpoint_conversion_mapping(_backbone, get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


# ---------------------------------------------------------------------------------------------------------------------
# Criteria: one importance score per candidate token, higher = more important (kept).
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
    """Renyi entropy of order `alpha` (in nats) of the distributions along `dim`.

    `H_alpha(p) = log(sum_i p_i^alpha) / (1 - alpha)`; at `alpha == 1` its limit, the Shannon entropy
    `-sum_i p_i log p_i` (with `0 log 0 = 0`).

    Args:
        probabilities (`torch.FloatTensor`): non-negative, summing to 1 along `dim`.
        alpha (`float`): order, > 0.
        dim (`int`): the distribution's dimension.

    Returns:
        `torch.FloatTensor` with `dim` reduced.

    Raises:
        ValueError: if `alpha <= 0`.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 for the Renyi entropy, got {alpha}.")
    if alpha == 1:
        return -torch.special.xlogy(probabilities, probabilities).sum(dim=dim)
    return probabilities.pow(alpha).sum(dim=dim).log() / (1 - alpha)


def entropy_scores(token_attention: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Minus the Renyi entropy of each token's own attention distribution, averaged over heads.

    A token whose attention is concentrated (low entropy) is more important. Source: Igaue & Aizawa, "Renyi Attention
    Entropy for Patch Pruning" (2026); `alpha == 1` is the Shannon-entropy criterion of the same authors.

    Args:
        token_attention (`torch.FloatTensor` of shape `(batch, heads, candidates, tokens)`): each candidate token's
            softmax attention over all tokens.
        alpha (`float`): Renyi order, > 0 (1 = Shannon).

    Returns:
        `torch.FloatTensor` of shape `(batch, candidates)`.
    """
    return -renyi_entropy(token_attention, alpha, dim=-1).mean(dim=1)


def random_scores(batch_size: int, num_candidates: int, device: torch.device | str) -> torch.Tensor:
    """Uniform random scores in [0, 1): the sanity floor every criterion must beat.

    Drawn from torch's global generator (seed it with `torch.manual_seed` for repeatable runs). Under gradient
    checkpointing the recomputation replays the same draws (torch preserves the RNG state).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_candidates)`.
    """
    return torch.rand(batch_size, num_candidates, device=device)


def class_attention_row(
    query_states: torch.Tensor, key_states: torch.Tensor, scaling: float, num_prefix_tokens: int
) -> torch.Tensor:
    """The class token's attention to the candidate tokens, per head: `softmax(q_cls k^T * scaling)` in float32.

    Computed beside SDPA (which does not return attention weights) at about 1/N of the cost of the full attention
    matrix; it equals row 0 of eager attention's weights (before dropout).

    Args:
        query_states (`torch.Tensor` of shape `(batch, heads, tokens, head_dim)`).
        key_states (`torch.Tensor` of shape `(batch, heads, tokens, head_dim)`).
        scaling (`float`): `head_dim ** -0.5`.
        num_prefix_tokens (`int`): leading tokens that are not candidates (their columns are dropped after the
            softmax, which runs over all tokens).

    Returns:
        `torch.FloatTensor` of shape `(batch, heads, tokens - num_prefix_tokens)`.
    """
    class_scores = torch.matmul(query_states[:, :, :1].float(), key_states.float().transpose(2, 3)) * scaling
    return class_scores.softmax(dim=-1)[:, :, 0, num_prefix_tokens:]


# What each criterion needs from the attention: "class" = the class token's attention row `(batch, heads, candidates)`,
# "full" = every candidate's own attention row `(batch, heads, candidates, tokens)`, None = nothing.
CRITERION_STATISTIC = {
    "evit": "class",
    "variance": "class",
    "medad": "class",
    "entropy": "full",
    "random": None,
    "tome": "keys",
}
_CLASS_ATTENTION_CRITERIA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "evit": evit_scores,
    "variance": variance_scores,
    "medad": medad_scores,
}


def score_tokens(
    method: str, statistic: torch.Tensor | None, num_candidates: int, batch_size: int, device, renyi_alpha: float = 1.0
) -> torch.Tensor:
    """Score every candidate token with criterion `method` (higher = more important).

    Args:
        method (`str`): one of `"variance"`, `"medad"`, `"evit"`, `"entropy"`, `"random"`.
        statistic (`torch.FloatTensor` or `None`): what `CRITERION_STATISTIC[method]` names.
        num_candidates (`int`), batch_size (`int`), device: for `"random"`.
        renyi_alpha (`float`): order for `"entropy"`.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_candidates)`.

    Raises:
        ValueError: for an unknown method.
    """
    if method in _CLASS_ATTENTION_CRITERIA:
        return _CLASS_ATTENTION_CRITERIA[method](statistic)
    if method == "entropy":
        return entropy_scores(statistic, renyi_alpha)
    if method == "random":
        return random_scores(batch_size, num_candidates, device)
    raise ValueError(f"Unknown pruning method {method!r}; known: {sorted(CRITERION_STATISTIC)}.")


# ---------------------------------------------------------------------------------------------------------------------
# Selection and fusion
# ---------------------------------------------------------------------------------------------------------------------


def prune_tokens(
    hidden_states: torch.Tensor,
    scores: torch.Tensor,
    num_keep: int,
    num_prefix_tokens: int,
    patch_ids: torch.Tensor,
    fuse: bool = True,
    fusion_temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the `num_keep` best-scored candidate tokens and optionally fuse the rest into one appended token.

    Prefix tokens (class, distillation) are never candidates and stay first. Kept tokens follow in descending order of
    score. With `fuse`, one token is appended: `sum_j w_j x_j` over the pruned tokens `j`, with
    `w = softmax(s_j / (sigma * fusion_temperature))` and `sigma` the standard deviation of the scores over all of the
    image's candidates (eq. 8 of arXiv:2507.19175). Raw criterion values are tiny (~1e-5 for the variance of attention
    probabilities), so dividing by `sigma` makes the weights independent of the criterion's scale; as softmax ignores
    shifts this is the same as z-scoring the scores per image. Equal scores (`sigma == 0`) give a plain mean.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
        scores (`torch.FloatTensor` of shape `(batch, candidates)`): criterion values, higher = more important.
        num_keep (`int`): candidates to keep, in [1, candidates].
        num_prefix_tokens (`int`): leading tokens that are never pruned.
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): index in the original patch grid of each
            candidate token, -1 for a fused token.
        fuse (`bool`): append the fused token (only when something is pruned).
        fusion_temperature (`float`): > 0.

    Returns:
        `(hidden_states, patch_ids, kept_patch_ids)`: the new hidden states of shape
        `(batch, prefix + num_keep [+ 1], hidden)`, the new candidates' patch ids `(batch, num_keep [+ 1])` (the fused
        token is -1) and the kept candidates' patch ids `(batch, num_keep)`.

    Raises:
        ValueError: if `num_keep` is outside [1, candidates].
    """
    batch_size = hidden_states.shape[0]
    num_candidates = scores.shape[1]
    if not 1 <= num_keep <= num_candidates:
        raise ValueError(f"num_keep must lie in [1, {num_candidates}], got {num_keep}.")
    order = scores.argsort(dim=1, descending=True)
    kept = order[:, :num_keep]
    prefix = torch.arange(num_prefix_tokens, device=order.device).expand(batch_size, -1)
    output = gather_tokens(hidden_states, torch.cat([prefix, kept + num_prefix_tokens], dim=1))
    kept_patch_ids = patch_ids.gather(1, kept)
    if not (fuse and num_keep < num_candidates):
        return output, kept_patch_ids, kept_patch_ids
    pruned = order[:, num_keep:]
    centered = scores - scores.mean(dim=1, keepdim=True)
    spread = centered.square().mean(dim=1, keepdim=True).sqrt().clamp_min(torch.finfo(scores.dtype).tiny)
    weights = (scores.gather(1, pruned) / (spread * fusion_temperature)).softmax(dim=1).to(hidden_states.dtype)
    fused = torch.bmm(weights.unsqueeze(1), gather_tokens(hidden_states, pruned + num_prefix_tokens))
    new_patch_ids = torch.cat([kept_patch_ids, kept_patch_ids.new_full((batch_size, 1), -1)], dim=1)
    return torch.cat([output, fused], dim=1), new_patch_ids, kept_patch_ids


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


def merge_tokens(
    hidden_states: torch.Tensor,
    token_sizes: torch.Tensor,
    keys: torch.Tensor,
    num_merge: int,
    num_prefix_tokens: int,
    patch_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching: merge `num_merge` tokens into their most similar tokens.

    Written from Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023 (sec. 3): the non-prefix tokens
    alternate between sides A and B by sequence position (even positions are A, as in ToMe where the protected class
    token opens A); each A token is linked to its most similar B token by the cosine similarity of the keys averaged
    over heads; the `num_merge` A tokens with the most similar links are merged into their B tokens by size-weighted
    average (a B token may absorb several). Prefix tokens never merge and never absorb. Unmerged A tokens keep their
    order, followed by the B tokens. Sizes (how many patches a token stands for) are summed; the caller feeds
    `log(size)` to the next layers' attention (proportional attention). Computed in float32, cast back.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, prefix + candidates, hidden)`).
        token_sizes (`torch.FloatTensor` of shape `(batch, prefix + candidates)`): patches per token (1 at first).
        keys (`torch.Tensor` of shape `(batch, prefix + candidates, head_dim)`): keys averaged over heads.
        num_merge (`int`): `r`; capped at the size of side A (`tome_merge_limit`).
        num_prefix_tokens (`int`).
        patch_ids (`torch.LongTensor` of shape `(batch, candidates)`): original patch index of each candidate.

    Returns:
        `(hidden_states, token_sizes, patch_ids)` with `candidates - r` candidates; a merged B token keeps its own
        patch id.
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
        return hidden_states, token_sizes, patch_ids

    similarity = metric[:, side_a] @ metric[:, side_b].transpose(1, 2)  # (batch, |A|, |B|)
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
    return hidden_states, token_sizes, patch_ids


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


class PrunedViTAttention(ViTAttention):
    """ViT self-attention that can also return what a pruning criterion needs, without giving up SDPA.

    - `pruning_statistic="class"`: the layer's own output goes through the configured attention implementation (SDPA by
      default); the class token's attention row is computed on the side, `softmax(q_cls k^T * scaling)` in float32,
      about 1/N of the cost of the full attention matrix.
    - `pruning_statistic="full"`: the full attention matrix is needed (entropy criterion), so the layer computes it
      once, in float32, and uses it for its own output too (eager attention at this layer only).

    - `pruning_statistic="keys"`: the keys averaged over heads, `(batch, tokens, head_dim)` (ToMe's similarity).

    Returns `(attn_output, attn_weights, statistic)`; `statistic` is `(batch, heads, candidates)` for "class",
    `(batch, heads, candidates, tokens)` for "full", `(batch, tokens, head_dim)` for "keys", else `None`; float32
    whatever the input dtype.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pruning_statistic: str | None = None,
        num_prefix_tokens: int = 1,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        statistic = None
        if pruning_statistic == "full":
            scores = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
            if attention_mask is not None:
                scores = scores + attention_mask
            probabilities = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
            statistic = probabilities[:, :, num_prefix_tokens:]
            attn_weights = probabilities.to(query_states.dtype)
            dropped = nn.functional.dropout(attn_weights, p=self.attention_dropout, training=self.training)
            attn_output = torch.matmul(dropped, value_states).transpose(1, 2).contiguous()
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                attention_mask,
                dropout=0.0 if not self.training else self.attention_dropout,
                scaling=self.scaling,
                **kwargs,
            )
            if pruning_statistic == "class":
                statistic = class_attention_row(query_states, key_states, self.scaling, num_prefix_tokens)
            elif pruning_statistic == "keys":
                statistic = key_states.float().mean(dim=1)

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights, statistic


class PrunedViTLayer(ViTLayer):
    """A ViT layer that, if `config` makes it a pruning layer, prunes tokens after attention and before the MLP
    (or, with `pruning_method="tome"`, merges `tome_r` tokens there).

    Order of operations: LayerNorm -> attention (+ criterion statistic) -> residual -> score, keep the best
    `ceil(keep_rate * candidates)` candidates, append the fused token -> LayerNorm -> MLP -> residual. A layer that is
    not a pruning layer, or whose keep count equals its candidate count, computes exactly what `ViTLayer` computes.

    `forward(hidden_states, attention_mask, patch_ids, token_sizes)` returns
    `(hidden_states, patch_ids, kept_patch_ids, token_sizes)`, where `patch_ids` (`(batch, candidates)`, long) tracks
    each candidate token's index in the original patch grid (-1 for a fused token), `kept_patch_ids` is the pruning
    layer's kept candidates `(batch, kept)` (`None` if it did not prune) and `token_sizes` (`(batch, tokens)`, ToMe
    only, else `None`) counts the patches each token stands for; with ToMe, `log(token_sizes)` is added to the
    attention logits (proportional attention). What was kept is returned, never stored on the module, so gradient
    checkpointing can re-run `forward`.
    """

    def __init__(self, config: PrunedViTConfig, layer_idx: int):
        super().__init__(config)
        self.config = config
        self.layer_idx = layer_idx
        self.attention = PrunedViTAttention(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        patch_ids: torch.Tensor | None = None,
        token_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        config = self.config
        num_prefix_tokens = config.num_prefix_tokens
        # int(): under tracing shapes are tensors; the keep count is static for a given input size.
        num_candidates = int(hidden_states.shape[1]) - num_prefix_tokens
        keep_rate = config.layer_keep_rate(self.layer_idx)
        num_keep = num_candidates if keep_rate is None else exact_keep_count(keep_rate, num_candidates)
        prunes = num_keep < num_candidates
        num_merge = min(config.layer_merge_count(self.layer_idx), tome_merge_limit(num_candidates, num_prefix_tokens))
        statistic_kind = CRITERION_STATISTIC[config.pruning_method] if prunes or num_merge > 0 else None
        if token_sizes is not None:  # ToMe's proportional attention: log(size) added to every key's logit
            size_bias = token_sizes.log().to(hidden_states.dtype)[:, None, None, :]
            attention_mask = size_bias if attention_mask is None else attention_mask + size_bias

        # Self Attention
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, _, statistic = self.attention(
            hidden_states,
            attention_mask,
            pruning_statistic=statistic_kind,
            num_prefix_tokens=num_prefix_tokens,
            **kwargs,
        )
        hidden_states = self.dropout(hidden_states)
        hidden_states = hidden_states + residual

        # Patch pruning and fusion
        kept_patch_ids = None
        if prunes:
            scores = score_tokens(
                config.pruning_method,
                statistic,
                num_candidates,
                hidden_states.shape[0],
                hidden_states.device,
                renyi_alpha=config.renyi_alpha,
            )
            hidden_states, patch_ids, kept_patch_ids = prune_tokens(
                hidden_states,
                scores,
                num_keep,
                num_prefix_tokens,
                patch_ids,
                fuse=config.fuse_pruned,
                fusion_temperature=config.fusion_temperature,
            )
        elif keep_rate is not None:
            kept_patch_ids = patch_ids
        if num_merge > 0:
            if token_sizes is None:
                token_sizes = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.float32)
            hidden_states, token_sizes, patch_ids = merge_tokens(
                hidden_states, token_sizes, statistic, num_merge, num_prefix_tokens, patch_ids
            )
            kept_patch_ids = patch_ids

        # Fully Connected
        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = hidden_states + residual

        return hidden_states, patch_ids, kept_patch_ids, token_sizes


class PrunedViTPatchEmbeddings(nn.Module):
    """`ViTPatchEmbeddings` with a stride: overlapping patches when `config.patch_stride < patch_size`.

    `(batch, channels, height, width)` -> `(batch, rows * cols, hidden)`, row-major over the patch grid, with
    `rows = (height - patch_size) // stride + 1` (and the same for columns). Weights (`projection`, a `Conv2d` with
    kernel = patch size) are those of `ViTPatchEmbeddings`, so any ViT checkpoint's patch projection loads unchanged.
    Source: overlapping patch embedding of arXiv:2507.19175 (sec. 3.3); layout mirrors `modeling_vit.py`.

    Raises (in `forward`):
        ValueError: if the channel count differs from the config's.
    """

    def __init__(self, config: PrunedViTConfig):
        super().__init__()
        patch_size = config.patch_size if isinstance(config.patch_size, (list, tuple)) else (config.patch_size,) * 2
        stride = patch_size if config.patch_stride is None else (config.patch_stride,) * 2
        image_size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        self.image_size = tuple(image_size)
        self.patch_size = tuple(patch_size)
        self.stride = tuple(stride)
        self.grid_size = config.patch_grid()
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=patch_size, stride=stride)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        num_channels = pixel_values.shape[1]
        if num_channels != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
                f" Expected {self.num_channels} but got {num_channels}."
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


def resize_position_embeddings(
    position_embeddings: torch.Tensor,
    num_prefix_tokens: int,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
) -> torch.Tensor:
    """Resample patch position embeddings from one patch grid to another; prefix-token embeddings are kept.

    Bicubic interpolation with `align_corners=False`, as transformers' `interpolate_pos_encoding` and timm's
    `resample_abs_pos_embed` do; computed in float32.

    Args:
        position_embeddings (`torch.Tensor` of shape `(1, prefix + old_rows * old_cols, hidden)`).
        num_prefix_tokens (`int`).
        old_grid, new_grid (`(rows, cols)`).

    Returns:
        `torch.Tensor` of shape `(1, prefix + new_rows * new_cols, hidden)`, same dtype; the input itself when the
        grids are equal.

    Raises:
        ValueError: if `position_embeddings` does not hold `prefix + old_rows * old_cols` entries.
    """
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if position_embeddings.shape[1] != expected:
        raise ValueError(
            f"position_embeddings has {position_embeddings.shape[1]} entries; a {old_grid[0]}x{old_grid[1]} grid with "
            f"{num_prefix_tokens} prefix token(s) needs {expected}."
        )
    if tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    prefix = position_embeddings[:, :num_prefix_tokens]
    grid = position_embeddings[:, num_prefix_tokens:].reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, grid], dim=1)


class _StridedPositionsMixin:
    """Strided patch embedding and stride-aware position-embedding interpolation, for the ViT / DeiT embeddings."""

    num_prefix_tokens: int

    def _use_strided_patches(self, config: PrunedViTConfig) -> None:
        self.patch_embeddings = PrunedViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.patch_embeddings.num_patches + self.num_prefix_tokens, config.hidden_size)
        )
        self.config = config

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a `height` x `width` input: resized (bicubic) to its patch grid, which follows
        the patch stride (transformers' version assumes stride = patch size)."""
        grid = self.config.patch_grid(int(height), int(width))
        if not torch.jit.is_tracing() and grid == self.patch_embeddings.grid_size:
            return self.position_embeddings
        return resize_position_embeddings(
            self.position_embeddings, self.num_prefix_tokens, self.patch_embeddings.grid_size, grid
        )


class PrunedViTEmbeddings(_StridedPositionsMixin, ViTEmbeddings):
    """ViT embeddings (class token, patches, position embeddings), as in `modeling_vit.py`, with `patch_stride`."""

    num_prefix_tokens = 1

    def __init__(self, config: PrunedViTConfig, use_mask_token: bool = False):
        super().__init__(config, use_mask_token=use_mask_token)
        self._use_strided_patches(config)


class PrunedDeiTEmbeddings(_StridedPositionsMixin, DeiTEmbeddings):
    """DeiT embeddings (class + distillation token, patches, position embeddings), as in `modeling_deit.py`, with
    `patch_stride`."""

    num_prefix_tokens = 2

    def __init__(self, config: PrunedDeiTConfig, use_mask_token: bool = False):
        super().__init__(config, use_mask_token=use_mask_token)
        self._use_strided_patches(config)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PrunedViTModelOutput(BaseModelOutputWithPooling):
    r"""
    [`~transformers.modeling_outputs.BaseModelOutputWithPooling`] plus what the pruning layers kept.

    kept_patch_indices (`tuple[torch.LongTensor]`, one per pruning layer, each of shape `(batch, kept)`):
        For each pruning layer, in the order of the tokens it kept (best first), the index in the original patch grid
        (row-major, `0 .. num_patches - 1`) of every kept candidate token; `-1` marks a fused token made by an earlier
        pruning layer that was kept. The fused token a layer appends is not listed. A pruning layer whose keep rate
        keeps everything lists every candidate. Shapes are fixed for a fixed keep rate and input size.
    """

    kept_patch_indices: tuple[torch.LongTensor, ...] | None = None


@dataclass
class PrunedViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    [`~transformers.modeling_outputs.ImageClassifierOutput`] plus `kept_patch_indices` (see
    [`PrunedViTModelOutput`]).
    """

    kept_patch_indices: tuple[torch.LongTensor, ...] | None = None


@dataclass
class PrunedDeiTForImageClassificationWithTeacherOutput(PrunedViTImageClassifierOutput):
    r"""
    Output of [`PrunedDeiTForImageClassificationWithTeacher`]: `logits` is the mean of `cls_logits` (class-token head)
    and `distillation_logits` (distillation-token head), as in `DeiTForImageClassificationWithTeacher`.
    """

    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class PrunedViTPreTrainedModel(ViTPreTrainedModel):
    """Base class of the PrunedViT models: ViT weights, init and loading, with `PrunedViTConfig`.

    Loads any ViT checkpoint, including the Hub's legacy-named `facebook/deit-*` and `google/vit-*` ones:
    `PrunedViTForImageClassification.from_pretrained("facebook/deit-small-patch16-224", keep_rate=0.5)`.
    """

    config_class = PrunedViTConfig
    config: PrunedViTConfig
    _no_split_modules = ["PrunedViTEmbeddings", "PrunedDeiTEmbeddings", "PrunedViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeiTEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.distillation_token, mean=0.0, std=self.config.initializer_range)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """[`~transformers.PreTrainedModel.from_pretrained`], plus loading a checkpoint under another patch stride.

        `from_pretrained("facebook/deit-small-patch16-224", patch_stride=12)` loads the non-overlapping checkpoint,
        then moves it to the stride-12 grid with [`with_patch_stride`]: the patch projection is unchanged, the
        position embeddings are resized (bicubic), the prefix tokens' kept. Such a model needs fine-tuning. A
        checkpoint saved with a stride loads as it is. Pruning fields go in as keyword arguments, as for any config
        field.
        """
        if "patch_stride" not in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        patch_stride = kwargs.pop("patch_stride")
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if isinstance(loaded, tuple):  # output_loading_info=True
            return (loaded[0].with_patch_stride(patch_stride), *loaded[1:])
        return loaded.with_patch_stride(patch_stride)

    def with_patch_stride(self, patch_stride: int | None) -> "PrunedViTPreTrainedModel":
        """This model with another patch stride: same weights, position embeddings resized to the new grid.

        Args:
            patch_stride (`int` or `None`): the new stride in pixels (`None`: the patch size, no overlap).

        Returns:
            A new model of the same class, device, dtype and train/eval mode (`self` if the stride is unchanged).

        Raises:
            ValueError: for a stride `PrunedViTConfig` rejects.
        """
        if patch_stride == self.config.patch_stride:
            return self
        config = copy.deepcopy(self.config)
        config.patch_stride = patch_stride
        config.check_patch_stride()
        embeddings = self.base_model.embeddings
        state_dict = self.state_dict()
        key = next(k for k in state_dict if k.endswith("embeddings.position_embeddings"))
        state_dict[key] = resize_position_embeddings(
            state_dict[key], config.num_prefix_tokens, embeddings.patch_embeddings.grid_size, config.patch_grid()
        )
        parameter = next(self.parameters())
        model = type(self)(config).to(device=parameter.device, dtype=parameter.dtype)
        model.load_state_dict(state_dict, strict=True)
        return model.train(self.training)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """[`~transformers.PreTrainedModel.save_pretrained`], writing the weights under their in-memory (5.x) names.

        transformers 5.x writes the 4.x names by default (`save_original_format=True`), but `Trainer` resumes from a
        checkpoint with a plain `load_state_dict`, which then finds none of the encoder weights (transformers issues
        #43701 / #48805). Saving the in-memory names makes checkpoints resumable by any `Trainer`; `from_pretrained`
        reads both layouts. Pass `save_original_format=True` for the 4.x layout.
        """
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def set_pruning(self, **fields) -> None:
        """Change pruning fields of this model in place, e.g. `model.set_pruning(keep_rate=0.5, fuse_pruned=False)`.

        Args:
            **fields: any of `pruning_method`, `keep_rate`, `prune_layers`, `fuse_pruned`, `fusion_temperature`,
                `renyi_alpha`.

        Raises:
            ValueError: for an unknown field or a value `PrunedViTConfig` rejects; the config is then left unchanged.
        """
        unknown = sorted(set(fields) - set(PRUNING_FIELDS))
        if unknown:
            raise ValueError(f"set_pruning got unknown field(s) {unknown}; allowed: {list(PRUNING_FIELDS)}.")
        old = {name: getattr(self.config, name) for name in fields}
        try:
            for name, value in fields.items():
                setattr(self.config, name, list(value) if isinstance(value, tuple) else value)
            self.config.check_pruning_fields()
        except Exception:
            for name, value in old.items():
                object.__setattr__(self.config, name, value)
            raise


class PrunedViTModel(PrunedViTPreTrainedModel):
    """The bare PrunedViT encoder: [`~transformers.ViTModel`] whose `config.prune_layers` prune patch tokens.

    Input `pixel_values` `(batch, channels, height, width)`; output [`PrunedViTModelOutput`] with `last_hidden_state`
    `(batch, tokens_left, hidden)` (prefix tokens first, then kept tokens, then fused tokens) and
    `kept_patch_indices`. With `pruning_method=None` or keep rate 1.0 it computes exactly what `ViTModel` computes.

    Raises (in `forward`):
        ValueError: if `attention_mask` is given while pruning (the mask would no longer match the tokens), or if the
            image size does not match the config without `interpolate_pos_encoding=True`.
    """

    _embeddings_class = PrunedViTEmbeddings

    def __init__(self, config: PrunedViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config)
        self.config = config
        self.embeddings = self._embeddings_class(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([PrunedViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        # Initialize weights and apply final processing
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> PrunedViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): images, normalised.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch, num_patches)`, *optional*): patches to replace by the
            mask token (masked image modelling).
        interpolate_pos_encoding (`bool`, *optional*): interpolate the position embeddings to another image size.
        attention_mask (`torch.Tensor`, *optional*): not supported while pruning.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if attention_mask is not None and self.config.pruning_method is not None:
            raise ValueError(
                "attention_mask cannot be combined with patch pruning: pruned tokens would no longer match the mask. "
                "Pass attention_mask=None, or switch pruning off with model.set_pruning(pruning_method=None)."
            )
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)

        embedding_output = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=embedding_output,
            attention_mask=attention_mask,
        )
        batch_size, num_tokens, _ = embedding_output.shape
        num_patches = num_tokens - self.config.num_prefix_tokens
        patch_ids = torch.arange(num_patches, device=embedding_output.device).expand(batch_size, -1)

        hidden_states, token_sizes = embedding_output, None
        kept_patch_indices = []
        for layer in self.layers:
            hidden_states, patch_ids, kept_patch_ids, token_sizes = layer(
                hidden_states, attention_mask, patch_ids, token_sizes, **kwargs
            )
            if kept_patch_ids is not None:
                kept_patch_indices.append(kept_patch_ids)

        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None

        return PrunedViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            kept_patch_indices=tuple(kept_patch_indices),
        )


class PrunedViTForImageClassification(PrunedViTPreTrainedModel):
    """PrunedViT with a linear head on the final class token, as [`~transformers.ViTForImageClassification`].

    Loads the same checkpoints (`facebook/deit-*-patch16-224`, `google/vit-*`), with pruning fields as keyword
    arguments: `PrunedViTForImageClassification.from_pretrained("facebook/deit-small-patch16-224", keep_rate=0.7)`.

    Output [`PrunedViTImageClassifierOutput`]: `logits` `(batch, num_labels)`, `loss` when `labels` `(batch,)` are
    given, and `kept_patch_indices`.
    """

    def __init__(self, config: PrunedViTConfig):
        super().__init__(config)

        self.num_labels = config.num_labels
        self.vit = PrunedViTModel(config, add_pooling_layer=False)

        # Classifier head
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

        # Initialize weights and apply final processing
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> PrunedViTImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): normalised images.
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class indices for the loss.
        interpolate_pos_encoding (`bool`, *optional*): interpolate the position embeddings to another image size.
        """
        outputs: PrunedViTModelOutput = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            **kwargs,
        )

        sequence_output = outputs.last_hidden_state
        pooled_output = sequence_output[:, 0, :]
        logits = self.classifier(pooled_output)

        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)

        return PrunedViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            kept_patch_indices=outputs.kept_patch_indices,
        )


class PrunedDeiTPreTrainedModel(PrunedViTPreTrainedModel):
    """Base class of the distilled-DeiT PrunedViT models (class + distillation token, `PrunedDeiTConfig`)."""

    config_class = PrunedDeiTConfig
    config: PrunedDeiTConfig
    base_model_prefix = "deit"


class PrunedDeiTModel(PrunedDeiTPreTrainedModel, PrunedViTModel):
    """The bare PrunedViT encoder for distilled DeiT checkpoints, as [`~transformers.DeiTModel`]: two prefix tokens
    (class, distillation), never pruned; the criteria read the class token's attention. See [`PrunedViTModel`]."""

    _embeddings_class = PrunedDeiTEmbeddings


class PrunedDeiTForImageClassification(PrunedDeiTPreTrainedModel):
    """Distilled-DeiT PrunedViT with one linear head on the final class token, as
    [`~transformers.DeiTForImageClassification`] (for fine-tuning from a distilled backbone with a new head).

    Output [`PrunedViTImageClassifierOutput`].
    """

    def __init__(self, config: PrunedDeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deit = PrunedDeiTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> PrunedViTImageClassifierOutput:
        r"""Same arguments as [`PrunedViTForImageClassification.forward`]."""
        outputs: PrunedViTModelOutput = self.deit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return PrunedViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            kept_patch_indices=outputs.kept_patch_indices,
        )


class PrunedDeiTForImageClassificationWithTeacher(PrunedDeiTPreTrainedModel):
    """Distilled-DeiT PrunedViT with the two heads of [`~transformers.DeiTForImageClassificationWithTeacher`]:
    `cls_classifier` on the class token and `distillation_classifier` on the distillation token; `logits` is their
    mean. Loads `facebook/deit-*-distilled-patch16-224` as they are.

    With `labels`, the loss is the classification loss of the mean logits (hard-label fine-tuning of both heads, as
    timm's distilled ViT does when not distilling); distillation from a teacher is not implemented.
    """

    def __init__(self, config: PrunedDeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deit = PrunedDeiTModel(config, add_pooling_layer=False)
        self.cls_classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.distillation_classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> PrunedDeiTForImageClassificationWithTeacherOutput:
        r"""Same arguments as [`PrunedViTForImageClassification.forward`]."""
        outputs: PrunedViTModelOutput = self.deit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        sequence_output = outputs.last_hidden_state
        cls_logits = self.cls_classifier(sequence_output[:, 0, :])
        distillation_logits = self.distillation_classifier(sequence_output[:, 1, :])
        logits = (cls_logits + distillation_logits) / 2
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return PrunedDeiTForImageClassificationWithTeacherOutput(
            loss=loss,
            logits=logits,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            kept_patch_indices=outputs.kept_patch_indices,
        )


__all__ = [
    "class_attention_row",
    "gather_tokens",
    "PrunedDeiTForImageClassification",
    "PrunedDeiTForImageClassificationWithTeacher",
    "PrunedDeiTModel",
    "PrunedDeiTPreTrainedModel",
    "PrunedViTForImageClassification",
    "PrunedViTModel",
    "PrunedViTPreTrainedModel",
    "merge_tokens",
    "prune_tokens",
    "resize_position_embeddings",
    "score_tokens",
]
