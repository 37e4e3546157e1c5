"""PiToMe (Tran et al., NeurIPS 2024): hand-computed energies and merges, a loop reference on random tensors, the
reducer's per-layer schedule and its bad input. The comparison with the official code (CC BY-NC 4.0, not in this
repository, so not in CI) is benchmarks/pitome_reference.py."""

import math

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.reducers import PiToMeMerger
from hf_vitprune.token_merging import pitome_energy, pitome_merge, pitome_merge_count
from hf_vitprune.token_reduction import PruningSettings

F = math.exp(-0.5) - 1  # elu(x - 0.5) at x = 0 with alpha 1
# one class token + 3 candidates whose keys have cosine similarities c0.c1 = 0.8, c1.c2 = 0.6, c0.c2 = 0
KEYS = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]])
X = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])
IDS = torch.tensor([[0, 1, 2]])


def test_energy_by_hand():
    similarity = torch.tensor([[[1.0, 0.8, 0.0], [0.8, 1.0, 0.6], [0.0, 0.6, 1.0]]])
    # elu(s - 0.5): 0.5 for s = 1, 0.3 for 0.8, 0.1 for 0.6, exp(-0.5) - 1 for 0
    expected = torch.tensor([[(0.5 + 0.3 + F) / 3, (0.3 + 0.5 + 0.1) / 3, (F + 0.1 + 0.5) / 3]])
    torch.testing.assert_close(pitome_energy(similarity, 0.5), expected)
    # alpha scales the part below the margin only
    torch.testing.assert_close(pitome_energy(similarity, 0.5, alpha=2.0)[0, 0], torch.tensor((0.5 + 0.3 + 2 * F) / 3))
    # with a mask: the mean over unmasked tokens, a masked token ranks last
    valid = torch.tensor([[True, True, False]])
    masked = pitome_energy(similarity, 0.5, valid=valid)
    torch.testing.assert_close(masked[0, :2], torch.tensor([(0.5 + 0.3) / 2, (0.3 + 0.5) / 2]))
    assert masked[0, 2] == float("-inf")


@pytest.mark.parametrize("matching", ["energy", "bipartite"])
def test_the_most_redundant_token_merges_by_hand(matching):
    """Energies (margin 0.5): c1 0.300 > c0 0.136 > c2 0.069. "energy": c1 (A) and c0 (B) are the 2r = 2 highest, c1
    merges into c0, c2 is protected. "bipartite": A = (c1, c2), B = (c0); c1's link (0.8) beats c2's (0): the same
    merge. Output: prefix, c2, then c0 carrying c1, their size-weighted mean (c1 stands for 3 patches)."""
    sizes = torch.tensor([[1.0, 1.0, 3.0, 1.0]])
    out, new_sizes, ids, _, destination = pitome_merge(X, sizes, KEYS, 1, 1, IDS, margin=0.5, matching=matching)
    assert torch.equal(out, torch.tensor([[[9.0, 9.0], [0.0, 2.0], [(1.0 + 3 * 3.0) / 4, 0.0]]]))
    assert new_sizes.tolist() == [[1.0, 1.0, 4.0]]
    assert ids.tolist() == [[2, 0]] and destination.tolist() == [[1, 1, 0]]


def test_energy_and_bipartite_matching_differ_where_they_should():
    """Four candidates: a tight pair (c0, c1), and c2, c3 nearly as similar to each other. With r = 1, "energy" merges
    the two highest-energy tokens whatever their link; "bipartite" merges the A token with the best link."""
    keys = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.0, 1.0, 0.0], [0.2, 0.98, 0.0]]])
    x = torch.arange(15, dtype=torch.float).view(1, 5, 3)
    ids = torch.arange(4).unsqueeze(0)
    sizes = torch.ones(1, 5)
    for matching in ("energy", "bipartite"):
        out, _, new_ids, _, _ = pitome_merge(x, sizes, keys, 1, 1, ids, margin=0.5, matching=matching)
        reference = _loop_reference(x[0], sizes[0], keys[0], 1, 1, 0.5, 1.0, matching)
        torch.testing.assert_close(out[0], reference[0])
        assert new_ids.shape == (1, 3)


def _loop_reference(x, sizes, keys, r, prefix, margin, alpha, matching):
    """PiToMe on one image written with Python loops from the paper and the official code's steps."""
    cand = [keys[prefix + i] / keys[prefix + i].norm() for i in range(keys.shape[0] - prefix)]
    n = len(cand)
    sim = [[float(cand[i] @ cand[j]) for j in range(n)] for i in range(n)]

    def elu(v):
        return v if v > 0 else alpha * (math.exp(v) - 1)

    energy = [sum(elu(sim[i][j] - margin) for j in range(n)) / n for i in range(n)]
    order = sorted(range(n), key=lambda i: -energy[i])
    if matching == "energy":
        a, b, kept = order[: 2 * r : 2], order[1 : 2 * r : 2], order[2 * r :]
        merged = [(i, max(b, key=lambda j: sim[i][j])) for i in a]
    else:
        a, b = order[::2], order[1::2]
        best = {i: max(b, key=lambda j: sim[i][j]) for i in a}
        ranked = sorted(a, key=lambda i: -sim[i][best[i]])
        merged, kept = [(i, best[i]) for i in ranked[:r]], ranked[r:]
    total = {j: x[prefix + j] * sizes[prefix + j] for j in b}
    weight = {j: float(sizes[prefix + j]) for j in b}
    for i, j in merged:
        total[j] = total[j] + x[prefix + i] * sizes[prefix + i]
        weight[j] += float(sizes[prefix + i])
    rows = [x[p] for p in range(prefix)] + [x[prefix + i] for i in kept] + [total[j] / weight[j] for j in b]
    return torch.stack(rows), [weight[j] for j in b]


@pytest.mark.parametrize("matching", ["energy", "bipartite"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_tensors_match_the_loop_reference(matching, seed):
    generator = torch.Generator().manual_seed(seed)
    x, keys = torch.randn(2, 12, 6, generator=generator), torch.randn(2, 12, 5, generator=generator)
    sizes = torch.randint(1, 4, (2, 12), generator=generator).float()
    sizes[:, 0] = 1
    ids = torch.arange(11).expand(2, -1)
    out, new_sizes, _, _, destination = pitome_merge(
        x, sizes, keys, 4, 1, ids, margin=0.3, alpha=0.7, matching=matching
    )
    for image in range(2):
        expected, expected_sizes = _loop_reference(x[image], sizes[image], keys[image], 4, 1, 0.3, 0.7, matching)
        torch.testing.assert_close(out[image], expected)
        assert new_sizes[image, -len(expected_sizes) :].tolist() == expected_sizes
    # every candidate went to a token that exists, each B token's destination is itself
    assert destination.min() >= 0 and destination.max() < 11 - 4


def test_merge_counts_follow_the_official_float_formula():
    assert pitome_merge_count(0.9, 196) == 19  # floor(196 - 176.4)
    assert pitome_merge_count(0.55, 100) == 44  # floor(100 - 55.00000000000001): the official count, not 45
    assert pitome_merge_count(1.0, 196) == 0 and pitome_merge_count(0.5, 7) == 3
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        pitome_merge_count(0.4, 10)


def test_the_reducer_follows_the_official_deit_schedule():
    settings = PruningSettings(pruning_method="pitome", keep_rate=0.9).with_defaults(12)
    reducer = PiToMeMerger(settings, 1, 12)
    assert [reducer.matching(i) for i in range(12)] == ["bipartite"] * 6 + ["energy"] * 6
    assert [reducer.margin(i) for i in range(12)] == [0.75 - 0.75 * i / 12 for i in range(12)]
    fixed = PiToMeMerger(PruningSettings(pruning_method="pitome", pitome_margin=0.2).with_defaults(12), 1, 12)
    assert fixed.margin(0) == fixed.margin(11) == 0.2
    # 196 patches at ratio 0.9: r = floor(T - 0.9 T) per layer
    expected, tokens = [], 196
    for _ in range(12):
        tokens -= math.floor(tokens - tokens * 0.9)
        expected.append((tokens, 0))
    assert reducer.token_schedule(196, 12) == expected
    per_layer = PruningSettings(pruning_method="pitome", keep_rate=[1.0] * 11 + [0.5]).with_defaults(12)
    assert PiToMeMerger(per_layer, 1, 12).token_schedule(196, 12) == [(98, 0)]
    with pytest.raises(ValueError, match="num_hidden_layers"):
        PiToMeMerger(settings, 1)


def test_a_model_merges_without_proportional_attention(pixel_values):
    """As the official DeiT patch: merged tokens carry sizes (for later weighted merges) but the attention does not
    add log(size); the sizes are still tracked."""
    torch.manual_seed(0)
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(pruning_method="pitome"))).eval()
    seen = []
    original = PiToMeMerger.reduce

    def spy(self, hidden_states, statistic, state, amount, layer_idx):
        seen.append((state.token_sizes, state.attention_bias(torch.float32)))
        return original(self, hidden_states, statistic, state, amount, layer_idx)

    PiToMeMerger.reduce = spy
    try:
        with torch.no_grad():
            out = model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        PiToMeMerger.reduce = original
    assert [h.shape[1] for h in out.hidden_states] == [17, 9, 5, 3, 2]  # 16 -> 8 -> 4 -> 2 -> 1 candidates
    assert seen[0][0] is None and all(sizes is not None and bias is None for sizes, bias in seen[1:])
    assert seen[-1][0][:, 1:].sum(dim=1).tolist() == [16.0] * 3  # the sizes of the candidates cover every patch


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"keep_rate must lie in \[0.5, 1\]"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="pitome", keep_rate=0.3))
    with pytest.raises(ValueError, match="one keep rate per layer"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="pitome", keep_rate=[0.9, 0.9]))
    with pytest.raises(ValueError, match="pitome_margin must be a number in"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="pitome", pitome_margin=1.5))
    with pytest.raises(ValueError, match="pitome_alpha must be a number > 0"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="pitome", pitome_alpha=0))
    with pytest.raises(ValueError, match="matching must be one of"):
        pitome_merge(X, torch.ones(1, 4), KEYS, 1, 1, IDS, margin=0.5, matching="greedy")
    with pytest.raises(ValueError, match="num_merge must lie in"):
        pitome_merge(X, torch.ones(1, 4), KEYS, 2, 1, IDS, margin=0.5)
