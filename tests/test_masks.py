"""Attention masks through pruning, typed kwargs and attentions, feature extraction: behaving as a stock HF model."""

import copy

import pytest
import torch
from conftest import METHODS, tiny_config_kwargs
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification, prune

PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _mask(batch=3, tokens=17, masked=((0, [3, 4, 5]), (1, [1, 2, 9, 10, 11, 16]), (2, [])), dtype=torch.long):
    """`(batch, tokens)`, 1 = attend, 0 = masked; token 0 (class) always attended. Token t >= 1 is patch t - 1."""
    mask = torch.ones(batch, tokens, dtype=dtype)
    for row, tokens_masked in masked:
        mask[row, tokens_masked] = 0
    return mask


def _models(method, attn="sdpa", **pruning):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(pruning_method=method, tome_r=3, **pruning)
    base = {k: v for k, v in kwargs.items() if k not in ("prune_layers", "keep_rate", "pruning_method", "tome_r")}
    stock = ViTForImageClassification(ViTConfig(**base)).eval()
    pruned = PrunedViTForImageClassification(PrunedViTConfig(**kwargs)).eval()
    pruned.load_state_dict(stock.state_dict())
    stock.set_attn_implementation(attn)
    pruned.set_attn_implementation(attn)
    return stock, pruned


def _logits(model, pixel_values=PIXELS, mask=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(pixel_values=pixel_values, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
def test_keep_rate_one_with_a_mask_equals_stock(method, attn):
    stock, pruned = _models(method, attn, keep_rate=1.0)
    if method == "tome":
        pruned.set_pruning(tome_r=0)
    mask = _mask()
    assert torch.equal(_logits(pruned, mask=mask).logits, _logits(stock, mask=mask).logits)
    stock_pruned = prune(copy.deepcopy(stock), pruning_method=method, keep_rate=1.0, prune_layers=[1, 2], tome_r=0)
    assert torch.equal(_logits(stock_pruned, mask=mask).logits, _logits(stock, mask=mask).logits)


@pytest.mark.parametrize("method", METHODS)
def test_masked_patches_never_reach_an_unmasked_token(method):
    """Masked tokens are never keys, never kept in place of an unmasked token, never fused or merged with one: changing
    the pixels of masked patches changes no logit."""
    _, model = _models(method, keep_rate=0.5)
    mask = _mask()
    changed = PIXELS.clone()
    for row, tokens in ((0, [3, 4, 5]), (1, [1, 2, 9, 10, 11, 16])):
        for token in tokens:
            r, c = divmod(token - 1, 4)  # 4 x 4 grid of 8 px patches
            changed[row, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = torch.randn(3, 8, 8) * 5
    a, b = _logits(model, mask=mask), _logits(model, changed, mask=mask)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    if method not in ("tome", "pitome"):  # keep 8 of 16: row 1 has 10 unmasked candidates, so no masked patch is kept
        masked_patches = {0: {2, 3, 4}, 1: {0, 1, 8, 9, 10, 15}}
        for row, patches in masked_patches.items():
            assert not patches & set(a.kept_patch_indices[0][row].tolist())


def test_masked_tokens_are_kept_last_when_too_few_are_unmasked():
    _, model = _models("variance", keep_rate=0.5)
    masked = list(range(2, 14))  # 12 of 16 patches masked: 4 unmasked, 8 kept
    out = _logits(model, mask=_mask(masked=((0, masked), (1, []), (2, []))))
    kept = set(out.kept_patch_indices[0][0].tolist())
    assert len(kept) == 8 and kept >= {0, 13, 14, 15}  # every unmasked patch (tokens 1, 14, 15, 16) is kept
    assert out.kept_patch_indices[0][0].tolist() == sorted(kept)  # in sequence order


@pytest.mark.parametrize("method", ["variance", "evit", "tome"])
def test_eager_and_sdpa_agree_under_pruning_with_a_mask(method):
    """(Not entropy on this random model: its tokens' entropies are nearly equal, and the scale-free fusion weights
    (scores divided by their spread) turn the 1e-7 differences SDPA makes in other layers into 1e-3 ones; its own
    statistic is computed by the same eager code under both.)"""
    _, sdpa = _models(method, "sdpa", keep_rate=0.5)
    _, eager = _models(method, "eager", keep_rate=0.5)
    mask = _mask()
    torch.testing.assert_close(_logits(sdpa, mask=mask).logits, _logits(eager, mask=mask).logits, atol=1e-5, rtol=1e-4)


def test_bad_masks_are_clear_errors():
    _, model = _models("variance", keep_rate=0.5)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 16\); expected \(batch, tokens\) = \(3, 17\)"):
        model(pixel_values=PIXELS, attention_mask=torch.ones(3, 16))
    with pytest.raises(ValueError, match="attention_mask must hold 0 / 1"):
        model(pixel_values=PIXELS, attention_mask=torch.full((3, 17), 0.5))
    everything = _mask(masked=((0, list(range(1, 17))),))
    with pytest.raises(ValueError, match="masks every patch token of image 0"):
        model(pixel_values=PIXELS, attention_mask=everything)


def test_stock_models_after_prune_take_masks_too():
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, image_size=32,
                          patch_size=8)  # fmt: skip
    stock = Dinov2Model(config).eval()
    pruned = prune(copy.deepcopy(stock), pruning_method="variance", keep_rate=1.0, prune_layers=[1, 2])
    mask = _mask()
    assert torch.equal(_logits(pruned, mask=mask).last_hidden_state, _logits(stock, mask=mask).last_hidden_state)
    pruned.set_pruning(keep_rate=0.5)
    out = _logits(pruned, mask=mask)
    assert out.last_hidden_state.shape == (3, 1 + 5 + 1, 32)
    assert not {2, 3, 4} & set(out.kept_patch_indices[0][0].tolist())


def test_attentions_with_typed_kwargs_follow_the_token_counts():
    _, model = _models("variance", "eager", keep_rate=0.5)
    out = _logits(model, output_attentions=True, output_hidden_states=True)
    assert [a.shape[-1] for a in out.attentions] == [17, 17, 10, 7]  # tokens entering each layer
    assert [h.shape[1] for h in out.hidden_states] == [17, 17, 10, 7, 7]
    import inspect

    from transformers.utils import TransformersKwargs

    for cls in (PrunedViTForImageClassification, type(model.vit)):
        annotation = inspect.signature(cls.forward).parameters["kwargs"].annotation
        assert "TransformersKwargs" in str(annotation) or annotation is TransformersKwargs


def test_feature_extraction_pipeline_returns_the_pruned_token_set(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor, pipeline

    _, model = _models("variance", keep_rate=0.5)
    model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    extract = pipeline("image-feature-extraction", model=str(tmp_path))
    features = extract(Image.new("RGB", (40, 30), (10, 200, 30)), return_tensors=True)
    assert features.shape == (1, 1 + 5 + 1, 32)  # class token, kept patches, fused token
    pooled = extract(Image.new("RGB", (40, 30), (10, 200, 30)), return_tensors=True, pool=True)
    assert pooled.shape == (1, 32)
