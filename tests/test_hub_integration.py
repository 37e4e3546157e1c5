"""Hugging Face integration: legacy checkpoints, Auto classes, auto_map, trust_remote_code in a fresh process."""

import ast
import json
import sys
import textwrap

import pytest
import torch
from conftest import DEIT_TINY, IMAGENETTE, REPO, needs_shared, run_fresh_process, tiny_config_kwargs
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_vitprune import PrunedDeiTForImageClassificationWithTeacher, PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.loading import load_pruned_model


def _base_kwargs():
    return {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}


@pytest.fixture
def stock_vit_dir(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "stock_vit"
    ViTForImageClassification(ViTConfig(**_base_kwargs())).save_pretrained(path)
    return path


def _weight_names(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_stock_checkpoints_use_legacy_names_and_load_completely(stock_vit_dir, pixel_values):
    names = _weight_names(stock_vit_dir)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in names  # the legacy layout
    model, info = PrunedViTForImageClassification.from_pretrained(
        stock_vit_dir, prune_layers=[1, 2], keep_rate=1.0, output_loading_info=True
    )
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "pruned_vit" and type(model.config) is PrunedViTConfig
    stock = ViTForImageClassification.from_pretrained(stock_vit_dir).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(pixel_values=pixel_values).logits, stock(pixel_values=pixel_values).logits)


def test_distilled_deit_checkpoint_loads_into_the_teacher_class(tmp_path, pixel_values):
    torch.manual_seed(0)
    stock = DeiTForImageClassificationWithTeacher(DeiTConfig(**_base_kwargs())).eval()
    stock.save_pretrained(tmp_path)
    model, info = PrunedDeiTForImageClassificationWithTeacher.from_pretrained(
        tmp_path, prune_layers=[1, 2], keep_rate=1.0, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.model_type == "pruned_deit"
    with torch.no_grad():
        assert torch.equal(model.eval()(pixel_values=pixel_values).logits, stock(pixel_values=pixel_values).logits)
    assert type(load_pruned_model(str(tmp_path), prune_layers=[1])) is PrunedDeiTForImageClassificationWithTeacher
    with pytest.raises(ValueError, match="PrunedDeiT"):
        PrunedViTForImageClassification.from_pretrained(tmp_path, prune_layers=[1])


@needs_shared
def test_real_deit_tiny_loads_with_zero_missing_or_unexpected_weights():
    model, info = PrunedViTForImageClassification.from_pretrained(
        DEIT_TINY, pruning_method="medad", keep_rate=0.5, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "pruned_vit"
    assert (model.config.pruning_method, model.config.keep_rate) == ("medad", 0.5)


@needs_shared
def test_real_deit_tiny_unpruned_logits_equal_stock_on_a_real_image():
    from PIL import Image

    from hf_vitprune.data import eval_transform

    image = Image.open(next((IMAGENETTE / "val" / "n01440764").iterdir())).convert("RGB")
    x = eval_transform(224)(image).unsqueeze(0)
    stock = ViTForImageClassification.from_pretrained(DEIT_TINY).eval()
    model = PrunedViTForImageClassification.from_pretrained(DEIT_TINY, keep_rate=1.0).eval()
    with torch.no_grad():
        expected = stock(pixel_values=x).logits
        assert torch.equal(model(pixel_values=x).logits, expected)
        model.set_pruning(keep_rate=0.7)
        pruned = model(pixel_values=x)
    assert pruned.logits.argmax().item() == expected.argmax().item() == 0  # tench, pruned or not
    assert [k.shape[1] for k in pruned.kept_patch_indices] == [138, 98, 70]


def test_auto_classes_resolve_to_the_package(stock_vit_dir, tmp_path):
    model = PrunedViTForImageClassification.from_pretrained(stock_vit_dir, prune_layers=[1, 2])
    model.save_pretrained(tmp_path / "pruned")
    assert type(AutoConfig.from_pretrained(tmp_path / "pruned")) is PrunedViTConfig
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "pruned")) is PrunedViTForImageClassification


def _save_pruned_with_processor(stock_vit_dir, path):
    model = PrunedViTForImageClassification.from_pretrained(
        stock_vit_dir, pruning_method="medad", keep_rate=[0.5, 0.7], prune_layers=[1, 2], fusion_temperature=0.25
    ).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model


def test_saved_weights_use_the_native_names_and_both_layouts_load(stock_vit_dir, tmp_path, pixel_values):
    model = PrunedViTForImageClassification.from_pretrained(stock_vit_dir, prune_layers=[1, 2]).eval()
    model.save_pretrained(tmp_path / "native")
    assert _weight_names(tmp_path / "native") == set(model.state_dict())  # what Trainer's resume expects
    model.save_pretrained(tmp_path / "legacy", save_original_format=True)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in _weight_names(tmp_path / "legacy")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        for layout in ("native", "legacy"):
            reloaded, info = PrunedViTForImageClassification.from_pretrained(
                tmp_path / layout, output_loading_info=True
            )
            assert not info["missing_keys"] and not info["unexpected_keys"]
            assert torch.equal(reloaded.eval()(pixel_values=pixel_values).logits, expected)


SHIPPED = {
    "configuration_pruned_vit.py",
    "modeling_pruned_vit.py",
    "reducers.py",
    "token_merging.py",
    "token_ops.py",
    "token_reduction.py",
}
ALLOWED_IMPORTS = {"torch", "transformers", "huggingface_hub"}


def _imports(path):
    """`(absolute top-level modules, relative module names)` imported anywhere in the file (ast, not text)."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.add(node.module or "")
            else:
                absolute.add(node.module.split(".")[0])
    return absolute, relative


def test_save_pretrained_writes_auto_map_and_the_code(stock_vit_dir, tmp_path):
    _save_pruned_with_processor(stock_vit_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "pruned_vit"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pruned_vit.PrunedViTConfig",
        "AutoModelForImageClassification": "modeling_pruned_vit.PrunedViTForImageClassification",
    }
    assert {p.name for p in tmp_path.glob("*.py")} == SHIPPED
    # the shipped code imports only the standard library, torch, transformers, huggingface_hub and its siblings
    for path in sorted(tmp_path.glob("*.py")):
        absolute, relative = _imports(path)
        outside = absolute - ALLOWED_IMPORTS - set(sys.stdlib_module_names)
        assert not outside, f"{path.name} imports {sorted(outside)}"
        assert {f"{name}.py" for name in relative} <= SHIPPED, f"{path.name} imports siblings {sorted(relative)}"


def test_the_import_check_catches_a_foreign_import(tmp_path):
    """The check above can fail: a file importing the package (or numpy, or a subpackage) is caught."""
    bad = tmp_path / "modeling_bad.py"
    bad.write_text("import numpy as np\nfrom hf_vitprune.data import open_rgb\nfrom .layers.x import y\n")
    absolute, relative = _imports(bad)
    assert absolute - ALLOWED_IMPORTS - set(sys.stdlib_module_names) == {"numpy", "hf_vitprune"}
    assert {f"{name}.py" for name in relative} - SHIPPED == {"layers.x.py"}


def test_shipped_code_names_the_minimum_transformers_version(monkeypatch):
    """An old transformers gets one clear error with what to install (checked through transformers' own helper)."""
    import importlib.metadata

    from transformers.utils import versions

    real_version = importlib.metadata.version
    monkeypatch.setattr(
        versions.importlib.metadata, "version", lambda name: "4.57.0" if name == "transformers" else real_version(name)
    )
    code = (REPO / "hf_vitprune" / "configuration_pruned_vit.py").read_text()
    check = code[code.index("require_version(") : code.index(")", code.index("require_version(")) + 1]
    with pytest.raises(ImportError, match=r"(?s)transformers>=5\.20.*found transformers==4\.57\.0.*pip install -U"):
        exec("from transformers.utils.versions import require_version\n" + check, {})


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    sys.modules["hf_vitprune"] = None  # the package must not be importable here
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline
    path, inputs_file = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.load(inputs_file))
    classify = pipeline("image-classification", model=path, trust_remote_code=True)
    preds = classify(Image.new("RGB", (40, 30), (200, 30, 30)), top_k=2)
    print(json.dumps({
        "module": type(model).__module__, "model_type": model.config.model_type,
        "pruning": [model.config.pruning_method, model.config.keep_rate, model.config.fusion_temperature],
        "logits": out.logits.tolist(), "kept": [k.tolist() for k in out.kept_patch_indices],
        "pipeline": [p["label"] for p in preds],
    }))
    """
)


def test_fresh_process_without_the_package_loads_with_trust_remote_code(stock_vit_dir, tmp_path, pixel_values):
    model = _save_pruned_with_processor(stock_vit_dir, tmp_path / "model")
    torch.save(pixel_values, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    report = run_fresh_process(tmp_path, REMOTE_SCRIPT, tmp_path / "model", tmp_path / "inputs.pt")
    assert report["module"].startswith("transformers_modules.")  # the shipped copy, not the package
    assert report["model_type"] == "pruned_vit"
    assert report["pruning"] == ["medad", [0.5, 0.7], 0.25]
    assert torch.equal(torch.tensor(report["logits"]), expected.logits)
    assert report["kept"] == [k.tolist() for k in expected.kept_patch_indices]
    assert len(report["pipeline"]) == 2 and all(label.startswith("LABEL_") for label in report["pipeline"])
