# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
# Built on transformers' `modeling_vit.py` / `modeling_deit.py` (Copyright Google AI, Ross Wightman, The HuggingFace
# Inc. team, Apache License 2.0), whose structure and style it follows.
"""PyTorch PrunedViT: ViT / DeiT with attention-statistics patch pruning and fusion.

Method: Igaue & Aizawa, "Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in
Vision Transformers", arXiv:2507.19175 (2025): at the pruning layers each non-prefix token is scored by how diverse
the class token's attention to it is across heads (variance, eq. 6, or median absolute deviation, eq. 7), the best
`keep_rate` fraction is kept, and the rest are fused into one extra token (eq. 8). The methods themselves (these
criteria, EViT, entropy, random, ToMe) live in the backbone-free `token_reduction.py`; this file is the ViT / DeiT
backbone around them: its layers compute the attention statistic a method asks for and hand the tokens to it after the
attention residual.

This file is shipped to the Hugging Face Hub with `trust_remote_code`: it stays flat and imports only torch,
transformers and its siblings `configuration_pruned_vit.py` and `token_reduction.py`.
"""

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
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
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_pruned_vit import PrunedDeiTConfig, PrunedViTConfig
from .token_ops import attention_with_statistic
from .token_reduction import TokenReduction, temporary_pruning, update_pruning

logger = logging.get_logger(__name__)

# Hub ViT/DeiT checkpoints use the 4.x weight names (`encoder.layer.N.attention.attention.query`); transformers renames
# them on load only for its own classes. Registering the ViT renaming for our backbone classes makes
# `PrunedViTForImageClassification.from_pretrained("facebook/deit-small-patch16-224")` load every weight (and saving
# writes the same legacy names back). `overwrite=True`: this file is imported twice when loaded as remote code.
for _backbone in ("PrunedViTModel", "PrunedDeiTModel"):
    register_checkpoint_conversion_mapping(_backbone, get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


def layer_attention_mask(config, hidden_states: torch.Tensor, key_mask: torch.Tensor):
    """The layers' attention mask for the tokens `hidden_states` `(batch, tokens, hidden)` and their key mask
    `(batch, tokens)`, built as [`~transformers.ViTModel`] builds it (`create_bidirectional_mask`: boolean for SDPA,
    additive for eager attention, `None` when nothing is masked)."""
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=key_mask)


def check_pixel_values(pixel_values, config) -> None:
    """Check the images a ViT-family model is given, before any torch operation can fail on them.

    Args:
        pixel_values: what was passed as `pixel_values`; expected a `torch.Tensor` of shape
            `(batch, config.num_channels, height, width)` with `batch >= 1` and both sides at least one patch.
        config: the model's config (`num_channels`, `patch_size`, `image_size`).

    Raises:
        ValueError: naming what was given and the expected shape.
    """
    patch = config.patch_size if isinstance(config.patch_size, int) else min(config.patch_size)
    expected = f"(batch, {config.num_channels}, height, width) with height and width >= {patch} px"
    if pixel_values is None:
        raise ValueError(f"You have to specify pixel_values, a tensor of shape {expected}.")
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch.Tensor of shape {expected}, got {type(pixel_values).__name__}.")
    shape = tuple(pixel_values.shape)
    if len(shape) != 4:
        hint = " For one image add the batch dimension: pixel_values.unsqueeze(0)." if len(shape) == 3 else ""
        raise ValueError(f"pixel_values has shape {shape}; expected 4 dimensions {expected}.{hint}")
    if shape[0] == 0:
        raise ValueError(f"pixel_values holds no image (shape {shape}); expected {expected}.")
    if shape[2] < patch or shape[3] < patch:
        raise ValueError(
            f"pixel_values has images of {shape[2]}x{shape[3]} px, smaller than one {patch}x{patch} px patch; "
            f"expected {expected} (this model was trained at {config.image_size} px: resize the images to that)."
        )


def start_token_reduction(
    config, num_prefix_tokens: int, pixel_values: torch.Tensor, attention_mask=None, grid=None
) -> TokenReduction | None:
    """The token reduction of one forward pass, as `config`'s pruning settings describe it (`None` when pruning is
    off): the one way every model starts it, PrunedViT models in their `forward` and `prune()`d stock models in a
    forward pre-hook.

    Args:
        config: the model's config, holding the pruning settings.
        num_prefix_tokens (`int`): class, distillation and register tokens (never reduced).
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): the images (for the patch grid).
        attention_mask (`torch.Tensor` of shape `(batch, tokens)`, *optional*): the model's key mask, 1 = attended.
        grid (`(rows, cols)`, *optional*): the patch grid; default `(height // patch, width // patch)`, as a
            convolution with kernel = stride = patch size gives it.

    Raises:
        ValueError: for an attention mask of another shape or values ([`~token_ops.check_key_mask`], at the first
            layer).
    """
    if grid is None:
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        grid = (int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch)
    return TokenReduction.from_config(
        config, num_prefix_tokens, attention_mask, functools.partial(layer_attention_mask, config), grid=grid
    )


def restore_dense_outputs(output, token_reduction: TokenReduction | None):
    """`output`'s `hidden_states` back on the full patch grid when `token_reduction` restores it
    (`restore_patch_grid=True`; the last hidden state already is, the last layer restores it): each entry
    `(batch, prefix + patches, hidden)` in patch order ([`~token_reduction.TokenReduction.restore_hidden_states`]).
    Anything else is returned unchanged.

    Raises:
        ValueError: for outputs returned as a tuple while hidden states are restored (`return_dict=False`): which
            entry is which is unknown there.
    """
    if token_reduction is None or not token_reduction.restores:
        return output
    if not isinstance(output, ModelOutput):
        raise ValueError("restore_patch_grid needs outputs returned as a ModelOutput: leave return_dict=True.")
    if output.get("hidden_states") is not None:
        output["hidden_states"] = token_reduction.restore_hidden_states(output["hidden_states"])
    return output


def restores_hidden_states(forward: Callable) -> Callable:
    """Decorator of a `forward` under transformers' `capture_outputs`: the hidden states it captured, back on the
    patch grid with `restore_patch_grid` ([`restore_dense_outputs`]; the forward leaves its `TokenReduction` on the
    output as `_token_reduction`). Honours `return_dict` as `capture_outputs` does."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", getattr(self.config, "return_dict", True))
        output = forward(self, *args, return_dict=True, **kwargs)
        output = restore_dense_outputs(output, output.__dict__.pop("_token_reduction", None))
        return output if return_dict else output.to_tuple()

    return wrapper


class PruningControlMixin:
    """`set_pruning` and `pruning()`: the one way to change a model's pruning settings, for PrunedViT models (a base
    class) and for stock models after `hf_vitprune.prune` (bound to the model)."""

    def set_pruning(self, **settings) -> None:
        """Change pruning settings of this model for good, e.g. `model.set_pruning(keep_rate=0.5, fuse_pruned=False)`.

        The settings live in `model.config` (saved with the model); every forward pass builds its reducer from them.
        For a change that must not outlive a block of code use [`pruning`].

        Args:
            **settings: fields of [`~token_reduction.PruningFields`]; one the resulting method does not read is
                recorded with an `UnreadSettingWarning` (no effect).

        Raises:
            ValueError: for an unknown setting (listing the known ones) or a rejected value; the config is then left
                unchanged.
        """
        update_pruning(self.config, **settings)

    @contextlib.contextmanager
    def pruning(self, **settings) -> Iterator[nn.Module]:
        """Change pruning settings for the duration of a `with` block: `with model.pruning(keep_rate=0.5): ...`.

        Every changed setting is restored on exit, also when the block raises. Yields the model.

        Raises:
            ValueError: as [`set_pruning`], before the block runs (nothing is changed).
        """
        with temporary_pruning(self.config, **settings):
            yield self


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


class PrunedViTAttention(ViTAttention):
    """ViT self-attention that can also return the attention statistic a token reducer needs, keeping SDPA.

    `forward(hidden_states, attention_mask, statistic, num_prefix_tokens)` returns `(attn_output, attn_weights,
    statistic)`: with `statistic=None` exactly what [`~transformers.ViTAttention`] computes, plus `None`; otherwise the
    statistic of `token_ops.attention_with_statistic` (the class token's attention row is computed on the side
    of SDPA at about 1/N of the cost of the full matrix; the full matrix, when a method needs it, is computed once in
    float32 and used for the output too). With `config.tie_query_key` the module has no `k_proj`: the keys are the
    queries, so the attention logits are symmetric (BSPF-ViT's shared Q/K weights).
    """

    def __init__(self, config: PrunedViTConfig):
        super().__init__(config)
        if getattr(config, "tie_query_key", False):
            self.k_proj = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        statistic: str | None = None,
        num_prefix_tokens: int = 1,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.k_proj is None:  # tied query / key projection: symmetric logits
            key_states = query_states
        else:
            key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights, statistic = attention_with_statistic(
            self,
            attention_interface,
            query_states,
            key_states,
            value_states,
            attention_mask,
            scaling=self.scaling,
            dropout=0.0 if not self.training else self.attention_dropout,
            statistic=statistic,
            num_prefix_tokens=num_prefix_tokens,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights, statistic


class PrunedViTLayer(ViTLayer):
    """A ViT layer that hands its tokens to the forward pass's token reduction after the attention residual.

    Order of operations: LayerNorm -> attention (+ the statistic the reducer asks for) -> residual -> token reduction
    (e.g. keep the best `ceil(keep_rate * candidates)` candidates and append the fused token) -> LayerNorm -> MLP ->
    residual. Without a `token_reduction`, or at a layer the reducer leaves alone, it computes exactly what
    [`~transformers.ViTLayer`] computes. `hf_vitprune.prune` turns the layers of a stock ViT / DeiT into this class.

    `forward(hidden_states, attention_mask, token_reduction)`: `hidden_states` `(batch, tokens, hidden)` ->
    `(batch, tokens', hidden)`; `token_reduction` ([`~token_reduction.TokenReduction`]) carries the method and the
    per-forward state (which patch each token stands for, ToMe's token sizes, what was kept), so nothing is stored on
    the module and gradient checkpointing can re-run `forward`.
    """

    def __init__(self, config: PrunedViTConfig, layer_idx: int):
        super().__init__(config)
        self.layer_idx = layer_idx
        self.attention = PrunedViTAttention(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_reduction: TokenReduction | None = None,
        **kwargs,
    ) -> torch.Tensor:
        plan = None
        if token_reduction is not None:  # the mask for the tokens left, with ToMe's proportional attention
            plan, attention_mask = token_reduction.enter(self.layer_idx, hidden_states, attention_mask)

        # Self Attention
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, _, statistic = self.attention(
            hidden_states,
            attention_mask,
            statistic=plan.statistic if plan is not None else None,
            num_prefix_tokens=token_reduction.num_prefix_tokens if token_reduction is not None else 1,
            **kwargs,
        )
        hidden_states = self.dropout(hidden_states)
        hidden_states = hidden_states + residual

        # Token reduction (pruning and fusion, or merging)
        if plan is not None:
            hidden_states = token_reduction.exit(plan, hidden_states, statistic)

        # Fully Connected
        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = hidden_states + residual

        if token_reduction is not None:  # the last layer's output back on the patch grid (restore_patch_grid)
            hidden_states = token_reduction.finish(self.layer_idx, hidden_states)
        return hidden_states


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
        For each pruning layer, in the order of the tokens it kept (for the pruning methods their sequence order:
        ascending patch index, a kept fused token last), the index in the original patch grid (row-major,
        `0 .. num_patches - 1`) of every kept candidate token; `-1` marks a fused token made by an earlier pruning
        layer that was kept. The fused token a layer appends is not listed. A pruning layer whose keep rate
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


class PrunedViTPreTrainedModel(PruningControlMixin, ViTPreTrainedModel):
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
        field. `tie_query_key=True` with `tied_qk_init="mean"` or `"query"` loads a checkpoint with separate query and
        key projections and ties them ([`tie_query_key_weights`]).

        Raises:
            ValueError: for `tie_query_key=True` on an untied checkpoint without `tied_qk_init`, `False` on a tied
                one, a `tie_query_key` that is not a boolean (a string such as `"false"` would tie), or `tied_qk_init`
                without `tie_query_key=True`.
        """
        tie = kwargs.pop("tie_query_key", None)
        tie_init = kwargs.pop("tied_qk_init", None)
        if tie is not None and not isinstance(tie, bool):
            raise ValueError(f"tie_query_key must be True or False, got {tie!r} ({type(tie).__name__}).")
        if tie_init is not None and tie is not True:
            raise ValueError(
                f"tied_qk_init={tie_init!r} says how tied query / key weights start, but tie_query_key=True is not "
                "given: pass both, or neither."
            )
        if tie is not None:
            tied_checkpoint = cls.config_class.get_config_dict(pretrained_model_name_or_path)[0].get("tie_query_key")
            if bool(tie) != bool(tied_checkpoint):
                if not tie:
                    raise ValueError(
                        f"{pretrained_model_name_or_path!r} has one projection for queries and keys "
                        "(tie_query_key=True): it cannot be untied; load it without tie_query_key."
                    )
                if tie_init not in ("mean", "query"):
                    raise ValueError(
                        f"{pretrained_model_name_or_path!r} has separate query and key weights: to tie them, say how "
                        "the shared projection starts: tied_qk_init='mean' (their mean) or 'query' (the query's)."
                    )
            else:
                tie = None  # the checkpoint already is as asked
        if "patch_stride" not in kwargs and tie is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        patch_stride = kwargs.pop("patch_stride", "unchanged")
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        if tie:
            model.tie_query_key_weights(tie_init)
        if patch_stride != "unchanged":
            model = model.with_patch_stride(patch_stride)
        return (model, *loaded[1:]) if isinstance(loaded, tuple) else model

    @torch.no_grad()
    def tie_query_key_weights(self, init: str) -> None:
        """Share one projection between queries and keys in every attention layer, in place (BSPF-ViT's symmetric
        attention, reconstructed from the abstract of arXiv:2507.12125): the shared projection is the mean of the
        query and key projections (`init="mean"`) or the query projection (`"query"`); `k_proj` is removed and
        `config.tie_query_key` set. The model then needs fine-tuning (docs/bspf.md measures top-1 before it).

        Raises:
            ValueError: for another `init`.
        """
        if init not in ("mean", "query"):
            raise ValueError(f"init must be 'mean' or 'query', got {init!r}.")
        for module in self.modules():
            if isinstance(module, PrunedViTAttention) and module.k_proj is not None:
                if init == "mean":
                    module.q_proj.weight.copy_((module.q_proj.weight + module.k_proj.weight) / 2)
                    if module.q_proj.bias is not None:
                        module.q_proj.bias.copy_((module.q_proj.bias + module.k_proj.bias) / 2)
                module.k_proj = None
        self.config.tie_query_key, self.config.tied_qk_init = True, init

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


class PrunedViTModel(PrunedViTPreTrainedModel):
    """The bare PrunedViT encoder: [`~transformers.ViTModel`] whose `config.prune_layers` prune patch tokens.

    Input `pixel_values` `(batch, channels, height, width)`; output [`PrunedViTModelOutput`] with `last_hidden_state`
    `(batch, tokens_left, hidden)` (prefix tokens first, then kept tokens, then fused tokens) and
    `kept_patch_indices`. With `pruning_method=None` or keep rate 1.0 it computes exactly what `ViTModel` computes.

    With pruning the sequence shrinks from layer to layer, so the per-layer outputs differ in length:
    `output_hidden_states=True` gives `num_hidden_layers + 1` tensors `(batch, tokens_l, hidden)`, `tokens_l` the
    tokens leaving layer `l` (the embeddings first: prefix + patches), e.g. DeiT-Tiny at keep 0.7 with fusion:
    197 for the embeddings and layers 0-2, 140 after layer 3, ..., 72 after layers 9-11; `output_attentions=True`
    gives `(batch, heads, tokens_in, tokens_in)` per layer with the tokens entering it, under eager attention (SDPA
    returns no weights, as stock ViT does: `model.set_attn_implementation("eager")`). `pruning_method="random"` draws
    from torch's global generator: seed it (`torch.manual_seed`) for repeatable outputs; an image's random pruning
    depends on its place in the batch.

    Raises (in `forward`):
        ValueError: for `pixel_values` that are not `(batch, channels, height, width)` with at least one image at
            least one patch large, for an `attention_mask` that is not `(batch, tokens)` of 0 / 1 values or that
            masks every patch token of an image, or if the image size does not match the config without
            `interpolate_pos_encoding=True`.
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
    @restores_hidden_states
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PrunedViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): images, normalised.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch, num_patches)`, *optional*): patches to replace by the
            mask token (masked image modelling).
        interpolate_pos_encoding (`bool`, *optional*): interpolate the position embeddings to another image size.
        attention_mask (`torch.Tensor` of shape `(batch, tokens)`, *optional*): which tokens may be attended to, one
            entry per token of the embedded sequence (the prefix tokens, then the patches in grid order): 1 / True =
            attended, 0 / False = masked (e.g. padding patches); bool, integer or 0 / 1 floats. As in
            [`~transformers.ViTModel`] it masks keys. Under pruning it travels with the tokens: a masked token is
            never kept in place of an unmasked one, never enters the fused token or a merge with an unmasked token, and
            stays masked; with keep rate 1.0 the outputs equal `ViTModel`'s with the same mask. A mask that masks
            every patch token of an image is an error.
        """
        check_pixel_values(pixel_values, self.config)
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)

        embedding_output = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        key_mask = attention_mask
        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=embedding_output,
            attention_mask=attention_mask,
        )
        token_reduction = start_token_reduction(
            self.config,
            self.config.num_prefix_tokens,
            pixel_values,
            key_mask,
            grid=self.config.patch_grid(int(pixel_values.shape[-2]), int(pixel_values.shape[-1])),
        )
        hidden_states = embedding_output
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, token_reduction=token_reduction, **kwargs)

        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None

        output = PrunedViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            kept_patch_indices=token_reduction.kept_patch_indices if token_reduction is not None else (),
        )
        if token_reduction is not None and token_reduction.restores:
            output._token_reduction = token_reduction  # for the captured hidden states (`restores_hidden_states`)
        return output


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
        **kwargs: Unpack[TransformersKwargs],
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
        **kwargs: Unpack[TransformersKwargs],
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
        **kwargs: Unpack[TransformersKwargs],
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
    "check_pixel_values",
    "layer_attention_mask",
    "PruningControlMixin",
    "PrunedDeiTForImageClassification",
    "PrunedDeiTForImageClassificationWithTeacher",
    "PrunedDeiTModel",
    "PrunedDeiTPreTrainedModel",
    "PrunedViTForImageClassification",
    "PrunedViTModel",
    "PrunedViTPreTrainedModel",
    "resize_position_embeddings",
    "start_token_reduction",
]
