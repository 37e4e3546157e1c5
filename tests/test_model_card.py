"""The model-card template renders from a results file into a card whose YAML metadata parses and holds the results."""

import json

import yaml
from huggingface_hub import ModelCard

from hf_vitprune.model_card import TEMPLATE_PATH, build_model_card

RESULTS = {
    "model_name": "deit-tiny-imagenette-variance-0.7",
    "repo_id": "someone/deit-tiny-imagenette-variance-0.7",
    "base_model": "facebook/deit-tiny-patch16-224",
    "dataset": {"id": "imagenette", "name": "Imagenette (10 ImageNet classes)", "split": "validation", "images": 3925},
    "pruning": {"pruning_method": "variance", "keep_rate": 0.7, "prune_layers": [3, 6, 9], "fuse_pruned": True,
                "fusion_temperature": 0.1, "tokens": "196→138+1→98+1→70+1"},
    "metrics": {"pruned": {"top1": 91.23, "top5": 99.01, "gmacs": 0.8241, "images_per_s": 73.5,
                           "tokens": "196→138+1→98+1→70+1"},
                "unpruned": {"top1": 92.5, "top5": 99.2, "gmacs": 1.2581, "images_per_s": 45.1, "tokens": "196"}},
    "protocol": {"top1": "3925 images", "gmacs": "fvcore", "throughput": "batch 64, fp32", "machine": "cpu"},
    "training": {"epochs": 2, "learning rate": 0.00025},
    "command": "hf-vitprune train --model_name_or_path ...",
}  # fmt: skip


def test_card_renders_with_parsable_metadata_and_results(tmp_path):
    path = tmp_path / "README.md"
    results_file = tmp_path / "pruning_results.json"
    results_file.write_text(json.dumps(RESULTS))
    build_model_card(json.loads(results_file.read_text())).save(path)
    text = path.read_text()
    assert text.startswith("---\n")
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert metadata["base_model"] == "facebook/deit-tiny-patch16-224"
    assert metadata["pipeline_tag"] == "image-classification" and "custom_code" in metadata["tags"]
    (entry,) = metadata["model-index"]
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics == {"accuracy": 91.23, "top-5-accuracy": 99.01}
    assert entry["results"][0]["dataset"]["split"] == "validation"
    # the body: results of both models, pruning settings, the protocol, the snippet and the citation
    assert "| pruned (variance) | 91.23 | 99.01 | 0.824 | 73.5 | 196→138+1→98+1→70+1 |" in text
    assert "| unpruned | 92.50 | 99.20 | 1.258 | 45.1 | 196 |" in text
    assert "| fusion_temperature | 0.1 |" in text and "| keep_rate | 0.7 |" in text
    assert 'from_pretrained("someone/deit-tiny-imagenette-variance-0.7", trust_remote_code=True)' in text
    assert "arXiv:2507.19175" in text and "fine-tuned on Imagenette" in text
    assert "| learning rate | 0.00025 |" in text and "hf-vitprune train --model_name_or_path" in text
    # huggingface_hub reads its own card back with the same results
    card = ModelCard.load(path)
    assert card.data.eval_results[0].metric_value == 91.23


def test_card_of_a_local_run_keeps_local_paths_out_of_the_metadata_and_shows_only_settings_that_act(tmp_path):
    local = {
        **RESULTS,
        "base_model": "../shared/models/deit-tiny-patch16-224",
        "dataset": {"id": "../shared/data/imagenette", "name": "../shared/data/imagenette", "split": None,
                    "images": 3925},
        "pruning": {**RESULTS["pruning"], "renyi_alpha": 1.0, "tome_r": 8},
    }  # fmt: skip
    text = str(build_model_card(local))
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert "base_model" not in metadata and "datasets" not in metadata
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "imagenette"
    assert "`../shared/models/deit-tiny-patch16-224`" in text  # still named in the text
    assert "| tome_r |" not in text and "| renyi_alpha |" not in text and "| keep_rate | 0.7 |" in text
    tome = str(build_model_card({**local, "pruning": {"pruning_method": "tome", "tome_r": 8, "keep_rate": 1.0}}))
    assert "| tome_r | 8 |" in tome and "| keep_rate |" not in tome


def test_card_of_an_unpruned_run_has_one_row_and_says_it_is_unpruned():
    unpruned = {**RESULTS, "pruning": {**RESULTS["pruning"], "pruning_method": None, "tokens": "196"}}
    unpruned["metrics"] = {"pruned": {**RESULTS["metrics"]["unpruned"]}, "unpruned": RESULTS["metrics"]["unpruned"]}
    text = str(build_model_card(unpruned))
    assert "The unpruned reference (pruning switched off), top-1 92.50 %" in text
    assert "| unpruned | 92.50 | 99.20 | 1.258 | 45.1 | 196 |" in text and "pruned (None)" not in text
    assert text.count("| unpruned |") == 1 and "| keep_rate |" not in text


def test_untrained_card_says_so():
    card = build_model_card({**RESULTS, "training": {}, "command": None})
    assert "evaluated on Imagenette (10 ImageNet classes) without fine-tuning" in str(card)
    assert "Not fine-tuned" in str(card)


def test_template_is_the_one_in_model_cards():
    from conftest import REPO

    assert (REPO / "model_cards" / "template.md").resolve() == TEMPLATE_PATH.resolve()


def test_card_names_and_cites_the_paper_of_its_method():
    bspf = {**RESULTS, "pruning": {"pruning_method": "bspf", "keep_rate": 0.7, "bspf_block": 3, "tokens": "196→138"}}
    text = str(build_model_card(bspf))
    assert "Method: BSPF-ViT: Hsieh et al., arXiv:2507.12125 (2025), reconstructed from the abstract" in text
    assert "@article{hsieh2025block," in text and "igaue2025patch" not in text
    tome = {**RESULTS, "pruning": {"pruning_method": "tome", "tome_r": 8, "tokens": "196→188"}}
    text = str(build_model_card(tome))
    assert "Method: ToMe: Bolya et al., ICLR 2023 (arXiv:2210.09461)." in text
    assert "@inproceedings{bolya2023tome," in text
    unpruned = {**RESULTS, "pruning": {"pruning_method": None, "tokens": "196"}}
    assert "@article{igaue2025patch," in str(build_model_card(unpruned))
    assert "@article{igaue2025patch," in str(build_model_card(RESULTS))
