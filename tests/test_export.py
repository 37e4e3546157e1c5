"""torch.export, ONNX (onnxruntime) and torch.compile on every method: no graph break, same logits."""

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, METHODS, METHODS_WITH_DISTINCT_OPERATIONS, needs_shared, tiny_config_kwargs
from transformers import Dinov2Config, Dinov2ForImageClassification

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification, prune
from hf_vitprune.cli import main as cli_main
from hf_vitprune.export import export_model, run_exported
from hf_vitprune.measure import LogitsOnly


def _tiny(method):
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method=method, tome_r=3))
    return PrunedViTForImageClassification(config).eval()


@pytest.mark.parametrize("method", METHODS)
def test_dynamo_explain_finds_no_graph_break(method):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(LogitsOnly(_tiny(method)))(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("method", METHODS)
def test_torch_export_with_a_dynamic_batch(method, tmp_path):
    model = _tiny(method)
    export_model(model, tmp_path / "model.pt2", "pt2")
    for batch_size in (1, 5):
        x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(batch_size))
        torch.manual_seed(0)
        with torch.no_grad():
            expected = model(pixel_values=x).logits
        torch.manual_seed(0)
        actual = run_exported(tmp_path / "model.pt2", "pt2", x)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_torch_export_of_a_stock_model_after_prune(tmp_path):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, image_size=32,
                          patch_size=8, num_labels=5)  # fmt: skip
    model = prune(Dinov2ForImageClassification(config).eval(), pruning_method="variance", keep_rate=0.5)
    export_model(model, tmp_path / "dinov2.pt2", "pt2")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_exported(tmp_path / "dinov2.pt2", "pt2", x), model(pixel_values=x).logits)


@pytest.mark.parametrize("method", ["variance", "tome"])
def test_onnx_on_a_tiny_model(method, tmp_path):
    model = _tiny(method)
    export_model(model, tmp_path / "model.onnx", "onnx")
    for batch_size in (1, 4):
        x = torch.randn(batch_size, 3, 32, 32)
        with torch.no_grad():
            expected = model(pixel_values=x).logits
        torch.testing.assert_close(run_exported(tmp_path / "model.onnx", "onnx", x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("method, setting", [("variance", ["--keep_rate", "0.7"])])
def test_onnxruntime_equals_torch_on_real_images(method, setting, tmp_path):
    """The real DeiT-Tiny exported by the command line, on real photographs at batch 1 and 8. (ToMe's export is
    checked on the tiny model, `test_onnx_on_a_tiny_model`: on the 12-layer model its export alone takes ~50 s of the
    suite's budget.)"""
    from PIL import Image

    from hf_vitprune.data import load_preprocessing

    output = tmp_path / f"deit-tiny-{method}.onnx"
    argv = ["export", "--model", str(DEIT_TINY), "--pruning_method", method, *setting, "--output", str(output)]
    assert cli_main(argv) == 0
    transform = load_preprocessing(str(DEIT_TINY)).eval_transform()
    paths = [sorted(folder.iterdir())[0] for folder in sorted((IMAGENETTE / "val").iterdir())][:8]
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    model = PrunedViTForImageClassification.from_pretrained(DEIT_TINY, pruning_method=method, keep_rate=0.7, tome_r=13)
    for batch in (images[:1], images):
        with torch.no_grad():
            expected = model.eval()(pixel_values=batch).logits
        torch.testing.assert_close(run_exported(output, "onnx", batch), expected, atol=1e-4, rtol=1e-4)


def test_export_bad_input_is_one_clear_line(tmp_path, capsys):
    cases = {
        ("--format", "tflite", "--output", str(tmp_path / "m.tflite")): "--format 'tflite' is not supported",
        ("--opset", "17", "--output", str(tmp_path / "m.onnx")): "--opset 17 is not supported",
        ("--output", str(tmp_path / "m.pt2")): "--format onnx writes a .onnx file",
    }
    for argv, message in cases.items():
        assert cli_main(["export", "--model", "unused", *argv]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "there.onnx").write_text("keep me")
    assert cli_main(["export", "--output", str(tmp_path / "there.onnx")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "there.onnx").read_text() == "keep me"


@pytest.mark.parametrize("method", [m for m in METHODS_WITH_DISTINCT_OPERATIONS if m != "random"])
def test_the_standard_onnx_call_with_a_batch_1_example_stays_dynamic(tmp_path, method):
    """`torch.onnx.export(model, (pixel_values,), dynamo=True, dynamic_shapes=...)` as HF users write it, with a batch-1
    example: the exported batch axis is dynamic (torch.export specialises sizes 0 and 1, and pruning's matmul and
    gathers used to fix the batch at 1), and onnxruntime at batch 4 equals torch."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method=method, tome_r=2, attn_implementation="eager"))
    model = PrunedViTForImageClassification(config).eval()
    path = tmp_path / f"{method}.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=True, input_names=["pixel_values"],
                      dynamic_shapes={"pixel_values": {0: batch}})  # fmt: skip
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": images.numpy()}
    )[0]
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    assert logits.shape == (4, config.num_labels) and bool(torch.from_numpy(logits).isfinite().all())
    if method != "entropy":  # at random init the tokens' entropies tie to float precision: which is kept at the
        # boundary depends on the backend's rounding (tests/test_conformance.py, the near-equal scores test)
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)
