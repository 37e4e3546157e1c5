"""PrunedViT models: exact equivalence with stock HF models, shapes, training, dtypes and bad input."""

import pytest
import torch
from conftest import tiny_config_kwargs
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from hf_vitprune import (
    PrunedDeiTConfig,
    PrunedDeiTForImageClassificationWithTeacher,
    PrunedViTConfig,
    PrunedViTForImageClassification,
    PrunedViTModel,
)
from hf_vitprune.token_ops import ATTENTION, CLASS_ATTENTION


def _stock_and_pruned(attn_implementation="sdpa", **pruning):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(**pruning)
    base = {k: v for k, v in kwargs.items() if k not in ("prune_layers", "keep_rate")}
    stock = ViTForImageClassification(ViTConfig(**base)).eval()
    pruned = PrunedViTForImageClassification(PrunedViTConfig(**kwargs)).eval()
    pruned.load_state_dict(stock.state_dict(), strict=True)  # same parameter names as the stock model
    stock.set_attn_implementation(attn_implementation)
    pruned.set_attn_implementation(attn_implementation)
    return stock, pruned


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("pruning", [{"keep_rate": 1.0}, {"pruning_method": None}, {"keep_rate": [1.0, 1.0]}])
def test_no_pruning_gives_exactly_the_stock_logits(attn_implementation, pruning, pixel_values):
    stock, pruned = _stock_and_pruned(attn_implementation, **pruning)
    with torch.no_grad():
        expected = stock(pixel_values=pixel_values).logits
        output = pruned(pixel_values=pixel_values)
    assert torch.equal(output.logits, expected)
    if pruning.get("pruning_method", "variance") is not None:
        # pruning layers that keep everything still report what they kept: all patches
        assert [k.tolist() for k in output.kept_patch_indices] == [[list(range(16))] * 3] * 2


def test_distilled_deit_without_pruning_matches_stock_teacher_model(pixel_values):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs()
    base = {k: v for k, v in kwargs.items() if k not in ("prune_layers", "keep_rate")}
    stock = DeiTForImageClassificationWithTeacher(DeiTConfig(**base)).eval()
    pruned = PrunedDeiTForImageClassificationWithTeacher(
        PrunedDeiTConfig(
            **kwargs,
        )
    ).eval()
    pruned.load_state_dict(stock.state_dict(), strict=True)
    pruned.set_pruning(keep_rate=1.0)
    with torch.no_grad():
        expected = stock(pixel_values=pixel_values)
        output = pruned(pixel_values=pixel_values)
    assert torch.equal(output.logits, expected.logits)
    assert torch.equal(output.distillation_logits, expected.distillation_logits)
    pruned.set_pruning(keep_rate=0.5)
    with torch.no_grad():
        out = pruned(pixel_values=pixel_values, output_hidden_states=True)
    # 2 prefix tokens stay: 16 patches -> keep 8 (+1 fused) -> keep 5 (+1)
    assert [h.shape[1] for h in out.hidden_states] == [18, 18, 2 + 9, 2 + 6, 2 + 6]
    assert [k.shape for k in out.kept_patch_indices] == [(3, 8), (3, 5)]


@pytest.mark.parametrize("method", ["variance", "medad", "evit", "entropy", "random"])  # ToMe: tests/test_tome.py
@pytest.mark.parametrize("fuse", [True, False])
def test_shapes_and_kept_indices_for_every_method(method, fuse, pixel_values):
    _, model = _stock_and_pruned(pruning_method=method, fuse_pruned=fuse, keep_rate=[0.5, 0.7])
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
    kept1, kept2 = out.kept_patch_indices
    # 16 candidates -> ceil(0.5 * 16) = 8 (+1 fused) -> ceil(0.7 * 9) = 7 / ceil(0.7 * 8) = 6
    assert kept1.shape == (3, 8) and kept1.dtype == torch.long
    assert kept2.shape == ((3, 7) if fuse else (3, 6))
    assert [h.shape[1] for h in out.hidden_states] == ([17, 17, 10, 9, 9] if fuse else [17, 17, 9, 7, 7])
    for kept in (kept1, kept2):
        real = kept[kept >= 0]
        assert real.max() < 16 and (kept >= -1).all()
        for row in kept:  # no patch listed twice
            row = row[row >= 0]
            assert len(row.unique()) == len(row)
    # what the second layer kept was present after the first
    for row1, row2 in zip(kept1.tolist(), kept2.tolist()):
        assert set(r for r in row2 if r >= 0) <= set(row1)
    assert out.logits.shape == (3, 5)


def test_pruning_changes_the_output_and_the_criterion_matters(pixel_values):
    stock, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        reference = stock(pixel_values=pixel_values).logits
        variance = model(pixel_values=pixel_values)
        model.set_pruning(pruning_method="evit")
        evit = model(pixel_values=pixel_values)
    assert not torch.allclose(variance.logits, reference)
    assert not torch.equal(variance.kept_patch_indices[0], evit.kept_patch_indices[0])


def test_variance_selection_agrees_with_eager_attention_weights(pixel_values):
    """The side-computed class-attention row under SDPA is the real attention row (checked against eager)."""
    _, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        hidden = model.vit.embeddings(pixel_values)
        layer = model.vit.layers[0]
        normed = layer.layernorm_before(hidden)
        model.set_attn_implementation("eager")
        _, weights, statistic = layer.attention(normed, statistic=CLASS_ATTENTION, num_prefix_tokens=1)
    torch.testing.assert_close(statistic, weights[:, :, 0, 1:].float())
    assert statistic.dtype == torch.float32


def test_static_shapes_for_a_fixed_keep_rate():
    _, model = _stock_and_pruned(keep_rate=0.7, pruning_method="medad")
    shapes = set()
    for seed in range(3):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            out = model(pixel_values=x, output_hidden_states=True)
        shapes.add((tuple(h.shape for h in out.hidden_states), tuple(k.shape for k in out.kept_patch_indices)))
    assert len(shapes) == 1


def test_training_step_reaches_every_parameter(pixel_values):
    _, model = _stock_and_pruned(keep_rate=0.5)
    model.train()
    labels = torch.tensor([0, 1, 2])
    out = model(pixel_values=pixel_values, labels=labels)
    out.loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert without_grad == []


@pytest.mark.parametrize("method", ["variance", "random", "entropy", "tome"])
def test_gradient_checkpointing_gives_the_same_gradients(method, pixel_values):
    labels = torch.tensor([0, 1, 2])
    grads = []
    for checkpointing in (False, True):
        _, model = _stock_and_pruned(pruning_method=method, keep_rate=0.5)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.vit.layers)
        torch.manual_seed(123)  # the random criterion draws the same scores in both runs
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["variance", "entropy"])
def test_half_precision_models_compute_criteria_in_float32(dtype, method, pixel_values):
    _, model = _stock_and_pruned(pruning_method=method, keep_rate=0.5)
    model.to(dtype)
    with torch.no_grad():
        out = model(pixel_values=pixel_values.to(dtype))
        hidden = model.vit.layers[0].layernorm_before(model.vit.embeddings(pixel_values.to(dtype)))
        kind = CLASS_ATTENTION if method == "variance" else ATTENTION
        _, _, statistic = model.vit.layers[0].attention(hidden, statistic=kind, num_prefix_tokens=1)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    assert statistic.dtype == torch.float32
    if kind == ATTENTION:
        torch.testing.assert_close(statistic.sum(-1), torch.ones_like(statistic.sum(-1)))


def test_float_model_accepts_half_precision_pixels(pixel_values):
    _, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        a = model(pixel_values=pixel_values.to(torch.bfloat16)).logits
    assert a.dtype == torch.float32


def test_batch_of_one(pixel_values):
    _, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        out = model(pixel_values=pixel_values[:1])
        batched = model(pixel_values=pixel_values)
    assert out.logits.shape == (1, 5)
    torch.testing.assert_close(out.logits, batched.logits[:1])
    assert torch.equal(out.kept_patch_indices[0], batched.kept_patch_indices[0][:1])


def test_tiny_keep_rate_keeps_one_token_per_layer(pixel_values):
    _, model = _stock_and_pruned(keep_rate=1e-6)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
    assert [k.shape[1] for k in out.kept_patch_indices] == [1, 1]
    assert [h.shape[1] for h in out.hidden_states][-1] == 1 + 1 + 1  # class + kept + fused


def test_image_size_mismatch_is_an_error_unless_interpolating():
    _, model = _stock_and_pruned(keep_rate=0.5)
    x = torch.randn(1, 3, 48, 48)
    with pytest.raises(ValueError, match="doesn't match model"):
        model(pixel_values=x)
    with torch.no_grad():
        out = model(pixel_values=x, interpolate_pos_encoding=True)
    assert out.kept_patch_indices[0].shape == (1, 18)  # 36 patches, keep half
    assert out.kept_patch_indices[0].max() < 36


def test_an_all_ones_attention_mask_changes_nothing_under_pruning(pixel_values):
    """tests/test_masks.py covers masks that mask something."""
    _, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        plain = model(pixel_values=pixel_values)
        masked = model(pixel_values=pixel_values, attention_mask=torch.ones(3, 17))
    assert torch.equal(plain.logits, masked.logits)


def test_set_pruning_validates_and_leaves_the_config_unchanged_on_error():
    _, model = _stock_and_pruned(keep_rate=0.5)
    with pytest.raises(ValueError, match="keep_rate"):
        model.set_pruning(keep_rate=0.0)
    with pytest.raises(ValueError, match="unknown pruning setting"):
        model.set_pruning(keep=0.3)
    with pytest.raises(ValueError, match="holds 7"):
        model.set_pruning(pruning_method="medad", prune_layers=[1, 7])
    assert (model.config.keep_rate, model.config.pruning_method, model.config.prune_layers) == (0.5, "variance", [1, 2])


def test_return_dict_false_and_base_model(pixel_values):
    _, model = _stock_and_pruned(keep_rate=0.5)
    with torch.no_grad():
        logits, kept = model(pixel_values=pixel_values, return_dict=False)
    assert logits.shape == (3, 5) and len(kept) == 2
    base = PrunedViTModel(model.config)
    with torch.no_grad():
        out = base(pixel_values=pixel_values)
    assert out.last_hidden_state.shape == (3, 1 + 5 + 1, 32) and out.pooler_output.shape == (3, 32)
