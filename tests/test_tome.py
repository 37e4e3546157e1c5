"""ToMe (token merging) against hand-computed merges: bipartite sides, size bookkeeping, protected prefix tokens."""

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.modeling_pruned_vit import PrunedViTLayer
from hf_vitprune.reducers import ReductionState
from hf_vitprune.token_merging import merge_tokens, tome_merge_limit
from hf_vitprune.token_reduction import TokenReduction, reducer_from_config

# One class token + 4 candidates (sequence positions 1..4). Side A = even positions = candidates 1 and 3,
# side B = odd positions = candidates 0 and 2. Keys are chosen so that candidate 1 is closest to candidate 0
# (cosine .995) and candidate 3 closest to candidate 2 (cosine .981).
KEYS = torch.tensor([[[0.3, -0.7], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0]]])
X = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])
IDS = torch.tensor([[0, 1, 2, 3]])


def test_merge_one_token_into_its_most_similar():
    out, sizes, ids, _, _ = merge_tokens(X, torch.ones(1, 5), KEYS, 1, 1, IDS)
    # candidate 1 (A) merges into candidate 0 (B): mean of (1, 0) and (3, 0); order: unmerged A, then B
    assert torch.equal(out, torch.tensor([[[9.0, 9.0], [0.0, 4.0], [2.0, 0.0], [0.0, 2.0]]]))
    assert sizes.tolist() == [[1.0, 1.0, 2.0, 1.0]]
    assert ids.tolist() == [[3, 0, 2]]


def test_merge_two_tokens_and_sizes_weight_the_average():
    sizes_in = torch.tensor([[1.0, 1.0, 3.0, 1.0, 1.0]])  # candidate 1 already stands for 3 patches
    out, sizes, ids, _, _ = merge_tokens(X, sizes_in, KEYS, 2, 1, IDS)
    assert torch.allclose(out[0, 1], torch.tensor([(1 * 1.0 + 3 * 3.0) / 4, 0.0]))
    assert torch.allclose(out[0, 2], torch.tensor([0.0, (2.0 + 4.0) / 2]))
    assert sizes.tolist() == [[1.0, 4.0, 2.0]] and ids.tolist() == [[0, 2]]


def test_one_destination_can_absorb_several_tokens():
    keys = KEYS.clone()
    keys[0, 4] = torch.tensor([1.0, 0.05])  # now candidate 3 is also closest to candidate 0
    out, sizes, ids, _, _ = merge_tokens(X, torch.ones(1, 5), keys, 2, 1, IDS)
    assert torch.allclose(out[0, 1], torch.tensor([(1.0 + 3.0 + 0.0) / 3, 4.0 / 3]))
    assert torch.equal(out[0, 2], X[0, 3])
    assert sizes.tolist() == [[1.0, 3.0, 1.0]] and ids.tolist() == [[0, 2]]


def test_prefix_tokens_never_merge_even_when_identical():
    keys = KEYS.clone()
    keys[0, 0] = keys[0, 1]  # the class token's key equals candidate 0's
    out, sizes, _, _, _ = merge_tokens(X, torch.ones(1, 5), keys, 2, 1, IDS)
    assert torch.equal(out[0, 0], X[0, 0]) and sizes[0, 0] == 1


def test_two_prefix_tokens_shift_the_sides():
    # class + distillation token, then 3 candidates at positions 2, 3, 4: A = {0, 2}, B = {1}
    x = torch.tensor([[[9.0, 9.0], [8.0, 8.0], [1.0, 0.0], [3.0, 0.0], [5.0, 0.0]]])
    keys = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.2]]])
    out, sizes, ids, _, _ = merge_tokens(x, torch.ones(1, 5), keys, 1, 2, torch.tensor([[0, 1, 2]]))
    # candidate 0 is the closer A token to B's candidate 1 (cosine 1 vs .98)
    assert torch.equal(out, torch.tensor([[[9.0, 9.0], [8.0, 8.0], [5.0, 0.0], [2.0, 0.0]]]))
    assert ids.tolist() == [[2, 1]] and sizes.tolist() == [[1.0, 1.0, 1.0, 2.0]]


def test_merge_limit_is_side_a():
    assert [tome_merge_limit(n, 1) for n in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [tome_merge_limit(n, 2) for n in range(6)] == [0, 0, 1, 2, 2, 3]
    out, _, ids, _, _ = merge_tokens(X, torch.ones(1, 5), KEYS, 100, 1, IDS)
    assert out.shape[1] == 3 and ids.shape[1] == 2


def test_proportional_attention_equals_duplicated_tokens():
    """A token of size 2 must attract the attention of two identical copies of it (ToMe's proportional attention)."""
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method="tome", tome_r=0))
    layer = PrunedViTLayer(config, 0).eval()
    reducer = reducer_from_config(config, 1)
    cls, t, u = torch.randn(3, 1, 32).unbind(0)
    duplicated = torch.stack([cls, t, t, u], dim=1)
    merged = torch.stack([cls, t, u], dim=1)
    sized = ReductionState(patch_ids=torch.tensor([[0, 2]]), token_sizes=torch.tensor([[1.0, 2.0, 1.0]]))
    with torch.no_grad():
        a = layer(duplicated, None, token_reduction=TokenReduction(reducer, 1))
        b = layer(merged, None, token_reduction=TokenReduction(reducer, 1, sized))
        without_sizes = layer(merged, None, token_reduction=TokenReduction(reducer, 1))
    assert torch.allclose(a[:, [0, 1, 3]], b, atol=1e-5)
    assert not torch.allclose(without_sizes, b, atol=1e-3)  # without the size bias it differs


def test_tome_model_follows_its_token_schedule():
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method="tome", tome_r=[3, 0, 5, 2]))
    model = PrunedViTForImageClassification(config).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    # 16 candidates: -3 -> 13; layer 1 merges none; -min(5, 6) -> 8; -min(2, 4) -> 6
    assert config.token_schedule(16) == [(13, 0), (8, 0), (6, 0)]
    assert [h.shape[1] for h in out.hidden_states] == [17, 14, 14, 9, 7]
    assert [k.shape for k in out.kept_patch_indices] == [(2, 13), (2, 8), (2, 6)]
    for kept in out.kept_patch_indices:
        assert kept.min() >= 0 and kept.max() < 16


def test_tome_trains_with_gradient_checkpointing_and_the_gradients_are_the_same():
    """Checkpointing recomputes each layer in the backward pass: it must see the token sizes it saw the first time."""
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method="tome", tome_r=3))
    pixel_values, labels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PrunedViTForImageClassification(config).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
    assert grads[0]["vit.embeddings.patch_embeddings.projection.weight"].abs().sum() > 0


@pytest.mark.parametrize("bad", [-1, 1.5, [1, 2], True])
def test_bad_tome_r(bad):
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match="tome_r"):
        PrunedViTConfig(**tiny_config_kwargs(pruning_method="tome", tome_r=bad))
