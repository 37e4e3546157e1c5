# Copyright 2026 The hf_vitprune Authors. Licensed under the Apache License, Version 2.0.
"""PrunedViT model configuration.

This file is shipped to the Hugging Face Hub next to `config.json` when a model is saved with
`trust_remote_code`: it must stay flat and import only torch, transformers and its sibling files.
"""

from transformers.utils.versions import require_version

require_version(
    "transformers>=5.20",
    "hf_vitprune's PrunedViT models need transformers 5.20 or newer: pip install -U 'transformers>=5.20'",
)

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import ViTConfig  # noqa: E402

from .token_reduction import PRUNING_FIELDS, PruningFields, PruningSettings, check_setting_names, pair  # noqa: E402


@strict
class PrunedViTConfig(ViTConfig, PruningFields):
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
        pruning_method, keep_rate, prune_layers, fuse_pruned, fusion_temperature, renyi_alpha, tome_r, entropy_axis,
        bspf_block, bspf_joint, pitome_margin, pitome_alpha, restore_patch_grid:
            The pruning settings, inherited from [`~token_reduction.PruningFields`], where each is declared once
            (type, default, help; `hf-vitprune train --help` prints them). The paper's setting is the default:
            `"variance"`, keep 0.7 at layers 3, 6, 9 (of 12; other depths the same fractions), one fused token per
            pruning layer at temperature 0.1 (chosen by measurement, docs/fusion_temperature.md). `pruning_method=None`
            is the stock ViT exactly. Which settings each method reads: `token_reduction.REDUCERS[m].settings_used`.
        patch_stride (`int`, *optional*):
            Stride of the patch embedding, in pixels, 1 <= stride <= `patch_size`; `None` (the default) means the
            patch size, i.e. no overlap. With 16 px patches and stride 12 (patches overlap by a quarter) a 224 px image
            gives 18 x 18 = 324 patches instead of 196 (arXiv:2507.19175, sec. 3.3). The grid is
            `(image_size - patch_size) // patch_stride + 1` per side: a border that does not fit a whole patch at the
            last stride step is not seen (as `Conv2d` without padding), e.g. 8 px for 224 px, 16 px patches, stride 10.
            Changing it changes the number of position embeddings: load a checkpoint with another stride through
            `from_pretrained(..., patch_stride=...)`, which resizes them (and then needs fine-tuning).
        tie_query_key (`bool`, *optional*, defaults to `False`):
            One projection for queries and keys (BSPF-ViT's shared Q/K weights): the attention logits are symmetric
            and each layer has no `k_proj`. Load an untied checkpoint with `from_pretrained(...,
            tie_query_key=True, tied_qk_init="mean" | "query")`: the shared projection starts as the mean of the two,
            or as the query projection (such a model needs fine-tuning).
        tied_qk_init (`str`, *optional*): how a tied model's projection was initialised (recorded, `"mean"` or
            `"query"`).

    Raises:
        ValueError: when a pruning field is out of range or the fields do not fit together or with the depth; the
            message names the field and the allowed values.
        huggingface_hub.errors.StrictDataclassFieldValidationError: when a field has the wrong type (e.g. a string
            keep rate); the message names the field.
    """

    model_type = "pruned_vit"
    base_model_types = ("vit",)
    num_prefix_tokens = 1
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "kept_patch_indices"]

    # The pruning fields come from `PruningFields` (typed there for the strict dataclass: a value of the wrong type
    # raises its StrictDataclassFieldValidationError naming the field); ranges and how the fields fit together are
    # checked by `check_pruning_fields`.
    patch_stride: int | None = None
    tie_query_key: bool = False
    tied_qk_init: str | None = None

    def __post_init__(self, **kwargs):
        # A config dict read from a plain ViT/DeiT checkpoint carries its own `model_type`: never let it shadow ours.
        kwargs.pop("model_type", None)
        settings = PruningSettings.from_config(self).with_defaults(self.num_hidden_layers)
        self.prune_layers, self.keep_rate, self.tome_r = settings.prune_layers, settings.keep_rate, settings.tome_r
        self.check_patch_stride()
        self.check_pruning_fields()
        if self.tied_qk_init not in (None, "mean", "query"):
            raise ValueError(f"tied_qk_init must be 'mean', 'query' or None, got {self.tied_qk_init!r}.")
        super().__post_init__(**kwargs)

    def check_pruning_fields(self) -> None:
        """Validate the pruning fields against each other and the model's depth ([`PruningSettings.validate`]).

        Raises:
            ValueError: naming the offending field, its value and what is allowed.
        """
        PruningSettings.from_config(self).validate(self.num_hidden_layers, self.patch_grid())

    def check_patch_stride(self) -> None:
        """Validate `patch_stride` against the patch and image sizes.

        Raises:
            ValueError: naming the field, its value and the allowed range.
        """
        if self.patch_stride is None:
            return
        patch = pair(self.patch_size)
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
        image = pair(self.image_size)
        height, width = height or image[0], width or image[1]
        patch = pair(self.patch_size)
        stride = pair(self.patch_stride) if self.patch_stride is not None else patch
        if height < patch[0] or width < patch[1]:
            raise ValueError(f"An input of {height}x{width} px is smaller than one {patch[0]}x{patch[1]} px patch.")
        return (height - patch[0]) // stride[0] + 1, (width - patch[1]) // stride[1] + 1

    def token_schedule(self, num_patches: int) -> list[tuple[int, int]]:
        """Candidate tokens left, and fused tokens appended, by each token-reducing layer, for `num_patches` patches.

        Args:
            num_patches (`int`): patch tokens after the embedding (196 for 224 px and 16 px patches).

        Returns:
            `list[(kept, fused)]` from the method's reducer ([`TokenReducer.token_schedule`]): one entry per reducing
            layer (DeiT-S at keep 0.7 with fusion: `[(138, 1), (98, 1), (70, 1)]`; ToMe: one per layer with `r > 0`,
            `fused` 0). Empty when pruning is off.
        """
        reducer = PruningSettings.from_config(self).reducer(self.num_prefix_tokens, self.num_hidden_layers)
        return [] if reducer is None else reducer.token_schedule(num_patches, self.num_hidden_layers)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Mirrors [`~transformers.PretrainedConfig.from_dict`], but pruning fields given as `kwargs` go into the
        config before it is built, so they are validated together with the checkpoint's fields (transformers sets
        other kwargs after construction, which would validate the file's `prune_layers` against a model that may
        have too few layers for them). `id2label` / `label2id` go in too, so a new head's labels agree with
        `num_labels` from the start."""
        given = [name for name in PRUNING_FIELDS if name in kwargs]
        if given:  # a setting the method does not read is recorded with a warning
            method = kwargs.get("pruning_method", config_dict.get("pruning_method", PruningFields.pruning_method))
            check_setting_names(given, method)
        config_dict = dict(config_dict)
        for name in (*PRUNING_FIELDS, "patch_stride", "tie_query_key", "tied_qk_init", "id2label", "label2id"):
            if name in kwargs:
                config_dict[name] = kwargs.pop(name)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """[`~transformers.PretrainedConfig.from_pretrained`]; a field of the wrong type in the checkpoint's
        config.json (or in the keyword arguments) is reported with the file it came from.

        Raises:
            ValueError: naming the config file and the field, for a value of the wrong type or out of range.
        """
        from huggingface_hub.errors import StrictDataclassFieldValidationError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (StrictDataclassFieldValidationError, ValueError) as error:
            if str(pretrained_model_name_or_path) in str(error):
                raise
            raise ValueError(
                f"{pretrained_model_name_or_path} (its config.json, with the keyword arguments given): {error}"
            ) from error

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


__all__ = ["PrunedDeiTConfig", "PrunedViTConfig"]
