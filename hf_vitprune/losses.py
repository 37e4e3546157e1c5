"""What the student learns from in `hf-vitprune train`: the soft-target cross-entropy (Mixup / CutMix, label
smoothing) and DeiT's soft distillation from a frozen teacher, both as the Trainer's `compute_loss_func`.

Each loss is a plain function of `(outputs, labels, num_items_in_batch)` that the Trainer calls itself, so it gets the
Trainer's own scaling (gradient accumulation, and the cross-process factor under DDP). Sources: DeiT (Touvron et al.,
ICML 2021, eq. 2) and Hinton et al. (2015) for distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def soft_target_loss(label_smoothing: float):
    """The Trainer `compute_loss_func`: `torch.nn.functional.cross_entropy`, with label smoothing on soft targets.

    Training batches carry `(batch, classes)` targets (Mixup / CutMix / one-hot), which `cross_entropy` takes as class
    probabilities and smooths as `(1 - eps) t + eps / classes` (equal to smoothing before mixing, as timm does).
    Evaluation batches carry class indices and get the plain cross-entropy. With gradient accumulation the Trainer
    passes `num_items_in_batch`, which counts target entries: divided by the class count for soft targets, it is the
    number of images.

    Args:
        label_smoothing (`float`): in [0, 1), applied to training (soft) targets only.

    Returns:
        `Callable[[outputs, labels, num_items_in_batch], torch.Tensor]`: `outputs["logits"]` `(batch, classes)`,
        labels `(batch,)` or `(batch, classes)`; a scalar loss ([`reduce_per_image`]).
    """

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"].float()
        if labels.ndim == 1:
            per_image = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        else:
            per_image = torch.nn.functional.cross_entropy(
                logits, labels.float(), label_smoothing=label_smoothing, reduction="none"
            )
        return reduce_per_image(per_image, labels, num_items_in_batch)

    return loss_fn


def reduce_per_image(per_image: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Mean of a per-image loss `(batch,)`, or its sum over the images of the whole accumulated batch when the Trainer
    passes `num_items_in_batch` (which counts target entries: `classes` per image for soft targets).

    Args:
        per_image (`torch.FloatTensor` of shape `(batch,)`), labels (`(batch,)` class indices or `(batch, classes)`
            soft targets), num_items_in_batch (`int` or `torch.Tensor`, *optional*): from the Trainer.

    Returns:
        `torch.FloatTensor`, a scalar.
    """
    if num_items_in_batch is None:
        return per_image.mean()
    images = num_items_in_batch if labels.ndim == 1 else num_items_in_batch / labels.shape[-1]
    return per_image.sum() / images


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """DeiT's soft distillation, per image: `tau^2 * KL(softmax(t / tau) || softmax(s / tau))`.

    Source: Touvron et al., "Training data-efficient image transformers & distillation through attention" (DeiT),
    ICML 2021, eq. 2; Hinton et al. 2015 for the `tau^2` factor.

    Args:
        student_logits, teacher_logits (`torch.Tensor` of shape `(batch, classes)`).
        temperature (`float`): `tau` > 0.

    Returns:
        `torch.FloatTensor` of shape `(batch,)`.
    """
    student = torch.nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = torch.nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)


@dataclass
class Distillation:
    """A frozen teacher and how the student learns from it (see [`ImageClassificationTrainer`]).

    Attributes:
        teacher (`nn.Module`, *optional*): in eval mode, no gradients; `None` until it exists (a self-teacher is the
            student itself, copied when pruning starts: [`~train.SelfTeacherCallback`]), the student's loss alone.
        teacher_index (`torch.LongTensor` of shape `(student classes,)`): the teacher output of each student output.
        alpha (`float`), temperature (`float`), token_weight (`float`): as the `--distill_*` flags.
        source (`str`): what the teacher is, for the results.
    """

    teacher: torch.nn.Module | None
    teacher_index: torch.Tensor
    alpha: float
    temperature: float
    token_weight: float
    source: str

    def describe(self) -> dict:
        """The settings recorded as `training.distillation` in the results and the model card."""
        return {
            "teacher": self.source,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "class_token_mse_weight": self.token_weight,
            "loss": "(1 - alpha) cross-entropy + alpha tau^2 KL"
            + (" + class_token_mse_weight * MSE(final class-token states, before the last layer norm)"
               if self.token_weight else ""),
        }  # fmt: skip


class DistillationLoss:
    """The Trainer's `compute_loss_func` of a run with a teacher: the student's loss, plus, in training forward passes,
    DeiT's soft distillation (and optionally an MSE between the final class-token states):
    `(1 - alpha) loss + alpha tau^2 KL (+ w MSE)`, per image, reduced as the student's loss is ([`reduce_per_image`]).

    The teacher runs frozen, under `no_grad`, on the same (mixed, augmented) images in the same step: [`watch`]
    installs, once, a forward pre-hook on the student that hands this loss the images of each forward pass (and asks
    the student for its hidden states when the class-token term is on). The Trainer calls this loss itself, so the whole
    loss gets its scaling: with gradient accumulation, and under DDP (with `average_tokens_across_devices`) each process
    divides by the images of the global batch and the Trainer multiplies by the number of processes.

    Args:
        student_loss (`Callable[[outputs, labels, num_items_in_batch], torch.Tensor]`): e.g. [`soft_target_loss`].
        distillation ([`Distillation`]).
    """

    def __init__(self, student_loss, distillation: Distillation):
        self.student_loss = student_loss
        self.distillation = distillation
        self._images: torch.Tensor | None = None
        self._training = False

    def watch(self, model: torch.nn.Module) -> DistillationLoss:
        """Install the forward pre-hook on the student `model` (the module the Trainer trains); returns `self`.
        `self.hook.remove()` takes it off again (e.g. before another Trainer distils into the same model).

        Raises:
            ValueError: for a `DistillationLoss` without a student loss (`student_loss=None`).
        """
        if self.student_loss is None:
            raise ValueError("DistillationLoss needs the student's loss (e.g. soft_target_loss(label_smoothing)).")
        self.hook = model.register_forward_pre_hook(self._see_forward, with_kwargs=True)
        return self

    def _see_forward(self, module, args, kwargs):
        self._images = args[0] if args else kwargs.get("pixel_values")
        self._training = module.training
        if module.training and self.distillation.token_weight > 0:
            kwargs = {**kwargs, "output_hidden_states": True}
        return args, kwargs

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """The loss of one forward pass of the student: `outputs` (`logits` `(batch, classes)`, and `hidden_states`
        with the class-token term), `labels` (class indices `(batch,)` or soft targets `(batch, classes)`).

        Raises:
            RuntimeError: when called before the student's forward pass was seen (`watch` not called on it).
        """
        loss = self.student_loss(outputs, labels, num_items_in_batch=num_items_in_batch)
        if not self._training or self.distillation.teacher is None:  # evaluation, or a teacher still to come
            return loss
        if self._images is None:
            raise RuntimeError("DistillationLoss saw no forward pass of the student: call watch(model) on it first.")
        distillation, images = self.distillation, self._images
        teacher = distillation.teacher.to(images.device)
        tokens = distillation.token_weight > 0
        with torch.no_grad():
            taught = teacher(pixel_values=images, output_hidden_states=tokens)
        teacher_logits = taught.logits[:, distillation.teacher_index.to(taught.logits.device)]
        per_image = distillation_loss(outputs["logits"], teacher_logits, distillation.temperature)
        loss = (1 - distillation.alpha) * loss + distillation.alpha * reduce_per_image(
            per_image, labels, num_items_in_batch
        )
        if tokens:
            student_token, teacher_token = outputs["hidden_states"][-1][:, 0], taught.hidden_states[-1][:, 0]
            mse = (student_token.float() - teacher_token.float()).square().mean(-1)
            loss = loss + distillation.token_weight * reduce_per_image(mse, labels, num_items_in_batch)
        return loss
