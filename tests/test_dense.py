"""Dense outputs: `restore_patch_grid=True` puts every hidden state back on the full patch grid.

Hand-built token operations (where each candidate goes), exact equality with the stock model where nothing is
reduced, the rows of a restored sequence traced to the tokens that carry them (kept, fused, merged, dropped), the
transformers backbones (feature maps of the stock shape) and the depth models built on them (DPT, Depth Anything),
torch.compile and ONNX with restoration on, and the refusals.
"""

import pytest
import torch
from conftest import tiny_config_kwargs
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTModel,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DPTConfig,
    DPTForDepthEstimation,
    ViTConfig,
    ViTModel,
)
from transformers.models.dinov2.modeling_dinov2 import Dinov2Backbone
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersBackbone

from hf_vitprune import PrunedViTConfig, PrunedViTModel, prune
from hf_vitprune.export import export_model, run_exported
from hf_vitprune.reducers import REDUCERS, AttentionPruner, ReductionState
from hf_vitprune.token_merging import merge_tokens
from hf_vitprune.token_ops import prune_tokens, restore_patch_grid, similarity_fusion

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8)  # 16 patches
STAGES = ["stage1", "stage2", "stage3", "stage4"]
SETTINGS = {
    "variance": dict(keep_rate=0.5, prune_layers=[1, 2]),
    "variance-no-fusion": dict(pruning_method="variance", keep_rate=0.5, prune_layers=[1, 2], fuse_pruned=False),
    "evit": dict(keep_rate=0.5, prune_layers=[1, 2]),
    "tome": dict(tome_r=3),
    "bspf": dict(keep_rate=0.5, prune_layers=[1, 2], bspf_block=1),
    "pitome": dict(keep_rate=0.75),
}


def _settings(name: str) -> dict:
    return {"pruning_method": name, **SETTINGS[name]} if "pruning_method" not in SETTINGS[name] else SETTINGS[name]


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- the token operations, by hand ------------------------------------------------------------------------------------


def test_prune_tokens_says_where_each_candidate_went():
    hidden = torch.arange(6.0).view(1, 6, 1)  # class token, then candidates 0..4 with values 1..5
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.2, 0.7]])  # keeps candidates 0, 2, 4 (in sequence order)
    ids = torch.arange(5).view(1, 5)
    fused = prune_tokens(hidden, scores, 3, 1, ids, fuse=True)
    assert fused.destination.tolist() == [[0, 3, 1, 3, 2]]  # pruned 1 and 3 went into the fused token (index 3)
    dropped = prune_tokens(hidden, scores, 3, 1, ids, fuse=False)
    assert dropped.destination.tolist() == [[0, -1, 1, -1, 2]]
    restored = restore_patch_grid(fused.hidden_states, fused.destination, 1)
    weights = torch.softmax(torch.tensor([0.1, 0.2]) / (scores.std(unbiased=False) * 1.0), 0)
    fused_value = float(weights @ torch.tensor([2.0, 4.0]))
    assert restored.flatten().tolist() == pytest.approx([0, 1, fused_value, 3, fused_value, 5])


def test_merge_tokens_says_where_each_candidate_went():
    # class token + 4 candidates: A = candidates 1, 3 (even positions 2, 4), B = candidates 0, 2
    hidden = torch.tensor([[[0.0], [10.0], [20.0], [30.0], [40.0]]])
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]]])
    merged = merge_tokens(hidden, torch.ones(1, 5), keys, 1, 1, torch.arange(4).view(1, 4))
    # A token 1 has the most similar link (keys equal to B token 2's): it merges into 2; A token 3 stays, first
    assert merged.patch_ids.tolist() == [[3, 0, 2]] and merged.destination.tolist() == [[1, 2, 2, 0]]
    restored = restore_patch_grid(merged.hidden_states, merged.destination, 1)
    assert restored.flatten().tolist() == [0.0, 10.0, 25.0, 25.0, 40.0]  # patches 1 and 2 share their mean


def test_similarity_fusion_says_where_each_candidate_went():
    hidden = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0]]])
    keys = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]]])
    kept, pruned = torch.tensor([[0, 1]]), torch.tensor([[2, 3]])
    fused = similarity_fusion(hidden, torch.ones(1, 5), keys, kept, pruned, 1)
    assert fused.destination.tolist() == [[0, 1, 0, 1]]
    assert restore_patch_grid(fused.hidden_states, fused.destination, 1).flatten().tolist() == [0, 2, 3, 2, 3]


def test_a_dropped_patch_takes_its_value_where_it_was_dropped():
    patch_map, dropped = torch.tensor([[0, -1, 1]]), torch.tensor([[[0.0], [-7.0], [0.0]]])
    out = restore_patch_grid(torch.tensor([[[9.0], [1.0], [3.0]]]), patch_map, 1, dropped)
    assert out.flatten().tolist() == [9.0, 1.0, -7.0, 3.0]  # patch 1 was dropped: its stored value


# --- models -----------------------------------------------------------------------------------------------------------


def _family(name):
    torch.manual_seed(0)
    if name == "pruned-vit":
        return PrunedViTModel(PrunedViTConfig(**tiny_config_kwargs(pruning_method=None))).eval(), 1
    families = {
        "vit": (ViTModel, ViTConfig(**TINY, intermediate_size=64), 1),
        "deit": (DeiTModel, DeiTConfig(**TINY, intermediate_size=64), 2),
        "dinov2": (Dinov2Model, Dinov2Config(**TINY, mlp_ratio=2), 1),
        "dinov2-registers": (
            Dinov2WithRegistersModel, Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, num_register_tokens=2), 3
        ),
        "clip": (CLIPVisionModel, CLIPVisionConfig(**TINY, intermediate_size=64), 1),
    }  # fmt: skip
    model_class, config, prefix = families[name]
    return model_class(config).eval(), prefix


def _run(model, pixel_values, **settings):
    prune(model, **settings)
    torch.manual_seed(0)
    with torch.no_grad():
        return model(pixel_values=pixel_values, output_hidden_states=True)


FAMILIES = ["pruned-vit", "vit", "deit", "dinov2", "dinov2-registers", "clip"]


@pytest.mark.parametrize("family", FAMILIES)
def test_restoration_where_nothing_is_reduced_is_the_stock_model_exactly(family, pixel_values):
    model, _ = _family(family)
    stock = _run(model, pixel_values, pruning_method=None)
    for settings in (dict(pruning_method="variance", keep_rate=1.0), dict(pruning_method="tome", tome_r=0)):
        out = _run(model, pixel_values, restore_patch_grid=True, **settings)
        assert torch.equal(out.last_hidden_state, stock.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, stock.hidden_states, strict=True))


@pytest.mark.parametrize("method", list(SETTINGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_hidden_state_is_on_the_patch_grid(family, method, pixel_values):
    model, prefix = _family(family)
    stock = _run(model, pixel_values, pruning_method=None)
    out = _run(model, pixel_values, restore_patch_grid=True, **_settings(method))
    assert [h.shape for h in out.hidden_states] == [h.shape for h in stock.hidden_states]
    assert out.last_hidden_state.shape == stock.last_hidden_state.shape
    assert torch.equal(out.hidden_states[0], stock.hidden_states[0])
    assert torch.equal(
        out.last_hidden_state[:, :prefix], _run(model, pixel_values, **_settings(method)).last_hidden_state[:, :prefix]
    )


def test_restored_rows_are_the_tokens_that_carry_each_patch(pixel_values):
    """Variance with fusion at layers 1 and 2: each patch's restored row is its own token if the last pruning layer
    kept it; else the fused token of layer 1 where layer 2 kept that one (for patches layer 1 pruned), else the fused
    token of layer 2."""
    model, prefix = _family("pruned-vit")
    reduced = _run(model, pixel_values, **_settings("variance"))
    restored = _run(model, pixel_values, restore_patch_grid=True, **_settings("variance"))
    first, last = reduced.kept_patch_indices
    tokens = reduced.hidden_states[-1][:, prefix:]  # before the final layer norm: the last layer's output
    for image in range(pixel_values.shape[0]):
        for patch in range(16):
            kept_last = (last[image] == patch).nonzero()
            if len(kept_last):
                carrier = int(kept_last[0, 0])
            elif patch not in first[image] and (last[image] == -1).any():
                carrier = int((last[image] == -1).nonzero()[0, 0])
            else:
                carrier = tokens.shape[1] - 1
            torch.testing.assert_close(restored.hidden_states[-1][image, prefix + patch], tokens[image, carrier])


def test_without_fusion_a_dropped_patch_keeps_its_value_after_the_dropping_attention(pixel_values):
    model, prefix = _family("pruned-vit")
    stock = _run(model, pixel_values, pruning_method=None)
    settings = dict(pruning_method="evit", keep_rate=0.5, prune_layers=[2], fuse_pruned=False)
    kept = _run(model, pixel_values, **settings).kept_patch_indices[0]
    restored = _run(model, pixel_values, restore_patch_grid=True, **settings)
    layer, entering = model.layers[2], stock.hidden_states[2]  # layer 2 sees the stock tokens
    with torch.no_grad():
        after_attention = layer.attention(layer.layernorm_before(entering))[0] + entering
    for image in range(pixel_values.shape[0]):
        dropped = [p for p in range(16) if p not in kept[image]]
        for hidden_state in restored.hidden_states[3:]:
            torch.testing.assert_close(
                hidden_state[image, prefix + torch.tensor(dropped)],
                after_attention[image, prefix + torch.tensor(dropped)],
            )


# --- backbones and depth models -------------------------------------------------------------------------------------


BACKBONE_CLASSES = {
    "dinov2": lambda **kw: Dinov2Backbone(Dinov2Config(**TINY, mlp_ratio=2, out_features=STAGES, **kw)),
    "dinov2-registers": lambda **kw: Dinov2WithRegistersBackbone(
        Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, num_register_tokens=2, out_features=STAGES, **kw)
    ),
}


@pytest.mark.parametrize("reshape", [True, False])
@pytest.mark.parametrize("backbone", list(BACKBONE_CLASSES))
def test_backbone_feature_maps_keep_their_stock_shapes(backbone, reshape, pixel_values):
    torch.manual_seed(0)
    model = BACKBONE_CLASSES[backbone](reshape_hidden_states=reshape).eval()
    with torch.no_grad():
        stock = model(pixel_values)
    for method in SETTINGS:
        prune(model, restore_patch_grid=True, **_settings(method))
        with torch.no_grad():
            maps = model(pixel_values).feature_maps
        assert [m.shape for m in maps] == [m.shape for m in stock.feature_maps], method
        if method not in ("tome", "pitome"):  # stage 1 is layer 0's output: before the first pruning layer (the
            # merging methods merge there)
            assert torch.equal(maps[0], stock.feature_maps[0])
    prune(model, pruning_method="variance", keep_rate=1.0)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(pixel_values).feature_maps, stock.feature_maps, strict=True))


def _depth_models():
    backbone = Dinov2Config(**TINY, mlp_ratio=2, out_features=STAGES, reshape_hidden_states=False)
    torch.manual_seed(0)
    depth_anything = DepthAnythingForDepthEstimation(
        DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=8, fusion_hidden_size=16,
                            neck_hidden_sizes=[8, 16, 32, 32], head_hidden_size=8)
    )  # fmt: skip
    dpt = DPTForDepthEstimation(
        DPTConfig(backbone_config=backbone, hidden_size=32, patch_size=8, image_size=32, fusion_hidden_size=16,
                  neck_hidden_sizes=[8, 16, 32, 32], reassemble_factors=[4, 2, 1, 0.5])
    )  # fmt: skip
    return {"depth-anything": depth_anything.eval(), "dpt": dpt.eval()}


@pytest.mark.parametrize("name", ["depth-anything", "dpt"])
def test_depth_models_on_a_pruned_backbone_return_stock_shaped_depth(name, pixel_values):
    model = _depth_models()[name]
    with torch.no_grad():
        stock = model(pixel_values).predicted_depth
    with pytest.raises(ValueError, match="restore_patch_grid=True"):
        prune(model.backbone, pruning_method="tome", tome_r=3)  # the feature maps would be wrong: refused
    for method in SETTINGS:
        prune(model.backbone, restore_patch_grid=True, **_settings(method))
        with torch.no_grad():
            depth = model(pixel_values).predicted_depth
        assert depth.shape == stock.shape and torch.isfinite(depth).all(), method
    prune(model.backbone, pruning_method="variance", keep_rate=1.0)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).predicted_depth, stock)


# --- compile and export ---------------------------------------------------------------------------------------------


def _dinov2_classifier():
    """DINOv2's head reads the mean of the patch tokens: its logits depend on the restored grid."""
    torch.manual_seed(0)
    model = Dinov2ForImageClassification(Dinov2Config(**TINY, mlp_ratio=2, num_labels=5)).eval()
    return prune(model, pruning_method="tome", tome_r=3, restore_patch_grid=True)


def test_torch_compile_fullgraph_with_restoration_equals_eager(pixel_values):
    model = _dinov2_classifier()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, expected, atol=1e-5, rtol=1e-5)
    with model.pruning(restore_patch_grid=False), torch.no_grad():  # the restored grid does change the logits
        assert not torch.allclose(model(pixel_values=pixel_values).logits, expected)


@pytest.mark.parametrize("kind", ["pt2", "onnx"])
def test_export_with_restoration_equals_eager(kind, tmp_path):
    model = _dinov2_classifier()
    export_model(model, tmp_path / f"model.{kind}", kind)
    for batch_size in (1, 3):
        x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(batch_size))
        with torch.no_grad():
            expected = model(pixel_values=x).logits
        torch.testing.assert_close(run_exported(tmp_path / f"model.{kind}", kind, x), expected, atol=1e-5, rtol=1e-4)


# --- refusals -------------------------------------------------------------------------------------------------------


def test_a_backbone_refuses_reduction_without_restoration_and_is_left_unchanged(pixel_values):
    model = BACKBONE_CLASSES["dinov2"]().eval()
    with pytest.raises(ValueError, match=r"Dinov2Backbone is a backbone.*restore_patch_grid=True"):
        prune(model, pruning_method="variance", keep_rate=0.5)
    assert not hasattr(model.config, "pruning_method")
    prune(model, pruning_method="variance", keep_rate=0.5, restore_patch_grid=True)
    model.set_pruning(restore_patch_grid=False)  # switched off later: the forward pass refuses
    with pytest.raises(ValueError, match="restore_patch_grid=True"):
        model(pixel_values)
    model.set_pruning(pruning_method=None)  # no reduction: the stock backbone
    assert [m.shape[1] for m in model(pixel_values).feature_maps] == [32] * 4


def test_a_method_that_does_not_record_destinations_cannot_restore(pixel_values):
    class Forgetful(AttentionPruner):
        name = "forgetful"

        def score(self, statistic, batch_size, num_candidates, device):
            return torch.arange(num_candidates, device=device, dtype=torch.float).expand(batch_size, -1)

        def reduce(self, hidden_states, statistic, state, amount, layer_idx):
            hidden_states, new = super().reduce(hidden_states, statistic, state, amount, layer_idx)
            return hidden_states, ReductionState(new.patch_ids, new.token_sizes, new.kept_patch_indices, grid=new.grid)

    REDUCERS["forgetful"] = Forgetful
    try:
        model, _ = _family("pruned-vit")
        with pytest.raises(ValueError, match="'forgetful' does not record where each token goes"):
            _run(model, pixel_values, pruning_method="forgetful", restore_patch_grid=True)
        reduced = _run(model, pixel_values, pruning_method="forgetful", restore_patch_grid=False)
        assert reduced.last_hidden_state.shape[1] == 1 + 6
    finally:
        del REDUCERS["forgetful"]


def test_restore_patch_grid_must_be_a_boolean():
    model, _ = _family("pruned-vit")
    with pytest.raises(ValueError, match="restore_patch_grid must be True or False, got 'true'"):
        prune(model, restore_patch_grid="true")


def test_a_stage_beyond_the_depth_is_the_stock_error():
    with pytest.raises(ValueError, match="stage9") as stock_error:
        Dinov2Config(**TINY, out_features=["stage9"])
    assert "hf_vitprune" not in str(stock_error.value)
