"""Kept-patch drawing: index-to-pixel mapping on synthetic grids where the mask is known exactly, and the CLI."""

import numpy as np
import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, needs_shared, tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.cli import main as cli_main
from hf_vitprune.visualize import grey_out, kept_patches, kept_pixel_mask


def test_non_overlapping_patches_map_to_their_squares():
    # 8 x 8 image, 4 px patches, stride 4: grid 2 x 2; keep the top-left (0) and bottom-right (3) patches
    mask = kept_pixel_mask([0, 3, -1], (2, 2), 4, 4, (8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[:4, :4] = True
    expected[4:, 4:] = True
    assert np.array_equal(mask, expected)


def test_overlapping_patches_are_drawn_at_their_stride_and_size():
    # 8 x 8 image, 4 px patches, stride 2: grid 3 x 3; patch 4 (centre) covers rows and columns 2..5
    centre = kept_pixel_mask([4], (3, 3), 4, 2, (8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:6, 2:6] = True
    assert np.array_equal(centre, expected)
    corners = kept_pixel_mask([0, 8], (3, 3), 4, 2, (8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[0:4, 0:4] = True
    expected[4:8, 4:8] = True
    assert np.array_equal(corners, expected)
    # patch 1 (row 0, column 1) starts at column 2
    assert np.array_equal(np.argwhere(kept_pixel_mask([1], (3, 3), 4, 2, (8, 8)))[[0, -1]], [[0, 2], [3, 5]])


def test_an_uncovered_border_is_never_kept():
    # 8 px, 4 px patches, stride 3: 2 patches per side at 0 and 3, covering pixels 0..6; pixel 7 is seen by none
    mask = kept_pixel_mask(range(4), (2, 2), 4, 3, (8, 8))
    assert mask[:7, :7].all() and not mask[7].any() and not mask[:, 7].any()
    with pytest.raises(ValueError, match="outside"):
        kept_pixel_mask([4], (2, 2), 4, 3, (8, 8))


def test_grey_out_leaves_kept_pixels_and_blends_the_rest():
    image = np.random.default_rng(0).random((4, 4, 3))
    mask = np.zeros((4, 4), dtype=bool)
    mask[0] = True
    out = grey_out(image, mask, grey=0.5, strength=0.8)
    assert np.array_equal(out[0], image[0])
    np.testing.assert_allclose(out[1:], 0.2 * image[1:] + 0.8 * 0.5)


def test_masks_from_a_model_cover_exactly_the_kept_patches():
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(fuse_pruned=False))).eval()
    (kept,) = kept_patches(model, torch.randn(1, 3, 32, 32))
    assert kept.kept_counts == [8, 4] and kept.layer_names == ["layer 2", "layer 3"]
    for mask, count in zip(kept.masks, kept.kept_counts):
        assert mask.sum() == count * 8 * 8  # non-overlapping 8 px patches
    assert (kept.masks[1] <= kept.masks[0]).all()  # nothing comes back after being pruned


@needs_shared
def test_visualize_cli_on_real_images(tmp_path, capsys):
    from PIL import Image

    images = [str(sorted((IMAGENETTE / "val" / w).iterdir())[0]) for w in ("n01440764", "n03888257")]
    out = tmp_path / "kept.png"
    args = ["visualize", "--model", str(DEIT_TINY), "--images", *images, "--methods", "variance", "evit",
            "--keep_rate", "0.5", "--patch_stride", "12", "--output", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    with Image.open(out) as png:
        assert png.size[0] > 500 and png.size[1] > 500
    before = out.read_bytes()
    assert cli_main(args) == 2 and "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
