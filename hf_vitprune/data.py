"""Image data for evaluation and training: local class folders or Hub datasets, label mapping, DeiT preprocessing."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEIT_CROP_PCT = 0.875
"""DeiT evaluation resizes the shorter side to `image_size / 0.875` (256 for 224) before the centre crop."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_WNID = re.compile(r"^n\d{8}$")


@dataclass
class ImageData:
    """A labelled image data set ready for a DataLoader.

    Attributes:
        dataset (`datasets.Dataset`): rows with an undecoded image column (`{"path", "bytes"}`) and an integer label
            column.
        class_names (`list[str]`): the label column's class names, in label order.
        source (`str`): where it came from (folder path, or `hub_id:split`).
        image_column (`str`), label_column (`str`).
        streaming (`bool`): `dataset` is a `datasets.IterableDataset` (read as a stream: no length, no random access).
    """

    dataset: object
    class_names: list[str]
    source: str
    image_column: str = "image"
    label_column: str = "label"
    streaming: bool = False

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError(f"{self.source} is streamed: its length is known only once it has been read.")
        return len(self.dataset)


def _scan_image_folder(path: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and `(file, class index)` pairs of a folder with one sub-folder per class (torchvision's rules)."""
    from torchvision.datasets.folder import find_classes, make_dataset

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"Data folder {path!r} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"{path!r} is a file; pass a folder with one sub-folder of images per class.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(f"Data folder {path!r} cannot be read (permission denied).")
    try:
        classes, class_to_idx = find_classes(str(root))
    except FileNotFoundError as error:
        raise ValueError(
            f"Data folder {path!r} has no class sub-folders: put the images of each class in a sub-folder named "
            f"after the class (e.g. {path}/n01440764/*.JPEG)."
        ) from error
    samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ValueError(
            f"Data folder {path!r} has class sub-folders {classes[:5]}{'...' if len(classes) > 5 else ''} but no "
            f"image files in them (recognised extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return classes, samples


def is_dataset_repository(path: str) -> bool:
    """Whether `path` is a local folder laid out as a Hub dataset repository (a README.md whose YAML header declares
    `configs` or `dataset_info`, or Parquet / Arrow files): such a folder is read by `datasets.load_dataset`, exactly
    as its Hub id would be, rather than as a folder of class sub-folders."""
    root = Path(path)
    if not root.is_dir():
        return False
    readme = root / "README.md"
    if readme.is_file():
        header = readme.read_text(errors="replace").split("---")
        if len(header) > 2 and any(key in header[1] for key in ("configs:", "dataset_info:")):
            return True
    return any(root.glob("**/*.parquet")) or any(root.glob("**/*.arrow"))


def _folder_dataset(path: str, image_column: str, label_column: str):
    """`(datasets.Dataset, class names)` of a folder with one sub-folder per class, images undecoded."""
    import datasets

    classes, samples = _scan_image_folder(path)
    features = datasets.Features(
        {image_column: datasets.Image(decode=False), label_column: datasets.ClassLabel(names=classes)}
    )
    columns = {image_column: [p for p, _ in samples], label_column: [c for _, c in samples]}
    return datasets.Dataset.from_dict(columns, features=features), classes


def _hub_dataset(
    name: str,
    split: str | None,
    image_column: str,
    label_column: str,
    data_dir,
    revision,
    streaming: bool = False,
    split_flag: str = "--split",
):
    """`(datasets.Dataset, class names)` of split `split` of Hub dataset `name`, images undecoded.

    Raises:
        ValueError: without a split, when the dataset cannot be loaded, lacks the columns, or its label column is not
            a `datasets.ClassLabel`; each message says what to pass.
    """
    import datasets

    if split is None:
        raise ValueError(f"{name!r} looks like a Hub dataset id: pass its split, e.g. {split_flag} validation.")
    try:
        dataset = datasets.load_dataset(name, split=split, data_dir=data_dir, revision=revision, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(
            f"Could not load the Hub dataset {name!r} (split {split!r}), and no local folder of that name "
            f"exists: {type(error).__name__}: {error}. Check the id and split, your network access "
            "(HF_HUB_OFFLINE must be unset to download), or pass a local folder with one sub-folder per class."
        ) from error
    missing = [c for c in (image_column, label_column) if c not in (dataset.column_names or dataset.features or ())]
    if missing:
        raise ValueError(
            f"Dataset {name!r} has no column(s) {missing}; its columns are {dataset.column_names}. Pass "
            "--image_column / --label_column."
        )
    label_feature = dataset.features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(
            f"Column {label_column!r} of {name!r} is {label_feature}, not a class label: pass the column that "
            "holds the class index (a datasets.ClassLabel)."
        )
    return dataset.cast_column(image_column, datasets.Image(decode=False)), list(label_feature.names)


SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}


def resolve_split_folder(path: str, split: str | None, split_flag: str = "--split") -> str:
    """For a local folder that holds split sub-folders (`train/`, `val/`, ...), the sub-folder of `split`.

    A folder whose sub-folders are all split names (train, val, validation, valid, test) is a folder of splits, never
    a folder of classes named "train" and "val". `split="validation"` also finds `val/` and `valid/` (and the other
    way round). Any other folder is returned unchanged.

    Raises:
        ValueError: for a folder of splits without the requested split, naming `split_flag` (the command's flag).
    """
    root = Path(path)
    if not root.is_dir():
        return path
    subdirs = {d.name for d in root.iterdir() if d.is_dir()}
    split_names = {name for names in SPLIT_FOLDERS.values() for name in names}
    if not subdirs or not subdirs <= split_names:
        return path
    aliases = next((names for names in SPLIT_FOLDERS.values() if split in names), (split,)) if split else ()
    for name in aliases:
        if name in subdirs:
            check_split_classes(root, name, subdirs)
            return str(root / name)
    asked = f"has no split {split!r}" if split else "is a folder of splits"
    raise ValueError(
        f"{path!r} {asked}; the splits found are {sorted(subdirs)}: pass {split_flag} naming one of them, or point at "
        "the split folder itself."
    )


def check_split_classes(root: Path, split: str, splits: set[str]) -> None:
    """Check that split folder `root/split` holds the same class folders as every other split of `root`.

    Class indices come from the sorted folder names of each split (torchvision's `find_classes`), so a class folder
    missing from one split would shift the index of every class after it.

    Raises:
        ValueError: naming each class folder that one split has and another lacks.
    """

    def classes(name: str) -> set[str]:
        return {d.name for d in (root / name).iterdir() if d.is_dir()}

    here = classes(split)
    for other in sorted(splits - {split}):
        there = classes(other)
        if here != there:
            problems = [f"{sorted(there - here)} of {other!r} missing from {split!r}"] if there - here else []
            problems += [f"{sorted(here - there)} of {split!r} missing from {other!r}"] if here - there else []
            raise ValueError(
                f"{str(root)!r}: the splits hold different class folders ({'; '.join(problems)}). Every split needs "
                "the same class folders (an empty one is fine), or the label index of each class after the missing "
                "one would differ between the splits."
            )


def load_image_data(
    data: str,
    split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    max_samples: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    split_flag: str = "--split",
) -> ImageData:
    """Load a labelled image data set: a local folder with one sub-folder per class, or a Hub dataset.

    A local folder is scanned with torchvision's `find_classes` / `make_dataset` (classes sorted by folder name, files
    by extension, nothing inferred from file names), so every image found is used. A Hub id goes through
    `datasets.load_dataset(data, split=split)` (for example `clane9/imagenet-100`, split `validation`), and so does a
    local copy of a Hub dataset repository ([`is_dataset_repository`]: Parquet shards and a README with `configs`).

    Args:
        data (`str`): folder path or Hub dataset id.
        split (`str`, *optional*): Hub split; required for Hub ids. For a local folder of split folders
            (`train/`, `val/`), the one to read (see [`resolve_split_folder`]); ignored for a folder of classes.
        image_column (`str`), label_column (`str`): column names of a Hub dataset.
        max_samples (`int`, *optional*): keep a random subset of this size (seeded), for quick runs; when streaming,
            the first `max_samples` images.
        seed (`int`): seed of that subset.
        data_dir (`str`, *optional*), revision (`str`, *optional*): for a Hub dataset, the folder of the repository
            to read and the branch / commit (e.g. `data_dir="320px", revision="refs/convert/parquet"` for the Hub's
            Parquet export of a dataset that only has a loading script); ignored for local folders.
        streaming (`bool`): read a Hub dataset (or a local copy of one) as a `datasets` stream, nothing downloaded
            ahead; ignored for a folder of class folders (read file by file anyway).
        split_flag (`str`): the command's flag for `split`, named in the errors (`--split`, `--train_split`,
            `--calibration_split`, ...).

    Returns:
        [`ImageData`] whose image column is not decoded yet (decoding happens in the transform, which names the file
        on failure).

    Raises:
        FileNotFoundError / NotADirectoryError / PermissionError / ValueError: for a missing, unreadable or empty
            folder, or one without class sub-folders.
        ValueError: for a Hub dataset that cannot be loaded, lacks the columns, or whose label is not a class label.
    """
    if is_dataset_repository(data):  # a local copy of a Hub dataset: the same code path as the Hub id
        dataset, classes = _hub_dataset(
            data, split, image_column, label_column, data_dir, revision, streaming, split_flag
        )
        source = f"{data}:{split}"
    elif os.path.exists(data) or data.startswith((".", "/", "~")):
        data = resolve_split_folder(data, split, split_flag)
        dataset, classes = _folder_dataset(data, image_column, label_column)
        source, streaming = str(data), False
    else:
        dataset, classes = _hub_dataset(
            data, split, image_column, label_column, data_dir, revision, streaming, split_flag
        )
        source = f"{data}:{split}" if data_dir is None else f"{data}/{data_dir}:{split}"
    if streaming:
        if max_samples is not None:
            dataset = dataset.take(max_samples)
    elif max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    return ImageData(dataset, classes, source, image_column, label_column, streaming)


BUILTIN_CLASS_LISTS = ("imagenet1k",)
"""Class lists known by name: `imagenet1k`, the ImageNet-1k WordNet ids and class names in the standard index order
(from timm's `ImageNetInfo`)."""


def _synonyms(label: str) -> list[str]:
    """`"tench, Tinca tinca"` -> `["tench, Tinca tinca", "tench", "Tinca tinca"]`: an ImageNet label and its names."""
    parts = [part.strip() for part in str(label).split(",") if part.strip()]
    return [str(label)] + (parts if len(parts) > 1 else [])


def imagenet1k_class_list() -> dict[str, int]:
    """The built-in `imagenet1k` class list: WordNet id (`n01440764`), full label (`tench, Tinca tinca`) and each of
    its comma-separated names (`tench`) -> index in the standard ImageNet-1k order. Names shared by two classes (crane,
    maillot) are left out; their WordNet ids map. Source: timm's `timm.data.ImageNetInfo` (the data files of timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    mapping: dict[str, int] = {}
    shared: set[str] = set()
    for index, wnid in enumerate(info.label_names()):
        mapping[wnid] = index
        for name in _synonyms(info.index_to_description(index)):
            if mapping.get(name, index) != index:
                shared.add(name)
            mapping.setdefault(name, index)
    return {name: index for name, index in mapping.items() if name not in shared}


def read_class_list(path: str) -> dict[str, int]:
    """Read a class list: class name -> output index of the model head.

    `imagenet1k` (no file of that name existing) is the built-in [`imagenet1k_class_list`]. Files have two formats:
    a TSV with a header naming an `index` column and a `wnid` column (and optionally `name`), such as
    `imagenet1k_classes.tsv` (index, WordNet id, name; both the WordNet id and the name map to the index); or plain
    text with one class name per line, the line number (from 0) being the index (e.g. the ImageNet-100 WordNet-id
    list).

    Raises:
        FileNotFoundError: if the file does not exist (and the name is not a built-in list).
        ValueError: if it is empty or a TSV row is malformed.
    """
    if path in BUILTIN_CLASS_LISTS and not Path(path).exists():
        return imagenet1k_class_list()
    if not Path(path).exists():
        raise FileNotFoundError(
            f"Class list {path!r} does not exist: pass a TSV / text file, or a built-in list "
            f"({', '.join(BUILTIN_CLASS_LISTS)})."
        )
    lines = [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"Class list {path!r} is empty.")
    header = lines[0].split("\t")
    mapping: dict[str, int] = {}
    if "index" in header and "wnid" in header:
        index_col, wnid_col = header.index("index"), header.index("wnid")
        name_col = header.index("name") if "name" in header else None
        for number, line in enumerate(lines[1:], start=2):
            cells = line.split("\t")
            try:
                index = int(cells[index_col])
                mapping[cells[wnid_col]] = index
                if name_col is not None:
                    mapping.setdefault(cells[name_col], index)
            except (IndexError, ValueError) as error:
                raise ValueError(f"Class list {path!r}, line {number}: cannot read {line!r} ({error}).") from error
    else:
        mapping = {name.strip(): index for index, name in enumerate(lines)}
    return mapping


def resolve_label_mapping(class_names: Sequence[str], id2label: dict, class_list: str | None = None) -> list[int]:
    """For each data-set class, the index of the model output that predicts it.

    With `class_list` (see [`read_class_list`]) every class name must appear in it, e.g. WordNet-id folders of an
    ImageNet subset mapped onto a 1000-class ImageNet-1k head (`class_list="imagenet1k"`, built in). Without it, the
    class names must be the model's `id2label` names or one of their comma-separated names (`tench` for
    `tench, Tinca tinca`; a name two labels share does not count).

    Args:
        class_names (`Sequence[str]`): the data set's classes, in label order.
        id2label (`dict[int, str]`): the model config's labels.
        class_list (`str`, *optional*): path of a class list.

    Returns:
        `list[int]` of length `len(class_names)`.

    Raises:
        ValueError: naming every class that cannot be mapped, or an index beyond the model head, and what to pass.
    """
    num_labels = len(id2label)
    if class_list is not None:
        mapping = read_class_list(class_list)
        unknown = [name for name in class_names if name not in mapping]
        if unknown:
            raise ValueError(
                f"Class folder(s) {unknown} are not in the class list {class_list!r}: rename them to the list's "
                "class ids (e.g. WordNet ids such as n01440764) or pass the class list that names them."
            )
        indices = [mapping[name] for name in class_names]
        too_big = [(n, i) for n, i in zip(class_names, indices) if i >= num_labels]
        if too_big:
            raise ValueError(
                f"The class list maps {too_big[:3]} beyond the model's {num_labels} outputs: it does not describe "
                "this model's head."
            )
        return indices
    label2id: dict[str, int] = {}
    ambiguous: set[str] = set()
    for index, label in sorted(id2label.items(), key=lambda item: int(item[0])):
        for name in _synonyms(label):  # "tench, Tinca tinca" also answers to "tench"
            if label2id.get(name, int(index)) != int(index):
                ambiguous.add(name)
            label2id.setdefault(name, int(index))
    unknown = [name for name in class_names if name not in label2id or name in ambiguous]
    if unknown:
        hint = (
            " These look like WordNet ids: for an ImageNet-1k model pass --class_list imagenet1k (the built-in list)."
            if all(_WNID.match(n) for n in class_names)
            else ""
        )
        raise ValueError(
            f"Cannot map data-set class(es) {unknown[:5]}{'...' if len(unknown) > 5 else ''} to the model's "
            f"{num_labels} labels (its id2label has no such name, or two labels share it).{hint} Pass --class_list, "
            "or evaluate a model fine-tuned on these classes."
        )
    return [label2id[name] for name in class_names]


_PIL_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


@dataclass
class Preprocessing:
    """Evaluation preprocessing read from an image processor, so that one source decides it everywhere.

    Attributes:
        processor: the transformers image processor (what training saves next to the model and what `pipeline`
            uses).
        source (`str`): where it came from (the checkpoint, or the DeiT default when the checkpoint has none).
    """

    processor: object
    source: str

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.processor.image_mean) if self.processor.do_normalize else (0.0, 0.0, 0.0)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.processor.image_std) if self.processor.do_normalize else (1.0, 1.0, 1.0)

    def resize_size(self) -> int | tuple[int, int] | None:
        """`v2.Resize`'s size: an int (shorter side) or `(height, width)`; `None` when the processor does not resize.

        Raises:
            ValueError: for a size setting torchvision's Resize cannot express (e.g. only `longest_edge`).
        """
        if not self.processor.do_resize:
            return None
        size = self.processor.size
        if getattr(size, "shortest_edge", None):
            return int(size.shortest_edge)
        if getattr(size, "height", None) and getattr(size, "width", None):
            return int(size.height), int(size.width)
        raise ValueError(f"Unsupported image processor size {size}: expected shortest_edge or height and width.")

    def crop_size(self) -> tuple[int, int] | None:
        """`(height, width)` of the centre crop, or `None` without one."""
        if not getattr(self.processor, "do_center_crop", False):
            return None
        crop = self.processor.crop_size
        return int(crop.height), int(crop.width)

    def interpolation(self) -> v2.InterpolationMode:
        """The processor's resampling filter (a PIL constant) as torchvision's interpolation mode."""
        resample = self.processor.resample
        name = _PIL_RESAMPLE.get(int(resample), "BICUBIC") if not isinstance(resample, str) else resample.upper()
        return getattr(v2.InterpolationMode, name)

    def describe(self) -> str:
        """One line for result protocols, e.g. `resize 256x256 bicubic, centre crop 224x224, mean [...], std [...]`."""
        resize = self.resize_size()
        resize_text = "no resize" if resize is None else (
            f"resize shorter side {resize}" if isinstance(resize, int) else f"resize {resize[0]}x{resize[1]}"
        )  # fmt: skip
        crop = self.crop_size()
        crop_text = "no crop" if crop is None else f"centre crop {crop[0]}x{crop[1]}"
        return (
            f"{resize_text} {self.interpolation().value}, {crop_text}, mean {list(self.mean)}, std {list(self.std)} "
            f"({self.source})"
        )

    def eval_transform(self) -> v2.Compose:
        """The processor's resize, centre crop, rescale and normalisation with torchvision transforms v2.

        Input: a PIL image (RGB). Output: `torch.FloatTensor` of shape `(3, H, W)`. The operations are those of the
        transformers image processor's torchvision backend (the default backend of `AutoImageProcessor` and
        `pipeline`): resize of the uint8 image, antialiased, then centre crop, scaling to [0, 1] and normalisation.
        """
        steps = [v2.ToImage()]
        resize = self.resize_size()
        if resize is not None:
            steps.append(v2.Resize(resize, interpolation=self.interpolation(), antialias=True))
        crop = self.crop_size()
        if crop is not None:
            steps.append(v2.CenterCrop(crop))
        factor = self.processor.rescale_factor if self.processor.do_rescale else 1.0
        if abs(factor - 1 / 255) < 1e-12:
            steps.append(v2.ToDtype(torch.float32, scale=True))
        else:
            steps += [v2.ToDtype(torch.float32, scale=False), v2.Lambda(lambda x: x * factor)]
        steps.append(v2.Normalize(mean=list(self.mean), std=list(self.std)))
        return v2.Compose(steps)


def default_image_processor(image_size: int = 224):
    """DeiT's evaluation preprocessing as a transformers image processor, for checkpoints without one: resize the
    shorter side to `int(image_size / 0.875)` (256 for 224), bicubic, centre crop `image_size`, ImageNet mean / std.
    Source: DeiT (Touvron et al. 2021) / timm `transforms_imagenet_eval` (crop_pct 0.875)."""
    from transformers import DeiTImageProcessor

    return DeiTImageProcessor(
        size={"shortest_edge": int(image_size / DEIT_CROP_PCT)},
        crop_size={"height": image_size, "width": image_size},
        resample=3,  # PIL.Image.BICUBIC
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def load_preprocessing(name_or_path: str, image_size: int = 224) -> Preprocessing:
    """The evaluation preprocessing of checkpoint `name_or_path`: its image processor (`AutoImageProcessor`), or
    [`default_image_processor`] when it has none.

    Raises:
        ValueError: for an image processor whose resize [`Preprocessing`] cannot express.
    """
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        preprocessing = Preprocessing(processor, f"{name_or_path} image processor")
    except (OSError, ValueError):
        preprocessing = Preprocessing(default_image_processor(image_size), "DeiT default (checkpoint has no processor)")
    preprocessing.resize_size()  # fails early, with the reason, for a size it cannot express
    return preprocessing


def eval_transform(image_size: int = 224) -> v2.Compose:
    """[`default_image_processor`]'s evaluation transform (DeiT: resize the shorter side to 256, centre crop 224, for
    224 px): for code and tests that have no checkpoint processor at hand. Input: RGB PIL image; output
    `(3, image_size, image_size)` float."""
    return Preprocessing(default_image_processor(image_size), "DeiT default").eval_transform()


_PIL_CONVERTS = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
"""Modes PIL itself converts to RGB (`Image.convert("RGB")`: palette looked up, alpha dropped, CMYK / YCbCr / LAB / HSV
converted, 1-bit and 8-bit greyscale replicated)."""


def to_rgb(image, name: str = "<image>"):
    """An 8-bit RGB PIL image of `image`, whatever its mode, by its value range.

    - 8-bit modes, palette, alpha, CMYK, YCbCr, LAB, HSV: PIL's own `convert("RGB")` ([`_PIL_CONVERTS`]).
    - 16-bit greyscale (`I;16`, `I;16B`, `I;16L`, `I;16N`): divided by 257 (65535 -> 255), rounded.
    - 32-bit integer (`I`, as PIL opens many 16-bit PNGs): values in 0..255 kept, in 0..65535 divided by 257.
    - 32-bit float (`F`): values in 0..1 multiplied by 255, in 0..255 kept.

    Source: PIL's modes (https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes); `convert("RGB")` alone
    clips 16-bit and float values to 0..255, turning 16-bit pictures white and 0..1 floats black.

    Args:
        image (`PIL.Image.Image`): any mode.
        name (`str`): the file, for messages.

    Raises:
        ValueError: naming the file and the mode, for a mode or value range that cannot be read as an 8-bit picture
            (e.g. negative or above-65535 integers, floats outside 0..255, a mode PIL has no RGB conversion for).
    """
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode in _PIL_CONVERTS:
        return image.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F" and low >= 0 and high <= 1:
            scale = 255.0
        elif low >= 0 and high <= 255 and not mode.startswith("I;16"):
            scale = 1.0
        elif mode != "F" and low >= 0 and high <= 65535:
            scale = 1 / 257
        else:
            raise ValueError(
                f"Cannot read image {name}: mode {mode} with values in [{low:g}, {high:g}] is neither 8-bit "
                "(0..255), 16-bit (0..65535) nor a 0..1 float picture. Convert it to an 8-bit RGB image first."
            )
        grey = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    raise ValueError(
        f"Cannot read image {name}: PIL mode {mode} has no conversion to 8-bit RGB here. Convert it to an 8-bit RGB "
        "image first."
    )


def open_rgb(image: dict | object):
    """Decode one image-column value to an 8-bit RGB PIL image ([`to_rgb`]: every PIL mode by its value range).

    Args:
        image: a `{"path", "bytes"}` dict (undecoded `datasets.Image`) or a PIL image.

    Raises:
        ValueError: naming the file when it cannot be decoded (a decompression bomb included), or its mode or value
            range cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return to_rgb(image)
    path, data = image.get("path"), image.get("bytes")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as opened:
            return to_rgb(opened, path or "<bytes>")
    except Image.DecompressionBombError as error:  # not an OSError: PIL refuses it before decoding
        raise ValueError(
            f"Cannot read image {path or '<bytes>'}: it is larger than PIL's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels): {error}"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read image {path or '<bytes>'}: {error}") from error


class TransformedImages(torch.utils.data.Dataset):
    """A torch view of [`ImageData`] that decodes, converts to RGB and transforms each image.

    Item: `(pixel_values (3, H, W) float32, label int)` where the label is remapped through `label_ids` if given.

    Args:
        data ([`ImageData`]), transform (callable on an RGB PIL image), label_ids (`Sequence[int]`, *optional*).
        skip_unreadable (`bool`): an image that cannot be decoded gives the item `None` (and a warning naming the
            file) instead of an error; [`collate_skipping`] drops such items and counts them. Default: stop.
        skip_flag (`str`, *optional*): the command's flag that sets `skip_unreadable`, suggested in the error (a
            command without one suggests repairing or removing the file).
        seed (`int`, *optional*): make random transforms reproducible: item `index` of epoch `e` is transformed under
            torch's generator seeded from `(seed, e, index)` (see [`sample_seed`]), whatever ran before it, so a run
            resumed from a checkpoint draws the augmentations the uninterrupted run drew. Set the epoch with
            `set_epoch` (it is shared with DataLoader workers, persistent ones included). With a seed the item is
            `(pixel_values, label, sample_seed)`.
        with_ids (`bool`): items are `(pixel_values, label, index, image_seed)` ([`image_seed`]), for evaluation
            that follows each image across processes ([`collate_with_ids`]).
    """

    def __init__(
        self,
        data: ImageData,
        transform,
        label_ids: Sequence[int] | None = None,
        skip_unreadable: bool = False,
        seed: int | None = None,
        with_ids: bool = False,
        skip_flag: str | None = None,
    ):
        self.skip_flag = skip_flag
        self.with_ids = with_ids
        self.data = data
        self.transform = transform
        self.label_ids = list(label_ids) if label_ids is not None else None
        self.skip_unreadable = skip_unreadable
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()  # seen by forked and persistent workers

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next items draw (used with `seed`)."""
        self._epoch[0] = int(epoch)

    def streamed(self) -> torch.utils.data.IterableDataset:
        """The items of a streamed data set ([`ImageData`] with `streaming`), as a torch `IterableDataset`: item `i`
        of the stream is `self[i]` (with `with_ids`, `i` is the position in this process's part of the stream)."""
        return _StreamedImages(self)

    def __len__(self) -> int:
        return len(self.data.dataset)

    def __getitem__(self, index: int):
        return self.item(self.data.dataset[index], index)

    def item(self, row: dict, index: int):
        """The item of data-set row `row` (at position `index`): decoded, converted, transformed."""
        label = int(row[self.data.label_column])
        if self.label_ids is not None:
            label = self.label_ids[label]
        try:
            image = open_rgb(row[self.data.image_column])
        except ValueError as error:
            if not self.skip_unreadable:
                hint = (
                    f"pass {self.skip_flag} to skip and count such images" if self.skip_flag else "repair or remove it"
                )
                raise ValueError(f"{error} ({hint})") from error
            warnings.warn(f"skipped: {error}", stacklevel=2)
            return None
        if self.with_ids:
            return self.transform(image), label, index, image_seed(row[self.data.image_column])
        if self.seed is None:
            return self.transform(image), label
        seed = sample_seed(self.seed, int(self._epoch[0]), index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label, seed


class _StreamedImages(torch.utils.data.IterableDataset):
    """[`TransformedImages`] over a `datasets.IterableDataset` (see `TransformedImages.streamed`)."""

    def __init__(self, images: TransformedImages):
        self.images = images

    def __iter__(self):
        dataset = self.images.data.dataset
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:  # DataLoader workers: each reads its own part of the stream
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, info.id, info.num_workers)
        for index, row in enumerate(dataset):
            yield self.images.item(row, index)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of item `index` in epoch `epoch` of a run seeded with `seed`: distinct for every
    `(epoch, index)` pair (indices below 10,000,019, epochs below 1,000,003), non-negative, below 2**63."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


def image_seed(image: dict | object) -> int:
    """A seed that names one image wherever it is read: the CRC-32 of its file path, or of its bytes when it has none
    (a Hub dataset row), or of its pixels for an in-memory PIL image. Used for random pruning in evaluation, so that
    an image gets the same draw in every process and batch."""
    import zlib

    if isinstance(image, dict):
        key = image.get("path") or image.get("bytes") or b""
        return zlib.crc32(key.encode() if isinstance(key, str) else key)
    return zlib.crc32(image.tobytes())


def collate_with_ids(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack `(pixel_values, label, index, image_seed)` items ([`TransformedImages`] with `with_ids`), dropping
    `None` (unreadable images).

    Returns:
        `(pixel_values (n, 3, H, W), labels (n,), indices (n,), seeds (n,), skipped)`.
    """
    kept = [item for item in items if item is not None]
    pixel_values, labels, skipped = collate_skipping([item[:2] for item in kept])
    indices = torch.tensor([item[2] for item in kept], dtype=torch.long)
    seeds = torch.tensor([item[3] for item in kept], dtype=torch.long)
    return pixel_values, labels, indices, seeds, skipped + len(items) - len(kept)


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack `(pixel_values, label)` items, dropping `None` (unreadable images).

    Returns:
        `(pixel_values (n, 3, H, W), labels (n,), skipped)`; `n` may be 0 when every image was unreadable.
    """
    kept = [item for item in items if item is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([item[0] for item in kept]), torch.tensor([item[1] for item in kept]), skipped
