"""The seeds' other two systems: entropy readings (query / key / heads, alpha up to infinity) and BSPF-ViT
(joint importance, block smoothing, similarity fusion, tied query / key projections), against hand-computed values."""

import math

import pytest
import torch
from conftest import run_fresh_process, tiny_config_kwargs
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.reducers import REDUCERS, ReductionState
from hf_vitprune.token_ops import (
    ATTENTION,
    CLASS_ATTENTION,
    block_smooth,
    head_entropy_scores,
    joint_importance,
    key_entropy_scores,
    similarity_fusion,
)
from hf_vitprune.token_reduction import PruningSettings

# Entropy readings -----------------------------------------------------------------------------------------------------


def test_key_entropy_is_the_entropy_of_the_normalised_column():
    # 1 head, 3 tokens (class + 2 candidates); rows are queries
    a = torch.tensor([[[[0.2, 0.6, 0.2], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]]])
    scores = key_entropy_scores(a, num_prefix_tokens=1)
    col1 = [0.6, 0.5, 0.1]  # attention candidate 0 receives, normalised: / 1.2
    col2 = [0.2, 0.0, 0.8]  # / 1.0
    h = [-sum((c / sum(col)) * math.log(c / sum(col)) for c in col if c > 0) for col in (col1, col2)]
    torch.testing.assert_close(scores, torch.tensor([[-h[0], -h[1]]]))


def test_head_entropy_is_the_entropy_across_heads_of_the_class_attention():
    ca = torch.tensor([[[0.1, 0.4], [0.1, 0.0], [0.2, 0.0]]])  # 3 heads x 2 candidates
    scores = head_entropy_scores(ca, alpha=2.0)
    p0 = [0.25, 0.25, 0.5]  # candidate 0 across heads, normalised
    h0 = -math.log(sum(p * p for p in p0))  # Renyi-2: -log sum p^2
    assert scores[0, 0].item() == pytest.approx(-h0, abs=1e-6)
    assert scores[0, 1].item() == pytest.approx(0.0, abs=1e-6)  # one head only: zero entropy, the most important
    min_entropy = head_entropy_scores(ca, alpha=float("inf"))
    assert min_entropy[0, 0].item() == pytest.approx(math.log(0.5), abs=1e-6)  # -(-log max p)


@pytest.mark.parametrize("axis, statistic", [("query", ATTENTION), ("key", ATTENTION), ("heads", CLASS_ATTENTION)])
def test_each_reading_asks_for_its_statistic_and_prunes(axis, statistic):
    settings = PruningSettings(pruning_method="entropy", entropy_axis=axis).with_defaults(4)
    assert REDUCERS["entropy"](settings, 1).statistic == statistic
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(pruning_method="entropy", entropy_axis=axis, renyi_alpha=float("inf"))
    config = PrunedViTConfig(**kwargs)
    model = PrunedViTForImageClassification(config).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out.logits).all() and [k.shape[1] for k in out.kept_patch_indices] == [8, 5]


def test_an_unknown_entropy_axis_is_a_clear_error():
    with pytest.raises(ValueError, match=r"entropy_axis='rows' is not known: use one of \['query', 'key', 'heads'\]"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="entropy", entropy_axis="rows"))


# BSPF-ViT -------------------------------------------------------------------------------------------------------------


def test_block_smoothing_averages_present_neighbours_and_respects_the_border():
    # 3 x 3 grid, all 9 patches present, scores = patch index
    ids = torch.arange(9).unsqueeze(0)
    smoothed = block_smooth(ids.float(), ids, (3, 3), 3)
    # corner 0: neighbours 0, 1, 3, 4 -> 2; centre 4: all nine -> 4; edge 1: 0, 1, 2, 3, 4, 5 -> 2.5
    assert smoothed[0, 0].item() == pytest.approx(2.0) and smoothed[0, 4].item() == pytest.approx(4.0)
    assert smoothed[0, 1].item() == pytest.approx(2.5)
    # patches 1 and 3 gone, a fused token (-1) keeps its own score
    ids = torch.tensor([[0, 2, 4, -1]])
    scores = torch.tensor([[1.0, 5.0, 9.0, 7.0]])
    out = block_smooth(scores, ids, (3, 3), 3)
    assert out[0, 0].item() == pytest.approx((1 + 9) / 2) and out[0, 3].item() == 7.0  # 0 sees 0 and 4
    assert out[0, 1].item() == pytest.approx((5 + 9) / 2)  # 2 sees 2 and 4
    assert torch.equal(block_smooth(scores, ids, (3, 3), 1), scores)
    with pytest.raises(ValueError, match="odd number from 1 to the smaller side of the 3x3 patch grid, got 5"):
        block_smooth(scores, ids, (3, 3), 5)


def test_joint_importance_combines_the_key_and_the_query_role():
    a = torch.tensor([[[[0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]])  # 1 head; candidates 1 and 2
    received = [(0.3 + 0.8 + 0.3) / 3, (0.3 + 0.1 + 0.4) / 3]
    entropy = [-sum(p * math.log(p) for p in (0.1, 0.8, 0.1)), -sum(p * math.log(p) for p in (0.3, 0.3, 0.4))]
    product = joint_importance(a, 1, "product")
    torch.testing.assert_close(product, torch.tensor([[r * math.exp(-h) for r, h in zip(received, entropy)]]))
    mean = joint_importance(a, 1, "mean")
    assert mean[0, 0] > mean[0, 1]  # candidate 1 receives more and attends more sharply
    with pytest.raises(ValueError, match="joint"):
        joint_importance(a, 1, "max")


def test_similarity_fusion_merges_into_the_most_similar_kept_token_by_size():
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])  # class + 3 candidates
    keys = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]])
    sizes = torch.tensor([[1.0, 1.0, 1.0, 3.0]])
    kept, pruned = torch.tensor([[0, 1]]), torch.tensor([[2]])  # candidate 2 is closest to candidate 0
    out, new_sizes, _ = similarity_fusion(x, sizes, keys, kept, pruned, 1)
    assert torch.allclose(out[0, 1], torch.tensor([(1 * 1.0 + 3 * 3.0) / 4, 0.0]))
    assert torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[0, 2], x[0, 2])
    assert new_sizes.tolist() == [[1.0, 4.0, 1.0]]


def test_bspf_model_keeps_the_documented_tokens_with_no_extra_token_and_trains():
    torch.manual_seed(0)
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(pruning_method="bspf"))).train()
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]), output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [17, 17, 9, 5, 5]  # 16 -> 8 -> 4, merged, no fused token
    assert model.config.token_schedule(16) == [(8, 0), (4, 0)]
    out.loss.backward()
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_a_block_larger_than_the_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="bspf_block=5 is larger than this model's 4x4 patch grid"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="bspf", bspf_block=5))  # 4 x 4 grid: refused when set
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method="bspf", bspf_block=5, image_size=64))  # 8 x 8
    with pytest.raises(ValueError, match="smaller side of the 4x4 patch grid, got 5"), torch.no_grad():
        model = PrunedViTForImageClassification(config).eval()  # a 32 px input: a 4 x 4 grid at run time
        model(pixel_values=torch.randn(1, 3, 32, 32), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="bspf_block must be odd"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="bspf", bspf_block=2))


# Tied query / key projections -----------------------------------------------------------------------------------------


@pytest.fixture
def stock_dir(tmp_path):
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base)).save_pretrained(tmp_path / "stock")
    return tmp_path / "stock"


@pytest.mark.parametrize("init", ["mean", "query"])
def test_tied_query_key_gives_symmetric_logits_and_round_trips(stock_dir, tmp_path, init):
    stock = PrunedViTForImageClassification.from_pretrained(stock_dir, prune_layers=[1, 2])
    q, k = stock.vit.layers[0].attention.q_proj.weight, stock.vit.layers[0].attention.k_proj.weight
    model = PrunedViTForImageClassification.from_pretrained(
        stock_dir, prune_layers=[1, 2], tie_query_key=True, tied_qk_init=init
    ).eval()
    attention = model.vit.layers[0].attention
    assert attention.k_proj is None and model.config.tie_query_key and model.config.tied_qk_init == init
    expected = (q + k) / 2 if init == "mean" else q
    torch.testing.assert_close(attention.q_proj.weight, expected)
    hidden = torch.randn(2, 17, 32)
    with torch.no_grad():
        _, _, weights = attention(hidden, statistic=ATTENTION)  # the full matrix, (batch, heads, tokens, tokens)
    # symmetric logits s_ij = s_ji: log w_ij - log w_ji = log Z_j - log Z_i, so it is d_0j - d_0i for all i, j
    d = weights.log() - weights.log().transpose(-1, -2)
    torch.testing.assert_close(d, d[..., :1, :] - d[..., :1, :].transpose(-1, -2), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        _, _, untied = stock.eval().vit.layers[0].attention(hidden, statistic=ATTENTION)
    e = untied.log() - untied.log().transpose(-1, -2)
    assert not torch.allclose(e, e[..., :1, :] - e[..., :1, :].transpose(-1, -2), atol=1e-3)  # the test can fail
    model.save_pretrained(tmp_path / "tied")
    assert not any("k_proj" in name for name in model.state_dict())
    reloaded = PrunedViTForImageClassification.from_pretrained(tmp_path / "tied").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)


def test_tying_without_saying_how_is_a_clear_error(stock_dir):
    with pytest.raises(ValueError, match="separate query and key weights.*tied_qk_init='mean'"):
        PrunedViTForImageClassification.from_pretrained(stock_dir, prune_layers=[1, 2], tie_query_key=True)


REMOTE = """
import sys, json
sys.modules["hf_vitprune"] = None  # the package must not be importable here
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    out = model(pixel_values=torch.load(sys.argv[2]))
print(json.dumps({"module": type(model).__module__, "logits": out.logits.tolist(),
                  "kept": [k.tolist() for k in out.kept_patch_indices]}))
"""


@pytest.mark.parametrize("method, extra", [("bspf", {}), ("entropy", {"entropy_axis": "key", "renyi_alpha": 2.0})])
def test_new_methods_load_with_remote_code_bit_identical(stock_dir, tmp_path, method, extra):

    tie = {"tie_query_key": True, "tied_qk_init": "mean"} if method == "bspf" else {}
    model = PrunedViTForImageClassification.from_pretrained(
        stock_dir, pruning_method=method, prune_layers=[1, 2], keep_rate=0.5, **tie, **extra
    ).eval()
    model.save_pretrained(tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(pixel_values=x)
    report = run_fresh_process(tmp_path, REMOTE, tmp_path / "model", tmp_path / "x.pt")
    assert report["module"].startswith("transformers_modules.")
    assert torch.equal(torch.tensor(report["logits"]), expected.logits)
    assert report["kept"] == [k.tolist() for k in expected.kept_patch_indices]


def test_bspf_scores_get_no_gradient_so_a_learnable_block_filter_could_not_learn():
    # docs/bspf.md: bspf's scores only choose the kept tokens (hard top-k) and its similarity fusion weighs by token
    # sizes, so nothing downstream depends differentiably on the scores: a learnable filter on them would get no
    # gradient. Variance with fusion, by contrast, weighs the fused token by softmax(scores) (eq. 8): gradient flows.
    torch.manual_seed(0)
    batch, prefix, grid = 2, 1, (4, 4)
    tokens = prefix + grid[0] * grid[1]
    hidden = torch.randn(batch, tokens, 8, requires_grad=True)
    attention = torch.randn(batch, 2, tokens, tokens).softmax(dim=-1).requires_grad_()
    keys = torch.randn(batch, tokens, 4)
    bspf = PruningSettings(pruning_method="bspf", keep_rate=0.5, prune_layers=[0]).reducer(prefix)
    out, _ = bspf.reduce(hidden, (attention, keys), ReductionState.start(hidden, prefix, grid=grid), 8, 0)
    assert torch.autograd.grad(out.square().sum(), [hidden, attention], allow_unused=True)[1] is None
    variance = PruningSettings(pruning_method="variance", keep_rate=0.5, prune_layers=[0]).reducer(prefix)
    class_attention = attention[:, :, 0, prefix:]
    out, _ = variance.reduce(hidden, class_attention, ReductionState.start(hidden, prefix, grid=grid), 8, 0)
    (gradient,) = torch.autograd.grad(out.square().sum(), [attention])
    assert gradient.abs().sum() > 0
