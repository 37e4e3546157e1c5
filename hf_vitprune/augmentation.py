"""The training data pipeline of `hf-vitprune train`: the DeiT recipe's augmentation and the Mixup / CutMix collator.

Built from torchvision's transforms v2 (RandomResizedCrop, RandAugment, RandomErasing, MixUp, CutMix); every random draw
is seeded from `(seed, epoch, image index)` or from the batch's images, so a resumed run draws what the uninterrupted
one drew. Sources: Touvron et al., DeiT (ICML 2021) for the recipe; arXiv:2507.19175 for its RandomCrop variant.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torchvision.transforms import v2
from transformers import TrainerCallback


class AugmentationEpochCallback(TrainerCallback):
    """Tells a seeded `data.TransformedImages` which epoch starts, so each epoch draws new augmentations and a
    resumed run draws those of the uninterrupted one (the epoch is `floor(state.epoch)`: a run resumed mid-epoch
    continues that epoch)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-9))


def train_transform(image_size: int, preprocessing, augmentation: str, random_erasing: float) -> v2.Compose:
    """DeiT training augmentation with torchvision transforms v2 (input: RGB PIL image; output `(3, H, W)` float).

    `randaugment`: RandomResizedCrop `image_size` (bicubic) + flip + RandAugment(2, 9); `randomcrop`: the evaluation
    resize of `preprocessing` (a `data.Preprocessing`, the checkpoint's image processor) + RandomCrop + flip (the
    paper's); `none`: the evaluation resize and centre crop. Then scaling and the processor's normalisation, and
    RandomErasing with probability `random_erasing`. Source: DeiT (Touvron et al. 2021) / timm's training transforms.

    Raises:
        ValueError: for an unknown `augmentation`.
    """
    resize = v2.Resize(preprocessing.resize_size(), interpolation=preprocessing.interpolation(), antialias=True)
    if augmentation == "randaugment":
        spatial = [
            v2.RandomResizedCrop(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            # on tensors torchvision's RandAugment interpolates bilinearly (timm, on PIL images: bicubic)
            v2.RandAugment(num_ops=2, magnitude=9, interpolation=v2.InterpolationMode.BILINEAR),
        ]
    elif augmentation == "randomcrop":
        spatial = [resize, v2.RandomCrop(image_size), v2.RandomHorizontalFlip()]
    elif augmentation == "none":
        spatial = [resize, v2.CenterCrop(image_size)]
    else:
        raise ValueError(f"--augmentation must be randaugment, randomcrop or none, got {augmentation!r}.")
    normalize = v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))
    tail = [v2.ToDtype(torch.float32, scale=True), normalize]
    if random_erasing > 0:
        tail.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose([v2.ToImage(), *spatial, *tail])


class TrainCollator:
    """Stacks `(pixel_values, label)` items into a batch and applies Mixup or CutMix (one, chosen per batch).

    Labels come out as `(batch, num_classes)` float targets (one-hot without mixing), so the loss can smooth them.
    Items `(pixel_values, label, sample_seed)` (a seeded `data.TransformedImages`) make the mix reproducible: it is
    drawn under a generator seeded from the batch's sample seeds. Source: torchvision transforms v2 MixUp / CutMix /
    RandomChoice, as timm's Mixup applies one of them per batch.
    """

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float):
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None
        self.num_classes = num_classes

    def __call__(self, items):
        pixel_values = torch.stack([item[0] for item in items])
        labels = torch.tensor([item[1] for item in items])
        if self.mix is None:
            one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()
            return {"pixel_values": pixel_values, "labels": one_hot}
        if len(items[0]) < 3:  # unseeded items: mix with torch's global generator
            pixel_values, labels = self.mix(pixel_values, labels)
            return {"pixel_values": pixel_values, "labels": labels}
        # seeded items (data.TransformedImages with a seed): the mix is drawn from the batch's own items, so a resumed
        # run mixes each batch as the uninterrupted run did
        digest = hashlib.blake2b(repr([item[2] for item in items]).encode(), digest_size=8).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest, "little") >> 1)
            pixel_values, labels = self.mix(pixel_values, labels)
        return {"pixel_values": pixel_values, "labels": labels}


def eval_collator(items):
    """Stacks `(pixel_values, label)` items; labels stay class indices."""
    return {"pixel_values": torch.stack([i[0] for i in items]), "labels": torch.tensor([i[1] for i in items])}
