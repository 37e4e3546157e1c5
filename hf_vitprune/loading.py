"""Load any ViT / DeiT checkpoint as the matching PrunedViT class."""

from __future__ import annotations

from transformers import PretrainedConfig

from .modeling_pruned_vit import (
    PrunedDeiTForImageClassification,
    PrunedDeiTForImageClassificationWithTeacher,
    PrunedViTForImageClassification,
    PrunedViTPreTrainedModel,
)


def pruned_class_for(name_or_path: str, **hub_kwargs) -> type[PrunedViTPreTrainedModel]:
    """The PrunedViT image-classification class that holds checkpoint `name_or_path`.

    - `model_type` "vit" / "pruned_vit" (e.g. `facebook/deit-small-patch16-224`, `google/vit-base-patch16-224`):
      [`PrunedViTForImageClassification`].
    - "deit" / "pruned_deit" with two heads (`facebook/deit-*-distilled-patch16-224`):
      [`PrunedDeiTForImageClassificationWithTeacher`]; with one head: [`PrunedDeiTForImageClassification`].

    Args:
        name_or_path (`str`): Hub id or local directory.
        **hub_kwargs: passed to `PretrainedConfig.get_config_dict` (`revision`, `token`, `cache_dir`, ...).

    Raises:
        OSError: if the checkpoint cannot be found (transformers' message, which says what to check).
        ValueError: for a checkpoint that is not a ViT / DeiT.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, **hub_kwargs)
    model_type = config_dict.get("model_type")
    architectures = config_dict.get("architectures") or []
    if model_type in ("vit", "pruned_vit"):
        return PrunedViTForImageClassification
    if model_type in ("deit", "pruned_deit"):
        if any("WithTeacher" in a for a in architectures):
            return PrunedDeiTForImageClassificationWithTeacher
        return PrunedDeiTForImageClassification
    raise ValueError(
        f"{name_or_path!r} has model_type {model_type!r}; hf_vitprune prunes ViT ('vit') and DeiT ('deit') "
        "checkpoints, e.g. facebook/deit-small-patch16-224 or facebook/deit-small-distilled-patch16-224."
    )


def load_pruned_model(name_or_path: str, **kwargs) -> PrunedViTPreTrainedModel:
    """Load a ViT / DeiT / PrunedViT checkpoint as the matching PrunedViT image classifier.

    `load_pruned_model("facebook/deit-small-patch16-224", pruning_method="medad", keep_rate=0.5)` is
    `PrunedViTForImageClassification.from_pretrained(...)` with the class picked by [`pruned_class_for`].

    Args:
        name_or_path (`str`): Hub id or local directory.
        **kwargs: pruning fields of [`PrunedViTConfig`] and any `from_pretrained` argument (`revision`,
            `attn_implementation`, `num_labels` with `ignore_mismatched_sizes`, ...).

    Returns:
        The model, in eval mode (as `from_pretrained` leaves it).
    """
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    return pruned_class_for(name_or_path, **hub_kwargs).from_pretrained(name_or_path, **kwargs)
