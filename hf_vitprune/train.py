"""`hf-vitprune train`: fine-tune a ViT / DeiT with patch pruning switched on, with the HF Trainer.

Runs as `hf-vitprune train ...`, `python -m hf_vitprune.train ...` or `accelerate launch -m hf_vitprune.train ...`
(one process per GPU, or `--cpu --num_processes N` for DDP on CPU). Arguments are flags, or one JSON / YAML file.
The defaults are the DeiT fine-tuning recipe used by arXiv:2507.19175 (DeiT-S, ImageNet-100, 100 epochs):
RandomResizedCrop 224, horizontal flip, RandAugment(2, 9), Mixup 0.8 / CutMix 1.0 (one of them per batch), label
smoothing 0.1, RandomErasing 0.25; AdamW (0.9, 0.999), weight decay 0.05, cosine schedule with 5 % warm-up,
learning rate 1e-3 per 256 images of global batch. One change: with a pruning setting, the first three quarters of the
run train unpruned and the last quarter pruned (`--pruning_start_epoch`; 0: pruned from the first step as in the
paper), because pruning from the first step of a short fine-tune lost 2-6 points to pruning afterwards
(docs/training.md).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .arguments import ImageDataArguments, ModelSourceArguments, PruningArguments, parse_arguments
from .augmentation import AugmentationEpochCallback, TrainCollator, eval_collator, train_transform
from .checkpoints import check_training_output_dir, push_output_dir, redact_command, resolve_resume_checkpoint
from .losses import Distillation, DistillationLoss, soft_target_loss
from .token_reduction import PruningSettings


@dataclass
class ModelArguments(PruningArguments, ModelSourceArguments):
    """Which checkpoint to start from and how it prunes: the pruning settings ([`~arguments.PruningArguments`]; a flag
    left out keeps the checkpoint's value, the paper's setting for a stock ViT / DeiT), the checkpoint
    ([`~arguments.ModelSourceArguments`], as every command takes it), then the model and schedule options."""

    tie_query_key: str | None = field(
        default=None,
        metadata={"help": "Tie the query and key projections (BSPF's symmetric attention) of a checkpoint that has "
                  "them apart: mean or query, how the shared projection starts."},
    )  # fmt: skip
    patch_stride: int | None = field(
        default=None,
        metadata={"help": "Patch-embedding stride (12 with 16 px patches: overlapping patches, 324 instead of 196). "
                  "A checkpoint with another stride has its position embeddings resized (bicubic)."},
    )  # fmt: skip
    keep_rate_warmup_epochs: float = field(
        default=0.0,
        metadata={
            "help": "EViT-style schedule: the keep rate falls from 1.0 to its target along a cosine over this many "
            "epochs (0: the target from the start). The saved config always holds the target."
        },
    )
    pruning_start_epoch: float | None = field(
        default=None,
        metadata={
            "help": "Train unpruned until this epoch, then with the pruning setting (and its --keep_rate_warmup_epochs "
            "from there). Default: after three quarters of the run (PRUNING_START_FRACTION, the recipe "
            "docs/training.md measured); 0: pruning on from the first step (the paper's recipe). The saved config "
            "always holds the setting."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Start a new classification head when the data set's classes differ from the checkpoint's."},
    )
    distill_from: str | None = field(
        default=None,
        metadata={"help": "Knowledge distillation from a frozen teacher run in the same step: `unpruned` (the starting "
                  "checkpoint with pruning off: nothing to download; its head must cover the data set's classes, "
                  "through --class_list if needed), `self` (the model being trained, copied with pruning off when "
                  "pruning starts at --pruning_start_epoch: the unpruned stage teaches the pruned one) or the folder "
                  "of another model (e.g. the unpruned model fine-tuned on this data)."},
    )  # fmt: skip
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the distillation loss: (1 - a) * cross-entropy + a * soft KL."}
    )
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the soft KL (DeiT's tau)."})
    distill_token_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an extra MSE between the student's and the teacher's final class-token states "
                  "(as DynamicViT distils tokens); 0: logits only."},
    )  # fmt: skip
    allow_pruned_teacher: bool = field(
        default=False, metadata={"help": "Allow --distill_from a model that is itself pruned (off by default)."}
    )


@dataclass
class DataArguments(ImageDataArguments):
    """What to train and evaluate on ([`~arguments.ImageDataArguments`], as every command takes them, then the splits),
    and the augmentation recipe."""

    train_split: str = field(default="train", metadata={"help": "Training split of a Hub dataset (or folder)."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split of a Hub dataset."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Separate evaluation data (local folder or Hub id); default: --dataset_name."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a seeded subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})
    augmentation: str = field(
        default="randaugment",
        metadata={"help": "randaugment (DeiT: RandomResizedCrop + flip + RandAugment), randomcrop (the paper's "
                  "RandomCrop + flip), or none (resize + centre crop, nothing random)."},
    )  # fmt: skip
    mixup_alpha: float = field(default=0.8, metadata={"help": "Mixup alpha (0 disables Mixup)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix alpha (0 disables CutMix)."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the training loss."})
    random_erasing: float = field(default=0.25, metadata={"help": "RandomErasing probability."})
    base_learning_rate: float | None = field(
        default=1e-3,
        metadata={"help": "Learning rate per 256 images of global batch; the learning rate is scaled linearly from "
                  "it. Set to 0 to use --learning_rate as given."},
    )  # fmt: skip

    def __post_init__(self):
        """Check the sample counts when the arguments are parsed.

        Raises:
            ValueError: for `--max_train_samples` or `--max_eval_samples` below 1, naming the flag.
        """
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1 (or left out for every image), got {value}.")


@dataclass
class PruningTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with the DeiT fine-tuning defaults."""

    output_dir: str | None = field(default="outputs/train", metadata={"help": "Where checkpoints and results go."})
    num_train_epochs: float = field(default=100.0, metadata={"help": "Training epochs (the paper: 100)."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Batch size per device for evaluation."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up: steps, or a fraction (< 1) of all steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"help": "Log every this many steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: images are transformed lazily."})
    dataloader_num_workers: int = field(default=4, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a trained model or checkpoints already in --output_dir.",
                  "aliases": ["--overwrite_output", "--overwrite"]},
    )  # fmt: skip
    throughput_batch_size: int = field(
        default=64, metadata={"help": "Batch size of the images/s measurement after training (model card)."}
    )
    throughput_runs: int = field(
        default=10, metadata={"help": "Interleaved rounds of that measurement (pruned and unpruned, one pass each)."}
    )
    hub_token: str | None = field(
        default=None,
        metadata={"help": "Token for --push_to_hub. Prefer the HF_TOKEN environment variable or `hf auth login` (the "
                  "login cache), which are used when this is not given. A token given here is used for the push "
                  "only and never written anywhere: it is redacted from the recorded command line and kept out of "
                  "training_args.bin."},
    )  # fmt: skip
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Continue an interrupted run: `latest` (or `true`) takes the last complete checkpoint in "
                  "--output_dir (incomplete ones, from a run killed while saving, are skipped with a warning); or "
                  "the path of a checkpoint folder."},
    )  # fmt: skip


class KeepRateScheduleCallback(TrainerCallback):
    """The pruning of training steps: none until `start_epoch`, then the keep rate from 1.0 down to the target along a
    cosine over `warmup_epochs` (EViT's schedule), then the target.

    Source: Liang et al., EViT (ICLR 2022), which shrinks the keep rate gradually at the start of training; the late
    start is this project's (docs/training.md). The scheduled setting is set for training steps only; evaluation,
    checkpoints and the final model see the model's own setting.

    Args:
        target_keep_rate (`float` or `list[float]`): the model's keep rate.
        warmup_epochs (`float`): length of the cosine; 0: the target at once.
        start_epoch (`float`): training steps before this epoch run unpruned (`pruning_method=None`).
        pruning_method (`str`, *optional*): the model's method, set back after an unpruned step.
    """

    def __init__(self, target_keep_rate, warmup_epochs: float, start_epoch: float = 0.0, pruning_method=None):
        self.target = target_keep_rate
        self.warmup_epochs = warmup_epochs
        self.start_epoch = start_epoch
        self.pruning_method = pruning_method
        self._changed: dict = {}

    def keep_rate_at(self, epoch: float):
        """The keep rate (or per-layer list) at fractional `epoch`; `None` before `start_epoch` (pruning off)."""
        epoch = epoch - self.start_epoch
        if epoch < 0:
            return None
        progress = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        weight = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0

        def one(target: float) -> float:
            return round(target + (1.0 - target) * weight, 6)

        return [one(t) for t in self.target] if isinstance(self.target, list) else one(self.target)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        rate = self.keep_rate_at(state.epoch or 0.0)
        if rate is None:
            self._changed = {"pruning_method": self.pruning_method}
            model.set_pruning(pruning_method=None)
        elif rate != self.target:
            self._changed = {"keep_rate": self.target}
            model.set_pruning(keep_rate=rate)

    def _restore(self, model):
        if model is not None and self._changed:
            model.set_pruning(**self._changed)
            self._changed = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._restore(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._restore(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._restore(model)


PRUNING_START_FRACTION = 0.75
"""The share of a run `train` trains unpruned before its pruning setting switches on, when `--pruning_start_epoch` is
left out: the recipe docs/training.md chose (fine-tuning with pruning on from the first step lost 1.9 / 5.7 points at
keep 0.7 / 0.5 to pruning afterwards at a 4-epoch budget; pruning for the last quarter was level with it)."""


def resolve_pruning_start(model_args: ModelArguments, training_args, train_images: int, pruning_method) -> float:
    """The epoch pruning switches on: `--pruning_start_epoch` when given, else [`PRUNING_START_FRACTION`] of the run
    (`--num_train_epochs`, or `--max_steps` in epochs of `train_images` images at the global batch), 0 without a
    pruning method.

    Args:
        model_args ([`ModelArguments`]), training_args (`TrainingArguments`): the run's flags.
        train_images (`int`): images in the training split (one epoch).
        pruning_method (`str` or `None`): the model's method after loading (`None`: unpruned).

    Returns:
        `float`: epochs (fractional), rounded to 1e-6. Raises nothing: [`check_pruning_schedule`] checks the flag.
        Source: this project's recipe study (docs/training.md), not the paper (which prunes from the first step).
    """
    if model_args.pruning_start_epoch is not None:
        return model_args.pruning_start_epoch
    if pruning_method is None:
        return 0.0
    epochs = training_args.num_train_epochs
    if training_args.max_steps > 0:
        epochs = training_args.max_steps / max(math.ceil(train_images / global_batch_size(training_args)), 1)
    return round(PRUNING_START_FRACTION * epochs, 6)


def check_pruning_schedule(model_args: ModelArguments, pruning_method: str | None) -> None:
    """Refuse a training schedule of the pruning (`--pruning_start_epoch`, `--keep_rate_warmup_epochs`) that would
    have no effect or cannot be followed.

    Raises:
        ValueError: for a negative value, a schedule without a pruning method, or a keep-rate warm-up for a method that
            does not read the keep rate; naming the flag and what fits.
    """
    from .token_reduction import settings_read_by

    for name in ("pruning_start_epoch", "keep_rate_warmup_epochs"):
        value = getattr(model_args, name)
        if value is None:
            continue
        if not value >= 0:
            raise ValueError(f"--{name} must be >= 0 (epochs), got {value}.")
        if value > 0 and pruning_method is None:
            raise ValueError(f"--{name} {value:g} schedules the pruning, but the model prunes nothing "
                             "(pruning_method none): pass --pruning_method, or leave the flag out.")  # fmt: skip
    if model_args.keep_rate_warmup_epochs > 0 and "keep_rate" not in settings_read_by(pruning_method):
        raise ValueError(
            f"--keep_rate_warmup_epochs schedules the keep rate, which pruning_method={pruning_method!r} does not "
            "read: leave it out (--pruning_start_epoch works with every method)."
        )


class SelfTeacherCallback(TrainerCallback):
    """`--distill_from self`: at the first training step of `start_epoch` (when pruning starts), a frozen copy of the
    model with pruning off becomes the teacher of the distillation; before it the student's loss is used alone.

    A run resumed after `start_epoch` copies the model it resumes from (the teacher of the uninterrupted run is not
    saved in checkpoints); the results record the epoch the teacher was copied at.

    Source: DeiT's soft distillation (Touvron et al., ICML 2021) with the two stages of one run as teacher and student;
    our recipe (docs/training.md).
    """

    def __init__(self, distillation: Distillation, start_epoch: float):
        self.distillation = distillation
        self.start_epoch = start_epoch
        self.copied_at: float | None = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.distillation.teacher is None and model is not None and (state.epoch or 0.0) >= self.start_epoch:
            import copy

            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            teacher.set_pruning(pruning_method=None)
            self.distillation.teacher = teacher
            self.copied_at = state.epoch


TOP_K_SOURCE = "top-1 / top-5 computed from the logits (hf_vitprune.evaluation.top_k_hits)"


def top_k_metrics():
    """`compute_metrics` for the Trainer: top-1 and top-5 accuracy in percent, from the logits with
    [`~evaluation.top_k_hits`] (the function `hf-vitprune evaluate` counts with).

    Computed here rather than through `evaluate.load("accuracy")`, which downloads the metric from the Hub (offline
    runs would then depend on a cache); top-1 is what that metric computes, `mean(argmax == label)`.
    """
    from .evaluation import top_k_hits

    def compute(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        top1, top5 = top_k_hits(torch.as_tensor(logits), torch.as_tensor(labels))
        return {"top1": 100 * top1 / len(labels), "top5": 100 * top5 / len(labels)}

    return compute


def parse_args(argv: list[str] | None = None):
    """Parse flags (or one .json / .yaml file) into `(ModelArguments, DataArguments, PruningTrainingArguments)`."""
    return parse_arguments(
        (ModelArguments, DataArguments, PruningTrainingArguments), argv, prog="hf-vitprune train", description=__doc__
    )


def load_model_for_training(model_args: ModelArguments, class_names: list[str]):
    """Load the checkpoint as a PrunedViT classifier whose head predicts `class_names`.

    Returns:
        `(model, label_ids)`: `label_ids[i]` is the head output of data-set class `i`.

    Raises:
        ValueError: if the checkpoint cannot be loaded (with what to check), or its head does not match the classes
            and `ignore_mismatched_sizes` is not set.
    """
    from transformers import PretrainedConfig

    from .loading import check_model_source, load_pruned_model

    check_model_source(model_args.model_name_or_path)
    try:
        base = PretrainedConfig.get_config_dict(model_args.model_name_or_path)[0]
    except OSError as error:
        raise ValueError(
            f"Cannot load the model {model_args.model_name_or_path!r}: {error}. Check the Hub id (and your network "
            "access: HF_HUB_OFFLINE must be unset to download) or pass a local checkpoint folder."
        ) from error
    id2label = {int(k): v for k, v in (base.get("id2label") or {}).items()}
    label2id = {v: k for k, v in id2label.items()}
    kwargs = dict(model_args.settings(), attn_implementation=model_args.attn_implementation)
    if model_args.patch_stride is not None:
        kwargs["patch_stride"] = model_args.patch_stride
    if model_args.tie_query_key is not None:
        kwargs.update(tie_query_key=True, tied_qk_init=model_args.tie_query_key)
    if set(class_names) <= set(label2id) and len(id2label) == len(class_names):
        return load_pruned_model(model_args.model_name_or_path, **kwargs), [label2id[c] for c in class_names]
    if not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"The checkpoint's head predicts {len(id2label)} classes but the data set has {len(class_names)} "
            f"({class_names[:3]}{'...' if len(class_names) > 3 else ''}), not all of them among the checkpoint's "
            "labels. Pass --ignore_mismatched_sizes to train a new head for the data set's classes."
        )
    new_id2label = dict(enumerate(class_names))
    model = load_pruned_model(
        model_args.model_name_or_path,
        num_labels=len(class_names),
        id2label=new_id2label,
        label2id={v: k for k, v in new_id2label.items()},
        ignore_mismatched_sizes=True,
        **kwargs,
    )
    return model, list(range(len(class_names)))


def load_training_data(data_args: DataArguments, seed: int):
    """The training and evaluation [`ImageData`] of a run.

    Raises:
        ValueError / OSError: for data that cannot be loaded, or evaluation classes absent from the training data.
    """
    from .data import load_image_data

    train_data = load_image_data(
        data_args.dataset_name, data_args.train_split, data_args.image_column, data_args.label_column,
        max_samples=data_args.max_train_samples, seed=seed, data_dir=data_args.data_dir,
        revision=data_args.data_revision, split_flag="--train_split",
    )  # fmt: skip
    eval_data = load_image_data(
        data_args.eval_dataset or data_args.dataset_name, data_args.eval_split, data_args.image_column,
        data_args.label_column, max_samples=data_args.max_eval_samples, seed=seed,
        data_dir=None if data_args.eval_dataset else data_args.data_dir,
        revision=None if data_args.eval_dataset else data_args.data_revision, split_flag="--eval_split",
    )  # fmt: skip
    unknown = [c for c in eval_data.class_names if c not in train_data.class_names]
    if unknown:
        raise ValueError(f"Evaluation classes {unknown[:5]} do not occur in the training data.")
    return train_data, eval_data


def load_teacher(model_args: ModelArguments, data_args: DataArguments, student) -> Distillation | None:
    """The teacher `--distill_from` names, checked against the student before any training.

    Raises:
        ValueError: for a teacher whose image size differs from the student's, whose head does not predict the
            student's classes (with what to pass), that is pruned without `--allow_pruned_teacher`, or bad weights.
    """
    from .data import resolve_label_mapping
    from .loading import check_model_source, load_pruned_model

    source = model_args.distill_from
    if source is None:
        return None
    if not 0 <= model_args.distill_alpha <= 1 or model_args.distill_temperature <= 0:
        raise ValueError("--distill_alpha must lie in [0, 1] and --distill_temperature be > 0.")
    if source == "self":
        if not model_args.pruning_start_epoch > 0:
            raise ValueError(
                "--distill_from self distils the pruned stage from the unpruned one: it needs --pruning_start_epoch "
                "(the epoch pruning starts and the teacher is copied) above 0, or left out (three quarters of the run)."
            )
        return Distillation(
            None, torch.arange(student.config.num_labels), model_args.distill_alpha, model_args.distill_temperature,
            model_args.distill_token_weight, f"the model itself at epoch {model_args.pruning_start_epoch:g}, unpruned",
        )  # fmt: skip
    from transformers import PretrainedConfig

    unpruned = source == "unpruned"
    path = model_args.model_name_or_path if unpruned else source
    check_model_source(path)
    # a stock ViT / DeiT checkpoint is an unpruned teacher (loading it as PrunedViT would add the default pruning)
    stock = "pruning_method" not in PretrainedConfig.get_config_dict(path)[0]
    teacher = load_pruned_model(path, attn_implementation=model_args.attn_implementation)
    if unpruned or stock:
        teacher.set_pruning(pruning_method=None)
    elif teacher.config.pruning_method is not None and not model_args.allow_pruned_teacher:
        raise ValueError(
            f"--distill_from {source}: that model is itself pruned ({teacher.config.pruning_method}); pass "
            "--allow_pruned_teacher to distill from it anyway, or the folder of an unpruned model."
        )
    if teacher.config.image_size != student.config.image_size:
        raise ValueError(
            f"--distill_from {source}: the teacher takes {teacher.config.image_size} px images, the student "
            f"{student.config.image_size} px; distillation feeds both the same images."
        )
    student_classes = [student.config.id2label[i] for i in range(student.config.num_labels)]
    try:
        index = resolve_label_mapping(student_classes, teacher.config.id2label, data_args.class_list)
    except ValueError as error:
        raise ValueError(
            f"--distill_from {source}: the teacher's head does not predict the student's classes ({error})"
        ) from error
    teacher.eval().requires_grad_(False)
    return Distillation(
        teacher, torch.tensor(index), model_args.distill_alpha, model_args.distill_temperature,
        model_args.distill_token_weight, f"{path} with pruning off" if unpruned else path,
    )  # fmt: skip


def global_batch_size(training_args) -> int:
    """Images per optimizer step over all processes (per-device batch x accumulation x world size)."""
    _ = training_args.device  # sets up the distributed state; world_size reads 1 before that
    return (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * max(training_args.world_size, 1)
    )


def build_trainer(
    model, label_ids, train_data, eval_data, preprocessing, model_args, data_args, training_args, distillation=None
):
    """The [`ImageClassificationTrainer`] of a run: datasets with the DeiT recipe's augmentation for training and the
    checkpoint's image-processor preprocessing for evaluation (`preprocessing`, a `data.Preprocessing`, also saved as
    the run's processor), Mixup / CutMix collator, soft-target loss, top-1 / top-5 metrics, keep-rate schedule.

    Sets `training_args.learning_rate` from `--base_learning_rate` (linear scaling per 256 images) when given.
    """
    from .data import TransformedImages

    eval_label_ids = [label_ids[train_data.class_names.index(c)] for c in eval_data.class_names]
    train_set = TransformedImages(
        train_data,
        train_transform(model.config.image_size, preprocessing, data_args.augmentation, data_args.random_erasing),
        label_ids,
        seed=training_args.seed,  # augmentations drawn per (seed, epoch, image): reproducible across a resume
    )
    eval_set = TransformedImages(eval_data, preprocessing.eval_transform(), eval_label_ids)
    if data_args.base_learning_rate:
        training_args.learning_rate = data_args.base_learning_rate * global_batch_size(training_args) / 256
    callbacks = [AugmentationEpochCallback(train_set)]
    check_pruning_schedule(model_args, model.config.pruning_method)
    if distillation is not None and distillation.teacher is None:
        callbacks.append(SelfTeacherCallback(distillation, model_args.pruning_start_epoch))
    if model_args.keep_rate_warmup_epochs > 0 or model_args.pruning_start_epoch > 0:
        callbacks.append(
            KeepRateScheduleCallback(
                model.config.keep_rate,
                model_args.keep_rate_warmup_epochs,
                model_args.pruning_start_epoch,
                model.config.pruning_method,
            )
        )
    return ImageClassificationTrainer(
        eval_data_collator=eval_collator,
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=TrainCollator(model.config.num_labels, data_args.mixup_alpha, data_args.cutmix_alpha),
        compute_loss_func=soft_target_loss(data_args.label_smoothing),
        compute_metrics=top_k_metrics(),
        processing_class=preprocessing.processor,
        callbacks=callbacks,
        distillation=distillation,
    )


def measure_trained_model(model, training_args) -> dict:
    """GMACs of the trained model pruned and unpruned (`model.pruning(pruning_method=None)`, restored afterwards), and
    their images/s and batch-1 latency timed in interleaved rounds ([`measure.time_pruning_settings`]).

    Returns:
        `{"pruned": {"gmacs", "speed"}, "unpruned": {...}, "protocol": str}` (`speed` a
        `measure.InterleavedTiming`; the unpruned model is the reference of the speed-ups).
    """
    from .measure import count_gmacs, time_pruning_settings

    with model.pruning(pruning_method=None):
        unpruned_gmacs = count_gmacs(model)
    variants = [("unpruned", {"pruning_method": None}), ("pruned", {})]
    (unpruned, pruned), protocol = time_pruning_settings(
        model, variants, batch_size=training_args.throughput_batch_size, rounds=training_args.throughput_runs, runs=1
    )
    return {
        "pruned": {"gmacs": count_gmacs(model), "speed": pruned},
        "unpruned": {"gmacs": unpruned_gmacs, "speed": unpruned},
        "protocol": protocol,
    }


def pruning_results(model, measured, train_result, eval_metrics, eval_data, train_data, args, command) -> dict:
    """The run's results as written to `pruning_results.json` (the model card's input).

    Args:
        model: the trained model; measured: from [`measure_trained_model`]; train_result / eval_metrics: the
            Trainer's; eval_data / train_data: the run's [`ImageData`]; args: `(model_args, data_args,
            training_args, preprocessing)`; command: the command line.
    """
    from .measure import device_name
    from .report import tokens_text

    model_args, data_args, training_args, preprocessing = args
    output_dir = training_args.output_dir
    num_patches = model.base_model.embeddings.patch_embeddings.num_patches
    tokens = tokens_text(model.config, num_patches)
    train_images_per_s = train_result.metrics.get("train_samples_per_second")
    return {
        "model_name": os.path.basename(os.path.abspath(output_dir)),
        "repo_id": training_args.hub_model_id or None,
        "base_model": model_args.model_name_or_path,
        "dataset": {
            "id": data_args.dataset_name,
            "name": data_args.eval_dataset or data_args.dataset_name,
            "split": None if os.path.isdir(eval_data.source) else data_args.eval_split,
            "images": len(eval_data),
            "train_images": len(train_data),
        },
        "pruning": {
            **PruningSettings.from_config(model.config).as_dict(),
            "prune_layers": model.config.prune_layers,
            "patch_stride": model.config.patch_stride or model.config.patch_size,
            "tie_query_key": model.config.tie_query_key,
            "tokens": tokens,
        },
        "metrics": {
            "pruned": {
                "top1": eval_metrics["eval_top1"],
                "top5": eval_metrics["eval_top5"],
                "gmacs": measured["pruned"]["gmacs"],
                "images_per_s": measured["pruned"]["speed"].images_per_s,
                "speedup": measured["pruned"]["speed"].speedup,
                "latency_ms": measured["pruned"]["speed"].latency_ms,
                "tokens": tokens,
                "train_images_per_s": train_images_per_s,
            },
            "unpruned": {
                "gmacs": measured["unpruned"]["gmacs"],
                "images_per_s": measured["unpruned"]["speed"].images_per_s,
                "latency_ms": measured["unpruned"]["speed"].latency_ms,
                "tokens": str(num_patches),
            },
        },
        "protocol": {
            "top1": f"{len(eval_data)} images of {eval_data.source}, {preprocessing.describe()}; "
            f"metric: {TOP_K_SOURCE}",
            "gmacs": "fvcore, one image (hf_vitprune.measure.count_gmacs)",
            "throughput": measured["protocol"],
            "machine": device_name(model.device),
        },
        "training": {
            "epochs": training_args.num_train_epochs,
            "seed": training_args.seed,
            "global batch size": global_batch_size(training_args),
            "learning rate": training_args.learning_rate,
            "weight decay": training_args.weight_decay,
            "schedule": f"{getattr(training_args.lr_scheduler_type, 'value', training_args.lr_scheduler_type)}, "
            f"warm-up {training_args.warmup_steps}",
            "augmentation": data_args.augmentation,
            "mixup / cutmix alpha": f"{data_args.mixup_alpha} / {data_args.cutmix_alpha}",
            "label smoothing": data_args.label_smoothing,
            "random erasing": data_args.random_erasing,
            "keep-rate warm-up epochs": model_args.keep_rate_warmup_epochs,
            "pruning start epoch": model_args.pruning_start_epoch,
            "training images": len(train_data),
            "training images/s": train_images_per_s,
        },
        "command": command,
    }


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args, command: str | None = None):
    """Fine-tune, evaluate, save the model, its image processor, metrics, `pruning_results.json` and a model card.

    Returns:
        The results dict written to `pruning_results.json` (the model card's input); `None` on processes other
        than the main one.

    Raises:
        ValueError / OSError: for data, columns, labels or models that cannot be used, before training starts.
        FileExistsError: if `output_dir` already holds a trained model and neither `--resume_from_checkpoint` nor
            `--overwrite_output_dir` says what to do with it.
    """
    from .data import load_preprocessing
    from .model_card import build_model_card

    check_training_output_dir(training_args)
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(training_args)
    # The token and the push stay out of the Trainer: it would write the token into training_args.bin and push
    # every checkpoint; this run pushes its final folder only (push_output_dir), with the token given or HF_TOKEN.
    hub_token, push_to_hub = training_args.hub_token, training_args.push_to_hub
    training_args.hub_token, training_args.push_to_hub = None, False
    train_data, eval_data = load_training_data(data_args, training_args.seed)
    set_seed(training_args.seed)  # before the model: a new head's initialisation is part of the run
    model, label_ids = load_model_for_training(model_args, train_data.class_names)
    preprocessing = load_preprocessing(model_args.model_name_or_path, model.config.image_size)
    model_args.pruning_start_epoch = resolve_pruning_start(
        model_args, training_args, len(train_data), model.config.pruning_method
    )
    distillation = load_teacher(model_args, data_args, model)
    trainer = build_trainer(
        model, label_ids, train_data, eval_data, preprocessing, model_args, data_args, training_args, distillation
    )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    if not trainer.is_world_process_zero():
        return None

    model = trainer.accelerator.unwrap_model(trainer.model)
    measured = measure_trained_model(model, training_args)
    args = (model_args, data_args, training_args, preprocessing)
    results = pruning_results(model, measured, train_result, eval_metrics, eval_data, train_data, args, command)
    results["training"]["distillation"] = distillation.describe() if distillation is not None else None
    if hub_token:  # wherever the token might have reached the record (a repo id, a path), it goes
        results = json.loads(json.dumps(results, default=str).replace(json.dumps(hub_token)[1:-1], "REDACTED"))
    output_dir = training_args.output_dir
    with open(os.path.join(output_dir, "pruning_results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    build_model_card(results).save(os.path.join(output_dir, "README.md"))
    if push_to_hub:
        push_output_dir(output_dir, training_args.hub_model_id or results["model_name"], hub_token)
    return results


class ImageClassificationTrainer(Trainer):
    """`transformers.Trainer` with a separate collator for evaluation batches (no Mixup / CutMix, class-index labels).

    Args:
        eval_data_collator: used by `get_eval_dataloader` / `get_test_dataloader`; `data_collator` stays the
            training collator.
        distillation ([`~losses.Distillation`], *optional*): a frozen teacher; the `compute_loss_func` then becomes
            [`~losses.DistillationLoss`] around the given one, set once here.
    """

    def __init__(self, *args, eval_data_collator=None, distillation: Distillation | None = None, **kwargs):
        if distillation is not None:
            kwargs["compute_loss_func"] = DistillationLoss(kwargs.get("compute_loss_func"), distillation).watch(
                kwargs["model"]
            )
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.distillation = distillation

    def _with_eval_collator(self, make_loader, *args, **kwargs):
        training_collator = self.data_collator
        self.data_collator = self.eval_data_collator or training_collator
        try:
            return make_loader(*args, **kwargs)
        finally:
            self.data_collator = training_collator

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)


def main(argv: list[str] | None = None):
    """Entry point of `hf-vitprune train` / `python -m hf_vitprune.train` / `accelerate launch -m hf_vitprune.train`."""
    model_args, data_args, training_args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    secrets = (training_args.hub_token,)  # the parsed value: redacted however the flag was spelled
    return run_training(
        model_args, data_args, training_args, command="hf-vitprune train " + shlex.join(redact_command(argv, secrets))
    )


if __name__ == "__main__":
    main()
