"""Image folders, Hub-id handling, class lists and label mapping, DeiT preprocessing."""

import os

import pytest
import torch
from conftest import IMAGENET1K_CLASSES, make_image_folder, needs_shared
from PIL import Image

from hf_vitprune.data import (
    TransformedImages,
    eval_transform,
    load_image_data,
    read_class_list,
    resolve_label_mapping,
)


def test_folder_classes_are_sorted_and_every_image_is_found(tmp_path):
    root = make_image_folder(tmp_path / "val", {"zebra": 2, "apple": 3})
    # file names that datasets' imagefolder would read as a split (it keeps only "*val*" files): all must count
    Image.new("RGB", (8, 8)).save(root / "apple" / "ILSVRC2012_val_0001.JPEG")
    data = load_image_data(str(root))
    assert data.class_names == ["apple", "zebra"]
    assert len(data) == 6
    labels = sorted(data.dataset["label"])
    assert labels == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_greyscale_rgba_and_other_modes_become_rgb(tmp_path, mode):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    image = Image.new("RGB", (20, 10), (10, 200, 30)).convert(mode) if mode != "I;16" else Image.new(mode, (20, 10))
    image.save(root / "a" / ("x.tif" if mode in ("CMYK", "I;16") else "x.png"))
    data = load_image_data(str(root))
    pixel_values, label = TransformedImages(data, eval_transform(16))[0]
    assert pixel_values.shape == (3, 16, 16) and pixel_values.dtype == torch.float32 and label == 0


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_data(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_data(str(tmp_path / "empty"))
    (tmp_path / "noimages" / "cls").mkdir(parents=True)
    (tmp_path / "noimages" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_image_data(str(tmp_path / "noimages"))
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_image_data(str(tmp_path / "file.jpg"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder, so permissions cannot be tested")
def test_unreadable_folder(tmp_path):
    root = make_image_folder(tmp_path / "locked", {"a": 1})
    root.chmod(0)
    try:
        with pytest.raises(PermissionError):
            load_image_data(str(root))
    finally:
        root.chmod(0o755)


def test_corrupt_image_names_the_file(tmp_path):
    root = make_image_folder(tmp_path / "data", {"a": 1})
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    data = load_image_data(str(root))
    dataset = TransformedImages(data, eval_transform(16))
    broken = [i for i in range(len(data)) if data.dataset[i]["image"]["path"].endswith("broken.jpg")][0]
    with pytest.raises(ValueError, match="broken.jpg"):
        dataset[broken]


def test_hub_id_needs_a_split_and_fails_clearly_offline():
    with pytest.raises(ValueError, match="split"):
        load_image_data("clane9/imagenet-100", split=None)
    with pytest.raises(ValueError, match="Could not load the Hub dataset 'clane9/imagenet-100'"):
        load_image_data("clane9/imagenet-100", split="validation")


def test_class_list_formats(tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("index\twnid\tname\n0\tn01\ttench\n1\tn02\tgoldfish\n")
    assert read_class_list(str(tsv)) == {"n01": 0, "tench": 0, "n02": 1, "goldfish": 1}
    plain = tmp_path / "wnids.txt"
    plain.write_text("n02\nn01\n")
    assert read_class_list(str(plain)) == {"n02": 0, "n01": 1}
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_class_list(str(tmp_path / "empty.txt"))


@needs_shared
def test_wordnet_folders_map_onto_imagenet1k_indices():
    indices = resolve_label_mapping(
        ["n01440764", "n03888257"], {i: str(i) for i in range(1000)}, str(IMAGENET1K_CLASSES)
    )
    assert indices == [0, 701]  # tench, parachute
    with pytest.raises(ValueError, match=r"\['n99999999'\] are not in the class list"):
        resolve_label_mapping(["n01440764", "n99999999"], {i: str(i) for i in range(1000)}, str(IMAGENET1K_CLASSES))


def test_mapping_without_a_class_list_uses_id2label_and_hints_for_wordnet_ids(tmp_path):
    assert resolve_label_mapping(["cat", "dog"], {0: "dog", 1: "cat"}) == [1, 0]
    with pytest.raises(ValueError, match="--class_list"):
        resolve_label_mapping(["n01440764"], {0: "tench"})
    class_list = tmp_path / "three.txt"
    class_list.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="beyond the model's 2 outputs"):
        resolve_label_mapping(["c"], {0: "x", 1: "y"}, str(class_list))


def test_eval_transform_is_resize_256_centre_crop_224():
    from hf_vitprune.data import Preprocessing, default_image_processor

    image = Image.new("RGB", (512, 256), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 256))  # a blue band the 224 centre crop of the 512x256 resize cuts off
    processor = default_image_processor(224)
    processor.do_normalize = False
    x = Preprocessing(processor, "test").eval_transform()(image)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, 0.0, 0.0])[:, None], atol=0.02)
