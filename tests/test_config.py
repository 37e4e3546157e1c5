"""PrunedViTConfig: defaults, validation of every pruning field, keep counts, round trips."""

import math

import pytest
from conftest import DEIT_TINY, needs_shared

from hf_vitprune import PrunedDeiTConfig, PrunedViTConfig
from hf_vitprune.token_ops import exact_keep_count


def test_defaults_are_the_papers_setting():
    config = PrunedViTConfig()
    assert config.model_type == "pruned_vit"
    assert config.pruning_method == "variance"
    assert config.keep_rate == 0.7
    assert config.prune_layers == [3, 6, 9]
    assert config.fuse_pruned is True
    assert config.num_prefix_tokens == 1
    assert PrunedDeiTConfig().num_prefix_tokens == 2


@pytest.mark.parametrize("keep_rate", [0, 0.0, -0.3, 1.5, 2, float("nan")])
def test_bad_keep_rate_is_rejected_naming_the_field(keep_rate):
    with pytest.raises(ValueError, match="keep_rate"):
        PrunedViTConfig(keep_rate=keep_rate)


@pytest.mark.parametrize(
    "field, value", [("keep_rate", True), ("keep_rate", "0.5"), ("tome_r", 1.5), ("fuse_pruned", 1)]
)
def test_wrongly_typed_fields_are_rejected_naming_the_field(field, value):
    """The fields are typed: the strict dataclass names the field (a bool is not a keep rate)."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match=field):
        PrunedViTConfig(**{field: value})


def test_keep_rate_list_must_match_the_pruning_layers():
    with pytest.raises(ValueError, match=r"keep_rate is a list of 2 values but prune_layers=\[3, 6, 9\] has 3"):
        PrunedViTConfig(keep_rate=[0.7, 0.5])
    with pytest.raises(ValueError, match="keep_rate"):
        PrunedViTConfig(keep_rate=[0.7, 0.0, 0.5])
    assert PrunedViTConfig(keep_rate=[0.9, 0.7, 0.5]).token_schedule(100) == [(90, 1), (64, 1), (33, 1)]


@pytest.mark.parametrize(
    "layers, message",
    [
        ([3, 6, 12], r"holds 12, which is not a layer"),
        ([-1, 3], "holds -1"),
        ([6, 3, 9], "strictly increasing"),
        ([3, 3, 9], "strictly increasing"),
    ],
)
def test_bad_prune_layers_are_rejected(layers, message):
    with pytest.raises(ValueError, match=message):
        PrunedViTConfig(prune_layers=layers)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        PrunedViTConfig(pruning_method="tome-ish")
    for known in ("variance", "medad", "evit", "entropy", "random"):
        assert known in str(error.value)


@pytest.mark.parametrize(
    "field, value", [("fusion_temperature", 0), ("fusion_temperature", -1.0), ("renyi_alpha", 0), ("renyi_alpha", -2.0)]
)
def test_temperature_and_alpha_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        PrunedViTConfig(**{field: value})


def test_integer_keep_rate_one_and_none_method_are_accepted():
    assert PrunedViTConfig(keep_rate=1).keep_rate == 1
    config = PrunedViTConfig(pruning_method=None)
    assert config.token_schedule(196) == []


def test_default_pruning_layers_follow_the_depth():
    """[3, 6, 9] for the paper's 12 layers; the same fractions of the depth otherwise."""
    assert PrunedViTConfig().prune_layers == [3, 6, 9]
    assert PrunedViTConfig(num_hidden_layers=24).prune_layers == [6, 12, 18]
    assert PrunedViTConfig(num_hidden_layers=4).prune_layers == [1, 2, 3]
    assert PrunedViTConfig(num_hidden_layers=2).prune_layers == [1]


def test_exact_keep_count_avoids_float_error():
    assert math.ceil(0.07 * 100) == 8  # the trap
    assert exact_keep_count(0.07, 100) == 7
    assert exact_keep_count(0.7, 196) == 138
    assert exact_keep_count(0.7, 139) == 98
    assert exact_keep_count(0.7, 99) == 70
    assert exact_keep_count(1.0, 57) == 57
    assert exact_keep_count(1e-9, 196) == 1  # never zero: at least one token stays
    assert exact_keep_count(0.5, 0) == 0
    with pytest.raises(ValueError, match="keep_rate"):
        exact_keep_count(0.0, 10)


def test_token_schedule_matches_evit_counting():
    config = PrunedViTConfig(keep_rate=0.7)
    assert config.token_schedule(196) == [(138, 1), (98, 1), (70, 1)]
    config = PrunedViTConfig(keep_rate=0.7, fuse_pruned=False)
    assert config.token_schedule(196) == [(138, 0), (97, 0), (68, 0)]
    # a keep rate that keeps everything prunes nothing and fuses nothing
    assert PrunedViTConfig(keep_rate=1.0).token_schedule(196) == [(196, 0)] * 3


def test_round_trip_through_dict_and_directory(tmp_path):
    config = PrunedViTConfig(
        pruning_method="entropy", keep_rate=[0.9, 0.8, 0.6], renyi_alpha=2.0, fusion_temperature=0.5, fuse_pruned=False
    )
    config.save_pretrained(tmp_path)
    loaded = PrunedViTConfig.from_pretrained(tmp_path)
    for field in ("pruning_method", "keep_rate", "prune_layers", "fuse_pruned", "fusion_temperature", "renyi_alpha"):
        assert getattr(loaded, field) == getattr(config, field)
    assert loaded.model_type == "pruned_vit"


@needs_shared
def test_plain_vit_checkpoint_config_becomes_a_pruned_config():
    config = PrunedViTConfig.from_pretrained(DEIT_TINY, keep_rate=0.5)
    assert type(config) is PrunedViTConfig
    assert config.model_type == "pruned_vit"
    assert config.to_dict()["model_type"] == "pruned_vit"
    assert config.keep_rate == 0.5
    assert config.hidden_size == 192 and config.num_labels == 1000


def test_distilled_checkpoint_into_plain_config_is_an_error(tmp_path):
    from transformers import DeiTConfig

    DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="PrunedDeiT"):
        PrunedViTConfig.from_pretrained(tmp_path)
    assert PrunedDeiTConfig.from_pretrained(tmp_path, prune_layers=[0]).model_type == "pruned_deit"
