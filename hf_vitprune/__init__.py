"""hf_vitprune: patch (token) pruning for Vision Transformers as a Hugging Face Transformers model family.

- `prune(model, pruning_method=..., keep_rate=...)`: token reduction in an already-loaded stock model (ViT, DeiT,
  DINOv2, DINOv2 with registers, CLIP vision), in place.
- `PrunedViTConfig` / `PrunedViTForImageClassification` (and the distilled-DeiT classes): the HF-native model family
  for Hub checkpoints, loadable anywhere with `trust_remote_code=True`.
- `PruningSettings` (every setting declared once in `token_reduction.PruningFields`) and `REDUCERS` (the methods by
  `pruning_method` name); `BACKBONES` (the stock families `prune` knows).
- Below the surface: `token_ops` and `token_merging` (the tensor operations: scores, selection, fusion; ToMe's and
  PiToMe's merges), `reducers` (the methods), `token_reduction` (the settings and one forward pass), `methods`
  (names, sources, BibTeX), and the commands (`hf-vitprune --help`).

Importing the package registers the model family with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageClassification`) and marks it for `auto_map`, so `save_pretrained`, `push_to_hub` and Trainer
checkpoints carry the code needed to load them anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .backbones import BACKBONES, prune
from .configuration_pruned_vit import PrunedDeiTConfig, PrunedViTConfig
from .modeling_pruned_vit import (
    PrunedDeiTForImageClassification,
    PrunedDeiTForImageClassificationWithTeacher,
    PrunedDeiTModel,
    PrunedViTForImageClassification,
    PrunedViTModel,
)
from .reducers import REDUCERS
from .token_reduction import PruningSettings

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
    "BACKBONES",
    "REDUCERS",
    "PrunedDeiTConfig",
    "PrunedDeiTForImageClassification",
    "PrunedDeiTForImageClassificationWithTeacher",
    "PrunedDeiTModel",
    "PrunedViTConfig",
    "PrunedViTForImageClassification",
    "PrunedViTModel",
    "PruningSettings",
    "prune",
]
