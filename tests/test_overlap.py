"""Overlapping patch embedding: grid arithmetic, border, position-embedding resize, GMACs of Table 3, round trips."""

import json

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, needs_shared, run_fresh_process, tiny_config_kwargs
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.modeling_vit import ViTEmbeddings

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.measure import count_gmacs
from hf_vitprune.modeling_pruned_vit import PrunedViTPatchEmbeddings, resize_position_embeddings


@pytest.mark.parametrize(
    "image, patch, stride, grid",
    [((224, 224), 16, None, (14, 14)), ((224, 224), 16, 12, (18, 18)), ((224, 224), 16, 10, (21, 21)),
     ((384, 384), 16, 12, (31, 31)), ((224, 160), 16, 12, (18, 13)), ((32, 32), 8, 6, (5, 5)),
     ((32, 32), 8, 1, (25, 25)), ((30, 30), 8, 8, (3, 3))],
)  # fmt: skip
def test_patch_grid_matches_the_convolution(image, patch, stride, grid):
    sizes = dict(image_size=list(image), patch_size=patch, patch_stride=stride)
    config = PrunedViTConfig(hidden_size=8, num_hidden_layers=4, num_attention_heads=2, intermediate_size=8,
                             prune_layers=[1], **sizes)  # fmt: skip
    assert config.patch_grid() == grid
    embeddings = PrunedViTPatchEmbeddings(config)
    tokens = embeddings(torch.zeros(1, 3, *image))
    assert embeddings.grid_size == grid and tokens.shape == (1, grid[0] * grid[1], 8)


def test_the_border_that_does_not_fit_a_patch_is_not_seen():
    # 224 px, 16 px patches, stride 10: 21 patches cover (21 - 1) * 10 + 16 = 216 px; the last 8 px are dropped
    config = PrunedViTConfig(hidden_size=8, num_hidden_layers=4, num_attention_heads=2, intermediate_size=8,
                             patch_size=16, patch_stride=10, prune_layers=[1])  # fmt: skip
    embeddings = PrunedViTPatchEmbeddings(config)
    x = torch.randn(1, 3, 224, 224)
    y = x.clone()
    y[..., 216:] = 100.0  # change only the uncovered right and bottom border
    y[..., 216:, :] = -100.0
    assert torch.equal(embeddings(x), embeddings(y))
    y[..., 215, 0] += 1.0  # the last covered pixel row does count
    assert not torch.equal(embeddings(x), embeddings(y))


@pytest.mark.parametrize("bad", [0, 17, -3, 2.5, True])
def test_bad_patch_stride(bad):
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match="patch_stride"):
        PrunedViTConfig(patch_stride=bad)


def test_resize_keeps_prefix_tokens_and_constants():
    pos = torch.randn(1, 2 + 14 * 14, 6)
    pos[:, 2:] = 0.5
    resized = resize_position_embeddings(pos, 2, (14, 14), (18, 18))
    assert resized.shape == (1, 2 + 324, 6)
    assert torch.equal(resized[:, :2], pos[:, :2])
    torch.testing.assert_close(resized[:, 2:], torch.full((1, 324, 6), 0.5))
    assert resize_position_embeddings(pos, 2, (14, 14), (14, 14)) is pos
    with pytest.raises(ValueError, match="needs 198"):
        resize_position_embeddings(pos[:, 1:], 2, (14, 14), (18, 18))


def test_interpolation_matches_transformers_when_stride_is_the_patch_size():
    torch.manual_seed(0)
    base = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, image_size=32,
                     patch_size=8)  # fmt: skip
    stock = ViTEmbeddings(base)
    ours = PrunedViTForImageClassification(PrunedViTConfig(**base.to_dict() | {"prune_layers": [1]})).vit.embeddings
    ours.position_embeddings.data.copy_(stock.position_embeddings.data)
    tokens = torch.zeros(1, 1 + 36, 16)  # a 48 px input: 6 x 6 patches
    torch.testing.assert_close(ours.interpolate_pos_encoding(tokens, 48, 48),
                               stock.interpolate_pos_encoding(tokens, 48, 48), rtol=0, atol=0)  # fmt: skip


def _stock_dir(tmp_path):
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base)).save_pretrained(tmp_path / "stock")
    return tmp_path / "stock"


def test_stride_equal_to_the_patch_size_reproduces_the_original_logits(tmp_path, pixel_values):
    stock_dir = _stock_dir(tmp_path)
    stock = ViTForImageClassification.from_pretrained(stock_dir).eval()
    model = PrunedViTForImageClassification.from_pretrained(stock_dir, prune_layers=[1, 2], keep_rate=1.0,
                                                            patch_stride=8).eval()  # fmt: skip
    assert model.config.patch_stride == 8
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixel_values).logits, stock(pixel_values=pixel_values).logits)


def test_loading_with_overlap_resizes_only_the_position_embeddings(tmp_path, pixel_values):
    stock_dir = _stock_dir(tmp_path)
    plain = PrunedViTForImageClassification.from_pretrained(stock_dir, prune_layers=[1, 2])
    model, info = PrunedViTForImageClassification.from_pretrained(
        stock_dir, prune_layers=[1, 2], patch_stride=6, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.vit.embeddings.patch_embeddings.num_patches == 25  # (32 - 8) // 6 + 1 = 5 per side
    assert model.vit.embeddings.position_embeddings.shape == (1, 26, 32)
    plain_state, state = plain.state_dict(), model.state_dict()
    for key in state:
        if not key.endswith("position_embeddings"):
            assert torch.equal(state[key], plain_state[key]), key
    assert torch.equal(
        state["vit.embeddings.position_embeddings"][:, :1], plain_state["vit.embeddings.position_embeddings"][:, :1]
    )
    with torch.no_grad():
        out = model.eval()(pixel_values=pixel_values)
    # default keep rate 0.7: 25 candidates -> keep ceil(17.5) = 18 (+1 fused) -> keep ceil(0.7 * 19) = 14
    assert [k.shape[1] for k in out.kept_patch_indices] == [18, 14]
    assert max(int(k.max()) for k in out.kept_patch_indices) < 25


def test_other_input_sizes_follow_the_stride(tmp_path):
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(patch_stride=6))).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 44, 44), interpolate_pos_encoding=True)
    # (44 - 8) // 6 + 1 = 7 per side: 49 patches, keep 25
    assert out.kept_patch_indices[0].shape == (2, 25) and out.kept_patch_indices[0].max() < 49
    with pytest.raises(ValueError, match="doesn't match model"):
        model(pixel_values=torch.randn(2, 3, 44, 44))


REMOTE = """
import sys, json
sys.modules["hf_vitprune"] = None
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    out = model(pixel_values=torch.load(sys.argv[2]))
print(json.dumps({"stride": model.config.patch_stride, "logits": out.logits.tolist(),
                  "patches": model.vit.embeddings.patch_embeddings.num_patches}))
"""


def test_overlap_round_trips_through_save_and_remote_code(tmp_path, pixel_values):
    model = PrunedViTForImageClassification.from_pretrained(_stock_dir(tmp_path), prune_layers=[1, 2], patch_stride=6)
    model.eval().save_pretrained(tmp_path / "overlap")
    assert json.loads((tmp_path / "overlap" / "config.json").read_text())["patch_stride"] == 6
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        reloaded = PrunedViTForImageClassification.from_pretrained(tmp_path / "overlap").eval()
        assert torch.equal(reloaded(pixel_values=pixel_values).logits, expected)
    torch.save(pixel_values, tmp_path / "x.pt")
    report = run_fresh_process(tmp_path, REMOTE, tmp_path / "overlap", tmp_path / "x.pt")
    assert report["stride"] == 6 and report["patches"] == 25
    assert torch.equal(torch.tensor(report["logits"]), expected)


# arXiv:2507.19175, Table 3: DeiT-S, stride 12 (324 patches), fusion; GFLOPs (fvcore) at keep 0.7 ... 0.1
@pytest.mark.parametrize(
    "keep_rate, gmacs", [(0.7, 5.17), (0.6, 4.51), (0.5, 3.95), (0.4, 3.50), (0.3, 3.13), (0.2, 2.82), (0.1, 2.58)]
)
def test_overlapping_deit_small_matches_table_3(keep_rate, gmacs):
    config = PrunedViTConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_labels=1000,
                             layer_norm_eps=1e-6, patch_stride=12, keep_rate=keep_rate)  # fmt: skip
    assert count_gmacs(PrunedViTForImageClassification(config)) == pytest.approx(gmacs, abs=0.03)


@needs_shared
def test_real_deit_tiny_with_overlap_runs_on_a_real_image():
    from PIL import Image

    from hf_vitprune.data import eval_transform

    model = PrunedViTForImageClassification.from_pretrained(DEIT_TINY, patch_stride=12, keep_rate=0.5).eval()
    image = Image.open(next((IMAGENETTE / "val" / "n03888257").iterdir())).convert("RGB")
    with torch.no_grad():
        out = model(pixel_values=eval_transform(224)(image).unsqueeze(0))
    assert model.vit.embeddings.position_embeddings.shape == (1, 325, 192)
    assert [k.shape[1] for k in out.kept_patch_indices] == [162, 82, 42]
    assert out.logits.shape == (1, 1000) and torch.isfinite(out.logits).all()
