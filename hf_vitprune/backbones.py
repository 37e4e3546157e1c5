"""Backbone adapters: token reduction inside stock transformers vision models, and `prune`, the one public entry.

`prune(model, pruning_method="variance", keep_rate=0.7)` turns an already-loaded stock model (ViT, DeiT, DINOv2,
DINOv2 with registers, CLIP vision) into a pruned one, in place. An adapter holds no method logic: per family it
knows the layer and attention classes to extend (the attention computes the statistic a reducer asks for, keeping
SDPA; the layer calls the reducer after the attention residual), and how many prefix tokens lead the sequence (never
pruned or merged). The methods are the reducers of `token_reduction.py`.

How it is done, after ToMe's `tome.patch` (Bolya et al., ICLR 2023): each transformer layer (and its attention) gets
the class of a subclass of its own class whose `forward` adds the reduction, so parameters, state dict, hooks and
`isinstance` checks are untouched; a forward pre-hook on the model (and on its base model) starts one
[`~token_reduction.TokenReduction`] per forward pass from the pruning fields recorded in `model.config`, passed to the
layers as the keyword argument `token_reduction` (which the stock models forward to their layers), and a forward hook
adds `kept_patch_indices` to the output.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
from transformers.models.deit.modeling_deit import DeiTAttention, DeiTLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Attention, Dinov2Layer
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersAttention,
    Dinov2WithRegistersLayer,
)
from transformers.models.vit.modeling_vit import ViTAttention, ViTLayer, eager_attention_forward
from transformers.utils import ModelOutput

from .modeling_pruned_vit import (
    PrunedViTAttention,
    PrunedViTLayer,
    PrunedViTPreTrainedModel,
    PruningControlMixin,
    check_pixel_values,
    restore_dense_outputs,
    start_token_reduction,
)
from .token_ops import attention_with_statistic
from .token_reduction import PRUNING_FIELDS, PruningSettings, TokenReduction, UnreadSettingWarning, update_pruning

# ---------------------------------------------------------------------------------------------------------------------
# Layers of the families other than ViT (the ViT ones are modeling_pruned_vit.PrunedViTLayer / PrunedViTAttention)
# ---------------------------------------------------------------------------------------------------------------------


def _plain(function):
    """The function under transformers' gradient-checkpointing wrapper, to reuse one `forward` in a sibling class."""
    return inspect.unwrap(function)


class PrunedDeiTAttention(DeiTAttention):
    """DeiT attention with the token-reduction statistic: the same code as [`PrunedViTAttention`] (same weights)."""

    forward = _plain(PrunedViTAttention.forward)


class PrunedDeiTLayer(DeiTLayer):
    """DeiT layer with token reduction after the attention residual: the same code as [`PrunedViTLayer`]."""

    forward = _plain(PrunedViTLayer.forward)


class PrunedDinov2Attention(Dinov2Attention):
    """DINOv2 attention with the token-reduction statistic: the same code as [`PrunedViTAttention`] (same weights)."""

    forward = _plain(PrunedViTAttention.forward)


class PrunedDinov2Layer(Dinov2Layer):
    """DINOv2 layer (layer scale, drop path) with token reduction after the attention residual.

    `forward(hidden_states, attention_mask, token_reduction)`: without `token_reduction` exactly
    [`~transformers.models.dinov2.modeling_dinov2.Dinov2Layer`]'s computation.
    """

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
        hidden_states = self.norm1(hidden_states)
        hidden_states, _, statistic = self.attention(
            hidden_states,
            attention_mask=attention_mask,
            statistic=plan.statistic if plan is not None else None,
            num_prefix_tokens=token_reduction.num_prefix_tokens if token_reduction is not None else 1,
            **kwargs,
        )
        hidden_states = self.layer_scale1(hidden_states)
        hidden_states = self.drop_path(hidden_states) + residual

        # Token reduction
        if plan is not None:
            hidden_states = token_reduction.exit(plan, hidden_states, statistic)

        # Fully Connected
        residual = hidden_states
        hidden_states = self.norm2(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.layer_scale2(hidden_states)
        hidden_states = self.drop_path(hidden_states) + residual

        if token_reduction is not None:  # the last layer's output back on the patch grid (restore_patch_grid)
            hidden_states = token_reduction.finish(self.layer_idx, hidden_states)
        return hidden_states


class PrunedDinov2WithRegistersAttention(Dinov2WithRegistersAttention):
    """DINOv2-with-registers attention with the token-reduction statistic (the code of [`PrunedViTAttention`])."""

    forward = _plain(PrunedViTAttention.forward)


class PrunedDinov2WithRegistersLayer(Dinov2WithRegistersLayer):
    """DINOv2-with-registers layer with token reduction: the same code as [`PrunedDinov2Layer`]. The registers are
    prefix tokens: never pruned, fused or merged."""

    forward = _plain(PrunedDinov2Layer.forward)


class PrunedCLIPAttention(CLIPAttention):
    """CLIP attention (`scale`, `out_proj`) that can also return the token-reduction statistic, keeping SDPA.

    Returns `(attn_output, attn_weights, statistic)`; with `statistic=None` exactly what
    [`~transformers.models.clip.modeling_clip.CLIPAttention`] computes, plus `None`.
    """

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
        queries = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        values = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights, statistic = attention_with_statistic(
            self,
            attention_interface,
            queries,
            keys,
            values,
            attention_mask,
            scaling=self.scale,
            dropout=0.0 if not self.training else self.dropout,
            statistic=statistic,
            num_prefix_tokens=num_prefix_tokens,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.out_proj(attn_output), attn_weights, statistic


class PrunedCLIPEncoderLayer(CLIPEncoderLayer):
    """CLIP encoder layer (pre-LayerNorm) with token reduction after the attention residual.

    `forward(hidden_states, attention_mask, token_reduction)`: without `token_reduction` exactly
    [`~transformers.models.clip.modeling_clip.CLIPEncoderLayer`]'s computation.
    """

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

        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        hidden_states, _, statistic = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            statistic=plan.statistic if plan is not None else None,
            num_prefix_tokens=token_reduction.num_prefix_tokens if token_reduction is not None else 1,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        if plan is not None:
            hidden_states = token_reduction.exit(plan, hidden_states, statistic)

        residual = hidden_states
        hidden_states = self.layer_norm2(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states

        if token_reduction is not None:  # the last layer's output back on the patch grid (restore_patch_grid)
            hidden_states = token_reduction.finish(self.layer_idx, hidden_states)
        return hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# The adapters
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """How token reduction enters one model family.

    Attributes:
        family (`str`): its name in messages and docs.
        model_types (`tuple[str, ...]`): the `config.model_type` values of the family.
        classes (`tuple[str, ...]`): the transformers classes `prune` accepts (documented and tested).
        layers (`dict[type, type]`): stock layer class -> its token-reducing subclass.
        attentions (`dict[type, type]`): stock attention class -> its subclass that also returns the statistic.
        num_prefix_tokens (`Callable[[config], int]`): leading tokens of the sequence that are never reduced.
        prefix (`str`): what the prefix tokens are, for docs.
        takes_mask (`bool`): whether the stock model takes an `attention_mask` (CLIP vision does not: its encoder
            would hand the raw `(batch, tokens)` mask to SDPA).
    """

    family: str
    model_types: tuple[str, ...]
    classes: tuple[str, ...]
    layers: dict
    attentions: dict
    num_prefix_tokens: Callable
    prefix: str
    takes_mask: bool = True


BACKBONES: list[Backbone] = [
    Backbone(
        "ViT",
        ("vit",),
        ("ViTModel", "ViTForImageClassification"),
        {ViTLayer: PrunedViTLayer},
        {ViTAttention: PrunedViTAttention},
        lambda config: 1,
        "class token",
    ),
    Backbone(
        "DeiT",
        ("deit",),
        ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        {DeiTLayer: PrunedDeiTLayer},
        {DeiTAttention: PrunedDeiTAttention},
        lambda config: 2,
        "class + distillation token",
    ),
    Backbone(
        "DINOv2",
        ("dinov2",),
        ("Dinov2Model", "Dinov2ForImageClassification", "Dinov2Backbone"),
        {Dinov2Layer: PrunedDinov2Layer},
        {Dinov2Attention: PrunedDinov2Attention},
        lambda config: 1,
        "class token",
    ),
    Backbone(
        "DINOv2 with registers",
        ("dinov2_with_registers",),
        ("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersBackbone"),
        {Dinov2WithRegistersLayer: PrunedDinov2WithRegistersLayer},
        {Dinov2WithRegistersAttention: PrunedDinov2WithRegistersAttention},
        lambda config: 1 + config.num_register_tokens,
        "class token + `num_register_tokens` registers",
    ),
    Backbone(
        "CLIP vision",
        ("clip_vision_model",),
        ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
        {CLIPEncoderLayer: PrunedCLIPEncoderLayer},
        {CLIPAttention: PrunedCLIPAttention},
        lambda config: 1,
        "class token",
        takes_mask=False,
    ),
]
"""Every model family `prune` knows. A new backbone is one entry here plus its layer (and attention) subclass."""


def backbone_of(model: nn.Module) -> Backbone:
    """The [`Backbone`] adapter of `model`, by `model.config.model_type`.

    Raises:
        ValueError: for a model of a family no adapter knows, naming the supported families.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for backbone in BACKBONES:
        if model_type in backbone.model_types:
            return backbone
    supported = "; ".join(f"{b.family} ({', '.join(b.classes)})" for b in BACKBONES)
    raise ValueError(
        f"hf_vitprune cannot prune {type(model).__name__} (model_type {model_type!r}): no backbone adapter knows it. "
        f"Supported: {supported}; and the PrunedViT classes of this package. For a CLIPModel, prune its "
        "vision_model."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Hooks: one TokenReduction per forward pass
# ---------------------------------------------------------------------------------------------------------------------

_INSTALLED = "_hf_vitprune_backbone"  # attribute on a pruned stock model: its Backbone's family
_RESTORING = "_hf_vitprune_restores"  # attribute on each PreTrainedModel of it that restores its hidden states


def _start_reduction(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: check the images, then start the forward pass's token reduction from `module.config` (unless
    an outer module did)."""
    if kwargs.get("token_reduction") is None:
        pixel_values = args[0] if args else kwargs.get("pixel_values")
        check_pixel_values(pixel_values, module.config)
        backbone = backbone_of(module)
        if kwargs.get("attention_mask") is not None and not backbone.takes_mask:
            supported = ", ".join(b.family for b in BACKBONES if b.takes_mask)
            raise ValueError(
                f"{type(module).__name__} takes no attention_mask (the stock {backbone.family} model does not build "
                f"one for its layers either): leave it out. Masks travel with the tokens on {supported} and the "
                "PrunedViT classes."
            )
        config = module.config
        reduction = start_token_reduction(
            config, backbone.num_prefix_tokens(config), pixel_values, kwargs.get("attention_mask")
        )
        if reduction is not None:
            if needs_patch_grid(module) and not reduction.restores:
                raise ValueError(grid_refusal(module))
            kwargs["token_reduction"] = reduction
    return args, kwargs


def needs_patch_grid(model: nn.Module) -> bool:
    """Whether `model`'s outputs are read on the full patch grid: a transformers backbone (`BackboneMixin`, e.g.
    `Dinov2Backbone`), whose feature maps are `(batch, hidden, rows, cols)` grids, or with `reshape_hidden_states=False`
    token sequences that dense heads (DPT, Depth Anything) reshape into grids themselves."""
    return isinstance(model, BackboneMixin)


def grid_refusal(model: nn.Module) -> str:
    """The message refusing token reduction without `restore_patch_grid` on a model that [`needs_patch_grid`]."""
    return (
        f"{type(model).__name__} is a backbone: its feature maps are read on the full patch grid, which pruned or "
        "merged tokens no longer fill (they would come out with the wrong shape): pass "
        "restore_patch_grid=True (prune(model, ..., restore_patch_grid=True) or model.set_pruning(...)) to put every "
        "patch back before the feature maps are made, or pruning_method=None."
    )


def _restore_hidden_states(module: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook on every `PreTrainedModel` of a pruned model: its captured `hidden_states` back on the patch grid
    with `restore_patch_grid` ([`~modeling_pruned_vit.restore_dense_outputs`]).

    Raises:
        ValueError: for hidden states asked for while the outputs are a tuple (`return_dict=False`).
    """
    reduction = kwargs.get("token_reduction")
    if reduction is None or not reduction.restores or isinstance(output, ModelOutput):
        return restore_dense_outputs(output, reduction)
    if kwargs.get("output_hidden_states", getattr(module.config, "output_hidden_states", False)):
        raise ValueError("restore_patch_grid needs outputs returned as a ModelOutput: leave return_dict=True.")
    return output


def _report_reduction(module: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook: add what each reducing layer kept to the output, as `kept_patch_indices`."""
    reduction = kwargs.get("token_reduction")
    if reduction is not None and isinstance(output, ModelOutput):
        output["kept_patch_indices"] = reduction.kept_patch_indices
    return output


def _swap_layers(model: nn.Module, backbone: Backbone) -> None:
    """Give each transformer layer (and attention) of `model` its token-reducing subclass; number the layers.

    Raises:
        ValueError: if the model does not hold `config.num_hidden_layers` layers of the family's class.
    """
    reducing_layers = tuple(backbone.layers.values())
    layers = [m for m in model.modules() if isinstance(m, tuple(backbone.layers)) or isinstance(m, reducing_layers)]
    if len(layers) != model.config.num_hidden_layers:
        raise ValueError(
            f"{type(model).__name__} holds {len(layers)} {backbone.family} layers but its config says "
            f"num_hidden_layers={model.config.num_hidden_layers}: this model is not a plain {backbone.family} stack."
        )
    for index, layer in enumerate(layers):
        if type(layer) in backbone.layers:
            layer.__class__ = backbone.layers[type(layer)]
        layer.layer_idx = index
        for child in layer.modules():
            if type(child) in backbone.attentions:
                child.__class__ = backbone.attentions[type(child)]


# ---------------------------------------------------------------------------------------------------------------------
# The public entry
# ---------------------------------------------------------------------------------------------------------------------


def prune(model: nn.Module, **settings) -> nn.Module:
    """Switch token reduction on (or change or switch it off) in an already-loaded model, in place; return it.

    ```python
    from transformers import AutoModel
    import hf_vitprune

    model = AutoModel.from_pretrained("facebook/dinov2-small")
    hf_vitprune.prune(model, pruning_method="variance", keep_rate=0.7)  # layers 3, 6, 9 keep 70 % of the patches
    with model.pruning(keep_rate=0.5):  # temporarily; model.set_pruning(...) for good
        outputs = model(pixel_values=pixel_values)
    outputs.kept_patch_indices  # the patch-grid indices each pruning layer kept, (batch, kept) each
    ```

    Supported: the families of [`BACKBONES`] (ViT, DeiT incl. the distilled teacher model, DINOv2, DINOv2 with
    registers, CLIP vision) and this package's PrunedViT classes (for which it is `model.set_pruning`). The prefix
    tokens (class, distillation, registers) are never pruned, fused or merged.

    The settings are recorded in `model.config` (one attribute per field, as `PrunedViTConfig` holds them), so they
    are saved with `save_pretrained`. A stock class loading that folder gives the stock model again; `prune(model)`
    without settings then restores the recorded ones. Settings not given keep the value recorded on the config, or
    else the default (the paper's setting: variance, keep 0.7, fusion, temperature 0.1, at a quarter, half and three
    quarters of the depth: layers 3, 6, 9 of 12). `pruning_method=None` leaves every output bit-identical to the stock
    model. After `prune`, `model.set_pruning(**settings)` changes settings for good and
    `with model.pruning(**settings):` for one block; both validate first.

    Args:
        model (`nn.Module`): a transformers model of a supported family, or a PrunedViT model.
        **settings: fields of [`~token_reduction.PruningFields`] (`pruning_method`: a name of
            `token_reduction.REDUCERS`, or `None` for no pruning; `keep_rate`, `prune_layers`, ...); one the resulting
            method does not read (`REDUCERS[method].settings_used`) is recorded with an `UnreadSettingWarning`.

    Returns:
        `model`, changed in place.

    Raises:
        ValueError: for a model family no adapter knows (naming the supported ones), an unknown setting (listing the
            known ones), a method not in the registry (listing them), or settings that do not fit the model (e.g. a
            pruning layer beyond its depth); the model is then left unchanged.
    """
    if isinstance(model, PrunedViTPreTrainedModel):
        model.set_pruning(**settings)
        return model
    backbone = backbone_of(model)
    config = model.config
    recorded = {name: getattr(config, name) for name in PRUNING_FIELDS if hasattr(config, name)}
    final = {**PruningSettings().as_dict(), **recorded, **settings}
    if needs_patch_grid(model) and final["pruning_method"] is not None and final["restore_patch_grid"] is not True:
        raise ValueError(grid_refusal(model))
    if not recorded:  # start from the defaults: check the changes on a copy first (nothing written if refused)
        probe = types.SimpleNamespace(
            **{k: getattr(config, k) for k in ("num_hidden_layers", "image_size", "patch_size") if hasattr(config, k)}
        )
        with warnings.catch_warnings():  # the call below warns, once
            warnings.simplefilter("ignore", UnreadSettingWarning)
            update_pruning(probe, **settings)
        PruningSettings().write_to(config)
    update_pruning(config, **settings)
    _swap_layers(model, backbone)
    targets = [model] if model.base_model is model else [model, model.base_model]
    for target in targets:
        if getattr(target, _INSTALLED, None) is None:
            target.register_forward_pre_hook(_start_reduction, with_kwargs=True)
            target.register_forward_hook(_report_reduction, with_kwargs=True)
            setattr(target, _INSTALLED, backbone.family)
    for submodel in model.modules():  # where transformers captures the hidden states (model, base model or encoder)
        if isinstance(submodel, PreTrainedModel) and not getattr(submodel, _RESTORING, False):
            submodel.register_forward_hook(_restore_hidden_states, with_kwargs=True)
            setattr(submodel, _RESTORING, True)
    model.set_pruning = types.MethodType(PruningControlMixin.set_pruning, model)
    model.pruning = types.MethodType(PruningControlMixin.pruning, model)
    return model


def num_prefix_tokens(model: nn.Module) -> int:
    """Leading tokens of `model`'s sequence that are never reduced (class, distillation, register tokens)."""
    if isinstance(model, PrunedViTPreTrainedModel):
        return model.config.num_prefix_tokens
    return backbone_of(model).num_prefix_tokens(model.config)


__all__ = [
    "BACKBONES",
    "Backbone",
    "PrunedCLIPAttention",
    "PrunedCLIPEncoderLayer",
    "PrunedDeiTAttention",
    "PrunedDeiTLayer",
    "PrunedDinov2Attention",
    "PrunedDinov2Layer",
    "PrunedDinov2WithRegistersAttention",
    "PrunedDinov2WithRegistersLayer",
    "backbone_of",
    "num_prefix_tokens",
    "prune",
]
