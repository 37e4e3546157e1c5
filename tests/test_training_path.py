"""The training path of a pruned model: its gradients are those of the physically reduced network, and training-mode
forward passes keep the tokens evaluation keeps (issue 42, candidate (e))."""

import math

import pytest
import torch
from conftest import tiny_config_kwargs
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.reducers import REDUCERS


def _stock_and_pruned(**pruning):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(**pruning)
    base = {k: v for k, v in kwargs.items() if k not in ("prune_layers", "keep_rate", "pruning_method", "fuse_pruned")}
    stock = ViTForImageClassification(ViTConfig(**base, attn_implementation="eager"))
    pruned = PrunedViTForImageClassification(PrunedViTConfig(**kwargs))
    pruned.load_state_dict(stock.state_dict(), strict=True)
    return stock.train(), pruned.train()


SCORES = {
    "variance": lambda a: a.var(dim=1, unbiased=False),
    "evit": lambda a: a.mean(dim=1),
    "medad": lambda a: (a - a.quantile(0.5, dim=1, keepdim=True)).abs().quantile(0.5, dim=1),
}
"""The criteria written from their equations (arXiv:2507.19175, eqs. 5-7) on the class-attention row `(B, H, C)`."""


def reduced_forward(stock, pixel_values, prune_layers, keep_rate, fuse, temperature, score):
    """The stock model run layer by layer, with each pruning layer's tokens cut by hand after its attention residual:
    the best `ceil(keep_rate * C)` candidates by `score` of the eager attention weights' class row, in sequence
    order, plus (with `fuse`) the pruned ones averaged with weights `softmax(z / temperature)`, `z` the scores
    z-scored over the image's candidates (eq. 8). Per image, with Python indexing: the physically smaller network."""
    vit = stock.vit
    hidden = vit.embeddings(pixel_values)
    for idx, layer in enumerate(vit.layers):
        attended, weights = layer.attention(layer.layernorm_before(hidden), None)
        hidden = attended + hidden
        if idx in prune_layers:
            scores = score(weights[:, :, 0, 1:])  # (B, C)
            keep = math.ceil(keep_rate * scores.shape[1])
            rows = []
            for b in range(hidden.shape[0]):
                order = scores[b].argsort(descending=True).tolist()
                kept, pruned = sorted(order[:keep]), sorted(order[keep:])
                row = [hidden[b, :1], hidden[b, 1:][kept]]
                if fuse and pruned:
                    z = (scores[b] - scores[b].mean()) / scores[b].std(unbiased=False)
                    w = (z[pruned] / temperature).softmax(0)
                    row.append((w[:, None] * hidden[b, 1:][pruned]).sum(0, keepdim=True))
                rows.append(torch.cat(row))
            hidden = torch.stack(rows)
        hidden = hidden + layer.mlp(layer.layernorm_after(hidden))
    return stock.classifier(vit.layernorm(hidden)[:, 0])


def _gradients(model, forward, pixel_values, labels):
    model.zero_grad()
    torch.nn.functional.cross_entropy(forward(model, pixel_values), labels).backward()
    return {name: parameter.grad.double().clone() for name, parameter in model.named_parameters()}


def _relative_error(gradients, reference, name):
    return ((gradients[name] - reference[name]).norm() / (reference[name].norm() + 1e-9)).item()


@pytest.mark.parametrize("method", sorted(SCORES))
@pytest.mark.parametrize("fuse", [True, False])
def test_gradients_equal_those_of_the_physically_reduced_network(method, fuse, pixel_values):
    """Every parameter's gradient through the pruning layers equals the hand-reduced network's, computed in float64.

    The criteria run in float32 in the model, and the fusion weights' 1 / (sigma * temperature) amplifies their
    rounding: the float32 reference itself differs from the float64 one by up to ~3e-3 of a gradient's norm (MedAD's
    medians of 4 heads), so the bound is 1e-2, and the scores' own gradient path (through the fused token's weights),
    which the comparison includes, moves the pruning layers' query gradients by several times that."""
    stock, pruned = _stock_and_pruned(pruning_method=method, keep_rate=0.5, fuse_pruned=fuse, prune_layers=[1, 2])
    stock.double()
    labels, temperature = torch.tensor([0, 3, 1]), pruned.config.fusion_temperature

    def reference(score):
        return lambda model, x: reduced_forward(model, x.double(), [1, 2], 0.5, fuse, temperature, score)

    expected = _gradients(stock, reference(SCORES[method]), pixel_values, labels)
    gradients = _gradients(pruned, lambda model, x: model(pixel_values=x).logits, pixel_values, labels)
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(pixel_values=pixel_values).logits.double(),
            reference(SCORES[method])(stock, pixel_values),
            rtol=1e-4,
            atol=1e-5,
        )
    for name in gradients:  # the key biases' gradient is zero up to rounding (softmax ignores a shared shift)
        assert name.endswith("k_proj.bias") or _relative_error(gradients, expected, name) < 1e-2, name
    if fuse:
        detached = _gradients(stock, reference(lambda a: SCORES[method](a.detach())), pixel_values, labels)
        for layer in (1, 2):
            assert _relative_error(detached, expected, f"vit.layers.{layer}.attention.q_proj.weight") > 5e-2


@pytest.mark.parametrize("method", sorted(name for name in REDUCERS if name != "random"))
def test_training_mode_keeps_the_tokens_evaluation_keeps(method, pixel_values):
    """No dropout in the config: a training-mode forward pass equals an evaluation-mode one, kept sets included."""
    _, model = _stock_and_pruned(pruning_method=method, keep_rate=0.5, prune_layers=[1, 2])
    outputs = {}
    model.float()
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            outputs[training] = model(pixel_values=pixel_values)
    for train_kept, eval_kept in zip(outputs[True].kept_patch_indices, outputs[False].kept_patch_indices):
        assert torch.equal(train_kept, eval_kept)
    assert torch.equal(outputs[True].logits, outputs[False].logits)
