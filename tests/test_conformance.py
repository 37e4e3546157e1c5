"""Conformance of every backbone adapter with every method: tiny random configs of each family, and the real DeiT-Tiny.

For each (backbone, method): pruning off gives exactly the stock outputs (also after pruning was on); the token counts
per layer are the documented ones (prefix + ceil(keep * candidates) + fused token; ToMe: minus min(r, |A|)); gradients
reach the patch embedding; save -> load with the stock class -> `prune(model)` restores the setting bit for bit; an
image's output does not depend on the other images of its batch; torch.compile (fullgraph, no graph break) gives the
eager outputs (every method on DeiT and DINOv2 with registers, a share of them on the other backbones).
"""

import copy
from fractions import Fraction

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, MERGING_METHODS, METHODS, METHODS_WITH_DISTINCT_OPERATIONS, needs_shared
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import hf_vitprune
from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification, prune

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8)  # 16 patches
PRUNING = dict(keep_rate=0.5, prune_layers=[1, 2], tome_r=3)


def _vit():
    return ViTForImageClassification(ViTConfig(**TINY, intermediate_size=64, num_labels=5)), 1


def _deit():
    return DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, intermediate_size=64, num_labels=5)), 2


def _dinov2():
    return Dinov2ForImageClassification(Dinov2Config(**TINY, mlp_ratio=2, num_labels=5)), 1


def _dinov2_registers():
    config = Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, num_labels=5, num_register_tokens=3)
    return Dinov2WithRegistersForImageClassification(config), 4


def _clip():
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, intermediate_size=64, projection_dim=16)), 1


BACKBONES = {"vit": _vit, "deit": _deit, "dinov2": _dinov2, "dinov2-registers": _dinov2_registers, "clip": _clip}


def _build(backbone):
    torch.manual_seed(0)
    model, prefix = BACKBONES[backbone]()
    return model.eval(), prefix


def _outputs(model, pixel_values, seed=0):
    """Every tensor output (logits / embeddings, last and all hidden states), with a fixed RNG for `random`."""
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True)
    main = out.logits if getattr(out, "logits", None) is not None else out.image_embeds
    return main, out.hidden_states, out


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _expected_token_counts(method, prefix, patches=16, layers=4):
    """Tokens after the embeddings and after each layer, from the documented rules, computed independently."""
    counts, candidates = [prefix + patches], patches
    for layer in range(layers):
        if method == "tome":
            side_a = sum(1 for p in range(prefix, prefix + candidates) if p % 2 == 0)  # even positions
            merges = min(PRUNING["tome_r"], side_a if candidates - side_a > 0 else 0)
            candidates -= merges
        elif method == "pitome":  # floor(T - T * keep_rate) merged in every layer: 16 -> 8 -> 4 -> 2 -> 1
            candidates -= int(candidates - candidates * PRUNING["keep_rate"])
        elif layer in PRUNING["prune_layers"]:
            kept = -(-Fraction(PRUNING["keep_rate"]).limit_denominator() * candidates // 1)
            fused = 1 if kept < candidates and method != "bspf" else 0  # bspf merges into kept tokens: no extra one
            candidates = int(kept) + fused
        counts.append(prefix + candidates)
    return counts


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pruning_off_is_exactly_the_stock_model(backbone, pixel_values):
    stock, _ = _build(backbone)
    pruned = prune(copy.deepcopy(stock), pruning_method=None)
    main, hidden, out = _outputs(stock, pixel_values)
    main_off, hidden_off, out_off = _outputs(pruned, pixel_values)
    assert torch.equal(main_off, main) and all(torch.equal(a, b) for a, b in zip(hidden_off, hidden))
    assert not hasattr(out_off, "kept_patch_indices") or out_off.kept_patch_indices is None
    pruned.set_pruning(pruning_method="variance", **PRUNING)
    pruned.set_pruning(pruning_method=None)  # on, then off again
    assert torch.equal(_outputs(pruned, pixel_values)[0], main)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_token_counts_gradients_and_batch_independence(backbone, method, pixel_values):
    model, prefix = _build(backbone)
    prune(model, pruning_method=method, **PRUNING)
    main, hidden, out = _outputs(model, pixel_values)
    assert [h.shape[1] for h in hidden] == _expected_token_counts(method, prefix)
    reducing = 4 if method in MERGING_METHODS else 2
    assert len(out.kept_patch_indices) == reducing
    for kept in out.kept_patch_indices:
        assert kept.shape[0] == 3 and kept.max() < 16 and kept.min() >= -1
    # gradients reach the patch embedding (through every kept token and the fused one)
    model.train()
    out = model(pixel_values=pixel_values)
    (out.logits if getattr(out, "logits", None) is not None else out.image_embeds).square().sum().backward()
    patch_grad = [p.grad for n, p in model.named_parameters() if "patch_embed" in n and n.endswith("weight")]
    assert len(patch_grad) == 1 and patch_grad[0] is not None and patch_grad[0].abs().sum() > 0
    model.eval()
    # an image's output does not depend on the other images of its batch (random draws one score per row of the
    # batch from the global generator, so its pruning, by design, does)
    if method != "random":
        alone = _outputs(model, pixel_values[1:2])[0]
        torch.testing.assert_close(alone, main[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("random", "entropy")])
def test_every_token_of_an_image_is_independent_of_its_batch_with_near_equal_scores(method):
    """transformers' `test_batching_equivalence` setting (its ViTModelTester: 30 px, 2 px patches, 225 patches,
    random init, so attention is nearly uniform and many scores nearly tie): an image alone and in a batch of 13 gives
    the same last hidden state token by token, not only the same class token. Kept tokens are in sequence order, so
    their order cannot depend on how near-equal scores rank in a batch (bspf ranked them by score and failed here).
    Not entropy: its tokens' entropies at this init are equal to float precision, so which token is kept at the
    boundary itself depends on the batch's float noise (a different kept set, not an order)."""
    torch.manual_seed(0)
    config = PrunedViTConfig(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, pruning_method=method, prune_layers=[0], keep_rate=0.7, tome_r=40,
        attn_implementation="eager",
    )  # fmt: skip
    model = hf_vitprune.PrunedViTModel(config).eval()
    images = torch.randn(13, 3, 30, 30)
    with torch.no_grad():
        batched, alone = model(images), model(images[:1])
    assert batched.last_hidden_state.shape[1] < 226  # tokens were removed
    fused = 1 if method in ("variance", "medad", "evit") else 0
    tokens = batched.last_hidden_state.shape[1] - fused
    torch.testing.assert_close(alone.last_hidden_state[:, :tokens], batched.last_hidden_state[:1, :tokens])
    # the fused token's weights divide the scores by their spread (eq. 8, scale-free), which is ~1e-7 here, so the
    # float noise of batched matrix products (1e-8) moves them by more than 1e-5
    torch.testing.assert_close(
        alone.last_hidden_state[:, tokens:], batched.last_hidden_state[:1, tokens:], atol=1e-3, rtol=1e-3
    )


def test_bspf_keeps_the_same_tokens_under_float32_rounding_noise():
    """Why bspf's kept set depended on the batch on some x86 CPUs (AMD EPYC): at the near-uniform attention of the
    test above, its standardised scores turned float32 rounding differences between batch sizes into the ranking.
    Emulated here on any CPU: the attention perturbed by 1e-7 relative (float32 rounding), renormalised, twenty times;
    the scores (computed in float64) keep the same tokens every time."""
    from hf_vitprune.token_ops import block_smooth, joint_importance

    torch.manual_seed(0)
    config = PrunedViTConfig(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, pruning_method="bspf", prune_layers=[0], keep_rate=0.7, attn_implementation="eager",
    )  # fmt: skip
    model = hf_vitprune.PrunedViTModel(config).eval()
    with torch.no_grad():
        images = torch.randn(13, 3, 30, 30)  # the images of the test above; the first one
        attention = model(images[:1], output_attentions=True).attentions[0].float()
    ids = torch.arange(225)[None]

    def kept(a):
        return set(block_smooth(joint_importance(a, 1, "mean"), ids, (15, 15), 3).topk(158, dim=1).indices[0].tolist())

    reference, generator = kept(attention), torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = attention * (1 + 1e-7 * torch.randn(attention.shape, generator=generator))
        assert kept(noisy / noisy.sum(-1, keepdim=True)) == reference


@pytest.mark.parametrize("method", [m for m in METHODS if m not in MERGING_METHODS])
def test_kept_tokens_are_in_sequence_order(method, pixel_values):
    model, prefix = _build("vit")
    prune(model, pruning_method=method, **PRUNING)
    first, second = _outputs(model, pixel_values)[2].kept_patch_indices
    assert torch.equal(first, first.sort(dim=1).values)  # patch ids are sequence positions at the first layer
    for row in second.tolist():  # then the fused token (id -1, appended last) may be among the kept tokens
        patches = [p for p in row if p >= 0]
        assert patches == sorted(patches) and row[: len(patches)] == patches


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_prune_again_is_bit_identical(backbone, method, pixel_values, tmp_path):
    model, _ = _build(backbone)
    prune(model, pruning_method=method, **PRUNING)
    expected = _outputs(model, pixel_values)[0]
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()  # the stock class: the stock model again ...
    assert reloaded.config.pruning_method == method and reloaded.config.keep_rate == PRUNING["keep_rate"]
    prune(reloaded)  # ... and prune() without settings restores the recorded ones
    assert torch.equal(_outputs(reloaded, pixel_values)[0], expected)


# Every method with its own operations on the two backbones with more than one prefix token (DeiT: class +
# distillation; DINOv2 with registers: class + 4 registers), where prefix handling and the methods meet; the
# single-prefix backbones each with a share of the methods, so every adapter compiles with a pruning and a merging or
# fusing method. (The full 5 x 8 product took ~170 s of the suite; each case here is ~5 s of dynamo + AOTAutograd.)
COMPILE_CASES = [(b, m) for b in ("deit", "dinov2-registers") for m in METHODS_WITH_DISTINCT_OPERATIONS] + [
    ("vit", "variance"), ("vit", "random"), ("dinov2", "medad"), ("dinov2", "tome"), ("clip", "evit"),
    ("clip", "entropy"), ("clip", "bspf")]  # fmt: skip


@pytest.mark.parametrize(("backbone", "method"), COMPILE_CASES)
def test_torch_compile_fullgraph_equals_eager(backbone, method, pixel_values):
    """`fullgraph=True`: no graph break anywhere. The aot_eager backend traces exactly what inductor would receive
    (dynamo + AOTAutograd) without its C++ code generation; test_inductor_equals_eager checks the generated code."""
    model, _ = _build(backbone)
    prune(model, pruning_method=method, **PRUNING)
    expected = _outputs(model, pixel_values)[0]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    with torch.no_grad():
        out = compiled(pixel_values=pixel_values)
    actual = out.logits if getattr(out, "logits", None) is not None else out.image_embeds
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_a_compiled_model_follows_changes_of_its_pruning_setting(pixel_values):
    """Changing the setting of a compiled model recompiles for the new setting (dynamic=False: settings are constants
    of the graph; with automatic dynamic shapes the keep rate would be traced as a symbolic float, which the exact
    keep count cannot read under fullgraph=True)."""
    model, _ = _build("vit")
    prune(model, pruning_method="variance", **PRUNING)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        for settings in ({"keep_rate": 0.5}, {"keep_rate": 0.75}, {"keep_rate": 0.25, "pruning_method": "evit"}):
            with model.pruning(**settings):
                torch.testing.assert_close(
                    compiled(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits
                )


@pytest.mark.slow
def test_inductor_equals_eager(pixel_values):
    model, _ = _build("vit")
    prune(model, pruning_method="variance", **PRUNING)
    expected = _outputs(model, pixel_values)[0]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        actual = compiled(pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_prune_on_a_stock_vit_is_the_pruned_vit_class(method, pixel_values):
    """One implementation: `prune(ViTForImageClassification)` and `PrunedViTForImageClassification` agree exactly."""
    stock, _ = _build("vit")
    config = PrunedViTConfig(**TINY, intermediate_size=64, num_labels=5, pruning_method=method, **PRUNING)
    native = PrunedViTForImageClassification(config).eval()
    native.load_state_dict(stock.state_dict())
    prune(stock, pruning_method=method, **PRUNING)
    a, _, out_a = _outputs(stock, pixel_values)
    b, _, out_b = _outputs(native, pixel_values)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(out_a.kept_patch_indices, out_b.kept_patch_indices))


@pytest.mark.parametrize("model_class", [ViTModel, DeiTModel, Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel])
def test_base_models_report_kept_patches_too(model_class, pixel_values):
    config_class = {ViTModel: ViTConfig, DeiTModel: DeiTConfig, Dinov2Model: Dinov2Config,
                    Dinov2WithRegistersModel: Dinov2WithRegistersConfig, CLIPVisionModel: CLIPVisionConfig}  # fmt: skip
    torch.manual_seed(0)
    model = prune(model_class(config_class[model_class](**TINY)).eval(), pruning_method="variance", **PRUNING)
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
    assert [k.shape for k in out.kept_patch_indices] == [(3, 8), (3, 5)]
    with model.pruning(keep_rate=1.0), torch.no_grad():
        assert [k.shape for k in model(pixel_values=pixel_values).kept_patch_indices] == [(3, 16), (3, 16)]
    assert model.config.keep_rate == 0.5  # restored


@needs_shared
@pytest.mark.parametrize("method", METHODS)
def test_real_deit_tiny_through_prune(method):
    """The real checkpoint loaded by the stock class: pruning off is the stock model bit for bit; each method keeps
    the documented tokens and agrees exactly with the PrunedViT class."""
    from PIL import Image

    from hf_vitprune.data import load_preprocessing

    image = Image.open(sorted((IMAGENETTE / "val" / "n03417042").iterdir())[0])
    x = load_preprocessing(str(DEIT_TINY)).eval_transform()(image.convert("RGB")).unsqueeze(0)
    stock = ViTForImageClassification.from_pretrained(DEIT_TINY).eval()
    with torch.no_grad():
        reference = stock(pixel_values=x).logits
    model = prune(ViTForImageClassification.from_pretrained(DEIT_TINY).eval(), pruning_method=None)
    assert torch.equal(_outputs(model, x)[0], reference)
    model.set_pruning(pruning_method=method, keep_rate=0.7, tome_r=13)
    logits, hidden, out = _outputs(model, x)
    native = hf_vitprune.PrunedViTForImageClassification.from_pretrained(
        DEIT_TINY, pruning_method=method, keep_rate=0.7, tome_r=13
    ).eval()
    assert torch.equal(_outputs(native, x)[0], logits)
    if method == "tome":
        assert hidden[-1].shape[1] == 1 + 196 - 12 * 13
    elif method == "pitome":  # every layer keeps T - floor(T - 0.7 T): 196 -> 138 -> 97 -> 68 -> ... -> 4
        assert [k.shape[1] for k in out.kept_patch_indices] == [138, 97, 68, 48, 34, 24, 17, 12, 9, 7, 5, 4]
    elif method == "bspf":  # pruned tokens merge into kept ones: no fused token, 196 -> 138 -> 97 -> 68
        assert [k.shape[1] for k in out.kept_patch_indices] == [138, 97, 68]
        assert hidden[-1].shape[1] == 1 + 68
    else:
        assert [k.shape[1] for k in out.kept_patch_indices] == [138, 98, 70]
        assert hidden[-1].shape[1] == 1 + 70 + 1


def test_bad_input_names_what_is_wrong():
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match=r"cannot prune BertModel .*Supported: ViT .*DINOv2 .*CLIP vision"):
        prune(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8)))
    model, _ = _build("dinov2")
    with pytest.raises(ValueError, match=r"pruning_method='nope' is not known\. Use one of \['variance'"):
        prune(model, pruning_method="nope")
    with pytest.raises(ValueError, match=r"prune_layers=\[1, 7\] holds 7, which is not a layer"):
        prune(model, pruning_method="variance", prune_layers=[1, 7])
    assert not hasattr(model.config, "pruning_method")  # nothing was changed by the failed calls
    assert not hasattr(model, "set_pruning")  # a stock model gets set_pruning / pruning() from prune()


def test_a_sequence_without_candidates_is_a_clear_error():
    from hf_vitprune.reducers import ReductionState

    with pytest.raises(ValueError, match="4 tokens but 4 prefix tokens: there is no patch token"):
        ReductionState.start(torch.zeros(1, 4, 8), num_prefix_tokens=4)
