"""Every PIL mode reaches the model as the 8-bit picture it holds: 16-bit and float images are read by their value
range (PIL's own `convert("RGB")` clips them to white or black), and images PIL refuses to open (decompression bombs)
are one clear line, or counted with `--skip_unreadable`."""

import json

import numpy as np
import pytest
from conftest import DEIT_TINY, IMAGENET1K_CLASSES, IMAGENETTE, needs_shared
from PIL import Image

from hf_vitprune.cli import main as cli_main
from hf_vitprune.data import open_rgb, to_rgb


def test_16_bit_integer_and_float_greyscale_read_as_their_8_bit_picture():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.asarray(Image.fromarray(grey, "L").convert("RGB"))
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    as_int = Image.fromarray(grey.astype(np.int32) * 257)  # how PIL opens many 16-bit PNGs
    small_int = Image.fromarray(grey.astype(np.int32))  # 0..255 in a 32-bit mode
    unit_float = Image.fromarray(grey.astype(np.float32) / 255, "F")
    byte_float = Image.fromarray(grey.astype(np.float32), "F")
    for image in (sixteen, as_int, small_int, unit_float, byte_float):
        assert np.array_equal(np.asarray(to_rgb(image)), expected), image.mode


def test_modes_pil_converts_keep_pils_conversion():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
    for mode in ("L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "1"):
        image = rgb.convert(mode)
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB"))), mode


def test_values_no_picture_holds_are_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"Cannot read image x.tif: mode F with values in \[-1, 2\]"):
        to_rgb(Image.fromarray(np.array([[-1.0, 2.0]], dtype=np.float32), "F"), "x.tif")
    with pytest.raises(ValueError, match="mode I with values in"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I"))


def test_a_decompression_bomb_is_one_clear_line(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x the limit: PIL raises
    with pytest.raises(ValueError, match=r"Cannot read image .*bomb.png: it is larger than PIL's decompression-bomb"):
        open_rgb({"path": str(path), "bytes": None})


@needs_shared
@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_real_photographs_in_16_bit_and_float_give_the_8_bit_top1(tmp_path, mode):
    """Real Imagenette photographs as 8-bit greyscale PNGs and as the same pictures in 16-bit PNG / float TIFF (0..1):
    the same top-1 and top-5 for every variant (the pixels reaching the model are the same, so the logits are)."""
    eight, other = tmp_path / "eight", tmp_path / "other"
    for wnid in ("n01440764", "n02102040"):
        (eight / wnid).mkdir(parents=True)
        (other / wnid).mkdir(parents=True)
        for source in sorted((IMAGENETTE / "val" / wnid).iterdir())[:8]:
            grey = np.asarray(Image.open(source).convert("L").resize((160, 160)))
            Image.fromarray(grey, "L").save(eight / wnid / f"{source.stem}.png")
            if mode == "I;16":
                Image.fromarray(grey.astype(np.uint16) * 257).save(other / wnid / f"{source.stem}.png")
            else:
                Image.fromarray(grey.astype(np.float32) / 255, "F").save(other / wnid / f"{source.stem}.tif")
    results = {}
    for name, folder in (("eight", eight), ("other", other)):
        argv = ["evaluate", "--model_name_or_path", str(DEIT_TINY), "--dataset_name", str(folder), "--class_list",
                str(IMAGENET1K_CLASSES), "--pruning_method", "variance", "--keep_rate", "0.7", "--fuse_pruned",
                "true", "--skip_throughput", "--num_workers", "0", "--batch_size", "8",
                "--output_dir", str(tmp_path / f"out_{name}")]  # fmt: skip
        assert cli_main(argv) == 0
        results[name] = json.loads((tmp_path / f"out_{name}" / "results.json").read_text())["rows"]
    assert [(r["top1"], r["top5"]) for r in results["other"]] == [(r["top1"], r["top5"]) for r in results["eight"]]
    assert results["eight"][0]["top1"] > 40  # real pictures, recognised (greyscale costs some top-1)
