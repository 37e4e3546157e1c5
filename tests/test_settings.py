"""Every pruning setting, declared once in `PruningFields`, reaches the model through every entry point: the PrunedViT
`from_pretrained`, `prune` on each backbone family, `set_pruning`, `pruning()`, and the flags of train, evaluate, sweep,
export and visualize. A setting added to `PruningFields` without a value here fails the first test; one an entry point
drops fails the test of that entry point."""

import dataclasses
import warnings

import pytest
import torch
import transformers
from conftest import tiny_config_kwargs

import hf_vitprune
from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.arguments import PruningArguments, PruningGridArguments, parse_arguments
from hf_vitprune.reducers import REDUCERS
from hf_vitprune.token_reduction import PRUNING_FIELDS, PruningFields, UnreadSettingWarning

VALUES = {
    "pruning_method": "medad",
    "keep_rate": 0.5,
    "prune_layers": [1, 2],
    "fuse_pruned": False,
    "fusion_temperature": 0.3,
    "renyi_alpha": 2.0,
    "tome_r": 3,
    "entropy_axis": "key",
    "bspf_block": 1,
    "bspf_joint": "product",
    "pitome_margin": 0.5,
    "pitome_alpha": 2.0,
    "restore_patch_grid": True,
}
"""A valid value of every setting, away from its default."""

FLAGS = {"fuse_pruned": "false", "restore_patch_grid": "true"}
"""How a value is spelled on the command line where `str(value)` does not do."""

STOCK = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
)
"""A tiny stock ViT config, no pruning setting recorded."""


def reader(name: str) -> str:
    """A method that reads `name`."""
    if name == "pruning_method":
        return VALUES[name]
    return next(m for m in REDUCERS if name in REDUCERS[m].settings_used)


def case(name: str) -> dict:
    """The settings that set `name` to its test value, with a method that reads it."""
    return {"pruning_method": reader(name), name: VALUES[name]}


def flags(settings: dict) -> list[str]:
    out = []
    for name, value in settings.items():
        values = value if isinstance(value, list) else [value]
        out += [f"--{name}", *(FLAGS.get(name, str(v)) for v in values)]
    return out


def test_every_declared_setting_has_a_test_value_and_a_reader():
    assert list(VALUES) == list(PRUNING_FIELDS), "add the new setting's test value (and its wiring) here"
    defaults = {f.name: f.default for f in dataclasses.fields(PruningFields)}
    for name in PRUNING_FIELDS:
        assert VALUES[name] != defaults[name], name
        assert name == "pruning_method" or any(name in REDUCERS[m].settings_used for m in REDUCERS), name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    PrunedViTForImageClassification(
        PrunedViTConfig(**tiny_config_kwargs(prune_layers=None, keep_rate=0.7))
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", PRUNING_FIELDS)
def test_from_pretrained_set_pruning_and_pruning(checkpoint, name):
    settings = case(name)
    model = PrunedViTForImageClassification.from_pretrained(checkpoint, **settings)
    assert getattr(model.config, name) == VALUES[name]
    model = PrunedViTForImageClassification.from_pretrained(checkpoint)
    before = getattr(model.config, name)
    with model.pruning(**settings):
        assert getattr(model.config, name) == VALUES[name]
        model(pixel_values=torch.randn(2, 3, 32, 32))  # the setting runs
    assert getattr(model.config, name) == before
    model.set_pruning(**settings)
    assert getattr(model.config, name) == VALUES[name]


FAMILIES = {
    "ViT": ("ViTConfig", "ViTModel", {}),
    "DeiT": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {}),
    "DINOv2": ("Dinov2Config", "Dinov2Model", {}),
    "DINOv2 with registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {"num_register_tokens": 2}),
    "CLIP vision": ("CLIPVisionConfig", "CLIPVisionModel", {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_on_every_family_takes_every_setting(family):
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8,
        **extra,
    )  # fmt: skip
    for name in PRUNING_FIELDS:
        model = getattr(transformers, model_name)(config).eval()
        hf_vitprune.prune(model, **case(name))
        assert getattr(model.config, name) == VALUES[name], (family, name)
        with torch.inference_mode():
            model(pixel_values=torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", PRUNING_FIELDS)
def test_single_setting_flags_of_train_export_and_visualize(name, tmp_path):
    from hf_vitprune.export import ExportArguments
    from hf_vitprune.train import parse_args

    argv = flags(case(name))
    model_args, _, _ = parse_args([*argv, "--output_dir", str(tmp_path / "run")])
    assert model_args.settings()[name] == VALUES[name]
    (export_args,) = parse_arguments(ExportArguments, [*argv, "--output", "m.onnx"], prog="export")
    assert export_args.settings()[name] == VALUES[name]
    (single,) = parse_arguments(PruningArguments, argv, prog="t")
    assert single.settings() == case(name)


@pytest.mark.parametrize("name", PRUNING_FIELDS)
def test_grid_flags_of_evaluate_sweep_and_visualize(name):
    from hf_vitprune.evaluation import EvaluateArguments
    from hf_vitprune.sweep import SweepArguments
    from hf_vitprune.visualize import VisualizeArguments

    for cls, extra in ((EvaluateArguments, []), (SweepArguments, []), (VisualizeArguments, ["--images", "a.png"])):
        (args,) = parse_arguments(cls, [*flags(case(name)), *extra], prog="t")
        if name == "prune_layers":  # one value for the whole run
            assert args.model_settings() == {"prune_layers": VALUES[name]}, cls
            continue
        variants = [v for v in args.variants() if v["pruning_method"] is not None]
        if name == "fusion_temperature":  # read with fusion on only
            variants = [v for v in variants if v["fuse_pruned"]]
        assert variants and all(v.get(name, v["pruning_method"]) == VALUES[name] for v in variants), (cls, variants)


def test_an_unknown_setting_is_one_error_listing_the_known_ones(checkpoint):
    model = PrunedViTForImageClassification.from_pretrained(checkpoint)
    stock = transformers.ViTModel(transformers.ViTConfig(**STOCK))
    known = str(list(PRUNING_FIELDS))
    for call in (lambda: model.set_pruning(keeprate=0.5), lambda: hf_vitprune.prune(stock, keeprate=0.5)):
        with pytest.raises(ValueError, match="unknown pruning setting") as error:
            call()
        assert known in str(error.value)
    with pytest.raises(ValueError, match="unknown pruning setting"):
        with model.pruning(keeprate=0.5):
            pass


def test_a_setting_the_method_does_not_read_is_recorded_with_a_warning_everywhere(checkpoint):
    """The documented no-op, the same through every entry point: recorded, no effect, one warning naming it."""
    pixel_values = torch.randn(2, 3, 32, 32)
    model = PrunedViTForImageClassification.from_pretrained(checkpoint, pruning_method="variance").eval()
    reference = model(pixel_values=pixel_values).logits
    with pytest.warns(UnreadSettingWarning, match=r"'variance' does not read \['tome_r'\] \(tome_r is read by tome\)"):
        model.set_pruning(tome_r=5)
    assert model.config.tome_r == 5 and torch.equal(model(pixel_values=pixel_values).logits, reference)
    with pytest.warns(UnreadSettingWarning, match="tome_r"):
        PrunedViTForImageClassification.from_pretrained(checkpoint, pruning_method="variance", tome_r=5)
    with pytest.warns(UnreadSettingWarning, match="keep_rate"):
        stock = transformers.ViTModel(transformers.ViTConfig(**STOCK))
        hf_vitprune.prune(stock, pruning_method="tome", keep_rate=0.5)
    (args,) = parse_arguments(PruningArguments, ["--pruning_method", "tome", "--keep_rate", "0.5"], prog="t")
    with pytest.warns(UnreadSettingWarning, match="--keep_rate"):
        args.settings()
    (grid,) = parse_arguments(PruningGridArguments, ["--pruning_method", "variance", "--tome_r", "3"], prog="t")
    with pytest.warns(UnreadSettingWarning, match="--tome_r is read by tome only"):
        assert grid.variants()[1:] == [
            {"pruning_method": "variance", "keep_rate": k, "fuse_pruned": f}
            for k in (0.9, 0.7, 0.5)
            for f in (True, False)
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_pruning(pruning_method="tome", tome_r=2)  # read: no warning


def test_the_config_fields_are_the_declared_settings():
    fields = {f.name: f for f in dataclasses.fields(PrunedViTConfig)}
    for spec in dataclasses.fields(PruningFields):
        assert fields[spec.name].type == spec.type and fields[spec.name].default == spec.default, spec.name


def test_a_grid_warns_for_prune_layers_no_method_reads():
    """`evaluate --pruning_method tome --prune_layers 3`: the layers have no effect on a merging method, so the grid
    says so as it does for every other setting (and not when a method reads them)."""
    from hf_vitprune.arguments import PruningGridArguments

    with pytest.warns(UnreadSettingWarning, match=r"--prune_layers is read by .* which --pruning_method \['tome'\]"):
        PruningGridArguments(pruning_method=["tome"], prune_layers=[3]).variants()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadSettingWarning)
        PruningGridArguments(pruning_method=["tome", "variance"], prune_layers=[3]).variants()
