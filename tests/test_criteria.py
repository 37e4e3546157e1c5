"""Criteria and selection/fusion against values computed by hand (tiny inputs, independent arithmetic)."""

import math

import pytest
import torch

from hf_vitprune.reducers import REDUCERS
from hf_vitprune.token_ops import (
    entropy_scores,
    evit_scores,
    gather_tokens,
    medad_scores,
    prune_tokens,
    random_scores,
    renyi_entropy,
    true_median,
    variance_scores,
)
from hf_vitprune.token_reduction import PruningSettings

# class-token attention, batch 1, 4 heads (rows) x 3 candidate tokens (columns)
A = torch.tensor([[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.5, 0.2, 0.4], [0.1, 0.4, 0.2]]])


def test_evit_is_the_mean_over_heads():
    torch.testing.assert_close(evit_scores(A), torch.tensor([[0.25, 0.25, 0.25]]))


def test_variance_is_the_biased_variance_over_heads():
    # token 0: values .1 .3 .5 .1, mean .25 -> (.0225 + .0025 + .0625 + .0225) / 4 = .0275
    # token 1: .2 .2 .2 .4 -> (3 * .0025 + .0225) / 4 = .0075 ; token 2: .3 .1 .4 .2 -> .05 / 4 = .0125
    torch.testing.assert_close(variance_scores(A), torch.tensor([[0.0275, 0.0075, 0.0125]]))


def test_true_median_averages_the_two_middle_values():
    x = torch.tensor([[0.1, 0.3, 0.5, 0.1]])
    assert true_median(x, dim=1).item() == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert torch.median(x, dim=1).values.item() == pytest.approx(0.1)  # torch's lower median differs
    assert true_median(torch.tensor([[3.0, 1.0, 2.0]]), dim=1).item() == 2.0  # odd count: the middle value


def test_medad_uses_the_true_median_twice():
    # token 0: median .2, |dev| = .1 .1 .3 .1 -> median .1
    # token 1: median .2, |dev| = 0 0 0 .2 -> median 0
    # token 2: median .25, |dev| = .05 .15 .15 .05 -> median .1
    torch.testing.assert_close(medad_scores(A), torch.tensor([[0.1, 0.0, 0.1]]))


def test_shannon_and_renyi_entropy_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25])
    assert renyi_entropy(p, 1.0).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert renyi_entropy(p, 2.0).item() == pytest.approx(-math.log(0.375), abs=1e-6)
    assert renyi_entropy(p, 0.5).item() == pytest.approx(2 * math.log(math.sqrt(0.5) + 1.0), abs=1e-6)
    # continuity at alpha = 1, uniform distributions give log n for every order, and 0 log 0 = 0
    assert renyi_entropy(p.double(), 1.0 + 1e-6).item() == pytest.approx(1.5 * math.log(2), abs=1e-5)
    for alpha in (0.5, 1.0, 2.0, 3.0):
        assert renyi_entropy(torch.full((4,), 0.25), alpha).item() == pytest.approx(math.log(4), abs=1e-6)
    assert renyi_entropy(torch.tensor([1.0, 0.0]), 1.0).item() == 0.0
    with pytest.raises(ValueError, match="alpha"):
        renyi_entropy(p, 0.0)


def test_entropy_score_is_minus_the_head_mean_entropy():
    # batch 1, 2 heads, 2 candidates, 3 tokens
    rows = torch.tensor([[[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], [[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]]])
    scores = entropy_scores(rows, alpha=1.0)
    expected0 = -(1.5 * math.log(2) + math.log(3)) / 2
    torch.testing.assert_close(scores, torch.tensor([[expected0, 0.0]]))
    assert scores[0, 1] > scores[0, 0]  # the concentrated token is more important


def test_random_scores_are_uniform_and_seeded():
    torch.manual_seed(0)
    a = random_scores(2, 5, "cpu")
    torch.manual_seed(0)
    b = random_scores(2, 5, "cpu")
    assert a.shape == (2, 5) and a.dtype == torch.float32
    assert torch.equal(a, b) and (a >= 0).all() and (a < 1).all()


def test_each_criterion_reducer_scores_with_its_criterion():
    """The registry's pruning classes score with the functions above (hand-checked there)."""
    cases = {"evit": evit_scores(A), "variance": variance_scores(A), "medad": medad_scores(A)}
    for name, expected in cases.items():
        reducer = REDUCERS[name](PruningSettings(pruning_method=name).with_defaults(12), 1)
        assert torch.equal(reducer.score(A, 1, 3, "cpu"), expected), name
    rows = torch.tensor([[[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], [[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]]])
    full = torch.cat([torch.full((1, 2, 1, 3), 1 / 3), rows], dim=2)  # the class token's row first
    entropy = REDUCERS["entropy"](PruningSettings(pruning_method="entropy", renyi_alpha=2.0).with_defaults(12), 1)
    assert torch.equal(entropy.score(full, 1, 2, "cpu"), entropy_scores(rows, 2.0))


def test_unknown_method_lists_the_registry():
    with pytest.raises(ValueError, match="not known") as error:
        PruningSettings(pruning_method="nope").with_defaults(12).validate(12)
    assert all(name in str(error.value) for name in REDUCERS)


def _example():
    # class token then 4 candidates with 2 features each
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]]])
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    patch_ids = torch.tensor([[0, 1, 2, 3]])
    return hidden, scores, patch_ids


def test_prune_keeps_the_best_and_fuses_the_rest_with_softmax_weights():
    hidden, scores, patch_ids = _example()
    temperature = 0.5
    out, new_ids, kept, _, _ = prune_tokens(hidden, scores, 2, 1, patch_ids, fuse=True, fusion_temperature=temperature)
    # kept: candidates 1 (0.4) and 2 (0.3), best first; pruned: 3 (0.2) and 0 (0.1)
    assert kept.tolist() == [[1, 2]]
    assert new_ids.tolist() == [[1, 2, -1]]
    assert torch.equal(out[0, :3], torch.tensor([[9.0, 9.0], [0.0, 1.0], [2.0, 2.0]]))
    # weights: softmax of scores / (population std of all 4 scores * T)
    std = math.sqrt(sum((s - 0.25) ** 2 for s in (0.1, 0.4, 0.3, 0.2)) / 4)
    w3 = 1 / (1 + math.exp(-(0.2 - 0.1) / (std * temperature)))
    expected = torch.tensor([w3 * 4.0 + (1 - w3) * 1.0, 0.0])
    torch.testing.assert_close(out[0, 3], expected)


def test_without_fusion_nothing_is_appended():
    hidden, scores, patch_ids = _example()
    out, new_ids, kept, _, _ = prune_tokens(hidden, scores, 3, 1, patch_ids, fuse=False)
    assert out.shape == (1, 4, 2)
    assert kept.tolist() == [[1, 2, 3]] and new_ids.tolist() == [[1, 2, 3]]


def test_fusion_weights_do_not_depend_on_the_score_scale():
    hidden, scores, patch_ids = _example()
    a, _, _, _, _ = prune_tokens(hidden, scores, 2, 1, patch_ids)
    b, _, _, _, _ = prune_tokens(hidden, scores * 1e-5, 2, 1, patch_ids)
    torch.testing.assert_close(a, b)


def test_equal_scores_fuse_to_the_plain_mean():
    hidden, _, patch_ids = _example()
    out, _, _, _, _ = prune_tokens(hidden, torch.zeros(1, 4), 2, 1, patch_ids)
    pruned = out.new_tensor([[2.0, 2.0], [4.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # any two: ties keep input order
    kept_ids = out[0, 1:3]
    fused = out[0, 3]
    total = pruned.sum(0)
    torch.testing.assert_close(fused, (total - kept_ids.sum(0)) / 2)


def test_prefix_tokens_are_never_pruned_and_a_kept_fused_token_is_minus_one():
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)  # 2 prefix + 4 candidates
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.9]])
    patch_ids = torch.tensor([[5, 7, 8, -1], [5, 7, 8, -1]])
    out, new_ids, kept, _, _ = prune_tokens(hidden, scores, 2, 2, patch_ids)
    assert torch.equal(out[:, :2], hidden[:, :2])
    assert kept.tolist() == [[5, -1], [8, -1]]  # in sequence order: the kept fused token stays last
    assert new_ids.tolist() == [[5, -1, -1], [8, -1, -1]]
    torch.testing.assert_close(out[1, 2:4], hidden[1, [4, 5]])  # candidates 2 and 3 of image 1, in that order


def test_gradients_reach_pruned_tokens_only_through_the_fused_token():
    hidden, scores, patch_ids = _example()
    for fuse, expect_grad in ((True, True), (False, False)):
        x = hidden.clone().requires_grad_(True)
        out, _, _, _, _ = prune_tokens(x, scores, 2, 1, patch_ids, fuse=fuse)
        (out * torch.arange(1.0, out.numel() + 1).view_as(out)).sum().backward()
        pruned_grad = x.grad[0, [1, 4]]  # candidates 0 and 3 are pruned
        assert bool(pruned_grad.abs().sum() > 0) is expect_grad
        assert x.grad[0, [2, 3]].abs().sum() > 0  # kept tokens always get gradient


def test_num_keep_out_of_range():
    hidden, scores, patch_ids = _example()
    with pytest.raises(ValueError, match="num_keep"):
        prune_tokens(hidden, scores, 0, 1, patch_ids)
    with pytest.raises(ValueError, match="num_keep"):
        prune_tokens(hidden, scores, 5, 1, patch_ids)


def test_gather_tokens_equals_gather_in_values_and_gradients():
    x = torch.randn(3, 7, 5, requires_grad=True)
    index = torch.tensor([[6, 0, 2], [1, 1, 5], [3, 4, 0]])
    expected = x.gather(1, index.unsqueeze(-1).expand(-1, -1, 5))
    out = gather_tokens(x, index)
    assert torch.equal(out, expected)
    weights = torch.randn_like(out)
    (grad_ours,) = torch.autograd.grad((out * weights).sum(), x)
    (grad_gather,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.equal(grad_ours, grad_gather)
