"""Load any ViT / DeiT checkpoint as the matching PrunedViT class."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from transformers import PretrainedConfig

from .modeling_pruned_vit import (
    PrunedDeiTForImageClassification,
    PrunedDeiTForImageClassificationWithTeacher,
    PrunedViTForImageClassification,
    PrunedViTPreTrainedModel,
)


def check_model_source(name_or_path: str) -> None:
    """Fail early, in one line, for a model that is neither an existing local folder nor a possible Hub id.

    A name that cannot be a Hub id (`./x`, `/abs/path`, `runs/train/x` with more than one slash, ...) must be an
    existing folder; a Hub id (`owner/name`) is left to `from_pretrained`.

    Raises:
        FileNotFoundError: for a local-looking path that does not exist.
        NotADirectoryError: for a file where a checkpoint folder is expected.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise NotADirectoryError(f"{name_or_path!r} is a file: pass the folder that holds config.json.")
    try:
        validate_repo_id(name_or_path)
        looks_local = name_or_path.startswith((".", "~", os.sep))
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local folder nor a Hub model id (owner/name): no such folder exists "
            f"(from {os.getcwd()}). Check the path, or pass a Hub id such as facebook/deit-small-patch16-224."
        )


def damaged_weights_error(name_or_path: str, error: Exception) -> ValueError:
    """The one-line error for weights that cannot be read (a truncated or damaged safetensors file)."""
    folder = Path(name_or_path)
    files = sorted(str(p) for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    where = ", ".join(files) or name_or_path
    return ValueError(
        f"cannot read the weights in {where}: the file is truncated or damaged ({error}). Copy or download the "
        "checkpoint again."
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

    Raises:
        FileNotFoundError / NotADirectoryError: for a local path that does not exist or is a file
            ([`check_model_source`]).
        ValueError: for a checkpoint that is not a ViT / DeiT, or whose weights file is truncated or damaged.
        OSError: from transformers, for a Hub id that cannot be found or downloaded.
        ValueError: naming `pytorch_model.bin` when `torch.load(weights_only=True)` refuses it (objects that are
            not tensors: such a file can run code when loaded).
    """
    from safetensors import SafetensorError

    check_model_source(name_or_path)
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    model_class = pruned_class_for(name_or_path, **hub_kwargs)
    try:
        return model_class.from_pretrained(name_or_path, **kwargs)
    except SafetensorError as error:
        raise damaged_weights_error(name_or_path, error) from error
    except pickle.UnpicklingError as error:  # torch.load(weights_only=True) refused pytorch_model.bin
        from .checkpoints import refused_pickle_error

        raise refused_pickle_error(f"{name_or_path}/pytorch_model.bin", error) from None
