"""hf_vitprune: patch (token) pruning for Vision Transformers as a Hugging Face Transformers model family.

Importing the package registers the model family with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageClassification`) and marks it for `auto_map`, so `save_pretrained`, `push_to_hub` and Trainer
checkpoints carry the code needed to load them anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_pruned_vit import PRUNING_METHODS, PrunedDeiTConfig, PrunedViTConfig, exact_keep_count
from .modeling_pruned_vit import (
    PrunedDeiTForImageClassification,
    PrunedDeiTForImageClassificationWithTeacher,
    PrunedDeiTModel,
    PrunedDeiTPreTrainedModel,
    PrunedViTForImageClassification,
    PrunedViTModel,
    PrunedViTPreTrainedModel,
    prune_tokens,
    score_tokens,
)

__version__ = "0.1.0"

AutoConfig.register(PrunedViTConfig.model_type, PrunedViTConfig, exist_ok=True)
AutoConfig.register(PrunedDeiTConfig.model_type, PrunedDeiTConfig, exist_ok=True)
AutoModel.register(PrunedViTConfig, PrunedViTModel, exist_ok=True)
AutoModel.register(PrunedDeiTConfig, PrunedDeiTModel, exist_ok=True)
AutoModelForImageClassification.register(PrunedViTConfig, PrunedViTForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(PrunedDeiTConfig, PrunedDeiTForImageClassificationWithTeacher, exist_ok=True)

PrunedViTConfig.register_for_auto_class()
PrunedDeiTConfig.register_for_auto_class()
PrunedViTModel.register_for_auto_class("AutoModel")
PrunedDeiTModel.register_for_auto_class("AutoModel")
PrunedViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
PrunedDeiTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
PrunedDeiTForImageClassificationWithTeacher.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "PRUNING_METHODS",
    "PrunedDeiTConfig",
    "PrunedDeiTForImageClassification",
    "PrunedDeiTForImageClassificationWithTeacher",
    "PrunedDeiTModel",
    "PrunedDeiTPreTrainedModel",
    "PrunedViTConfig",
    "PrunedViTForImageClassification",
    "PrunedViTModel",
    "PrunedViTPreTrainedModel",
    "exact_keep_count",
    "prune_tokens",
    "score_tokens",
]
