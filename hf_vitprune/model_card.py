"""Model cards for pruned checkpoints, built with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult`.

The template is `hf_vitprune/templates/model_card_template.md` (also reachable as `model_cards/template.md`); it is
filled from a results dict, the one `hf-vitprune train` writes as `pruning_results.json`:

    {"model_name", "repo_id", "base_model", "license",
     "dataset": {"id", "name", "split", "images"},
     "pruning": {config pruning fields..., "tokens"},
     "metrics": {"pruned": {"top1", "top5", "gmacs", "images_per_s"}, "unpruned": {...same...}},
     "protocol": {"top1", "gmacs", "throughput", "machine"},
     "training": {hyper-parameter: value} or {}, "command": str, "results_note": str}
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card_template.md"


def method_source(method: str | None) -> tuple[str, str]:
    """`(one-line source, BibTeX)` of a pruning method's paper ([`methods.source`]). The unpruned reference (`None`)
    gets the project's paper, the variance method's (Igaue & Aizawa, arXiv:2507.19175).

    Raises:
        ValueError: for a method name that has no recorded source.
    """
    from .methods import source

    return source(method or "variance")


def _fmt(value, digits: int | None = 2) -> str:
    """`digits` decimals for floats, or (`digits=None`) up to 6 significant digits without trailing zeros."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}" if digits is None else f"{value:.{digits}f}"
    if isinstance(value, dict):  # e.g. the distillation settings: "teacher: ..., alpha: 0.5, ..."
        return ", ".join(f"{k}: {_fmt(v, digits)}" for k, v in value.items())
    return str(value)


def _hub_id(name: str) -> str | None:
    """`name` if it reads as a Hub repository id (`owner/name` or `name`), `None` for a local path."""
    if not name or name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists():
        return None
    return name


def _uses(method: str | None, field: str) -> bool:
    """Whether `field` acts under `method` (its reducer's `settings_used`; nothing acts without pruning)."""
    from .reducers import REDUCERS

    return method in REDUCERS and field in REDUCERS[method].settings_used


def _relevant_pruning_rows(pruning: dict) -> list[tuple[str, str]]:
    """The pruning settings that act under `pruning["pruning_method"]` (no `tome_r` for variance, and so on): the
    fields its reducer reads, plus what is not a pruning field (`tokens`, `patch_stride`, ...)."""
    from .token_reduction import PRUNING_FIELDS

    method = pruning.get("pruning_method")
    unused = {f for f in PRUNING_FIELDS if f != "pruning_method" and not _uses(method, f)}
    if not pruning.get("fuse_pruned"):
        unused.add("fusion_temperature")
    return [(k, _fmt(v, None)) for k, v in pruning.items() if k not in unused]


def card_metadata(results: dict):
    """The model card's YAML metadata: `huggingface_hub.ModelCardData` with the `model-index` results (top-1 / top-5 of
    the pruned model on its evaluation data)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset, pruned = results["dataset"], results["metrics"]["pruned"]
    # a local folder is named by its last component in the metadata, which the Hub reads as ids
    dataset_type = _hub_id(dataset["id"]) or Path(dataset["id"]).resolve().name
    task = dict(task_type="image-classification", dataset_type=dataset_type, dataset_name=dataset["name"])
    task["dataset_split"] = dataset.get("split")
    eval_results = [
        EvalResult(**task, metric_type="accuracy", metric_name="top-1 accuracy (%)", metric_value=pruned["top1"]),
        EvalResult(**task, metric_type="top-5-accuracy", metric_name="top-5 accuracy (%)", metric_value=pruned["top5"]),
    ]
    return ModelCardData(
        model_name=model_name_of(results),
        base_model=_hub_id(results["base_model"]),
        datasets=[dataset["id"]] if _hub_id(dataset["id"]) else None,
        license=results.get("license", "apache-2.0"),
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["vision", "image-classification", "vit", "token-pruning", "hf_vitprune", "custom_code"],
        eval_results=eval_results,
    )


def model_name_of(results: dict) -> str:
    """The run's name, or `<base model>-<method>`."""
    return results.get("model_name") or f"{results['base_model'].split('/')[-1]}-{results['pruning']['pruning_method']}"


def result_rows(results: dict) -> list[dict]:
    """The results table's rows: the pruned model and the same model unpruned (an unpruned run: one row)."""
    method = results["pruning"]["pruning_method"]
    # an unpruned run: its own measurement is the only row (the "unpruned" re-measurement is the same model)
    labels = (("pruned", f"pruned ({method})"), ("unpruned", "unpruned")) if method else (("pruned", "unpruned"),)
    rows = []
    for key, label in labels:
        metrics = results["metrics"].get(key)
        if metrics:
            rows.append(
                {
                    "name": label,
                    "top1": _fmt(metrics.get("top1")),
                    "top5": _fmt(metrics.get("top5")),
                    "gmacs": _fmt(metrics.get("gmacs"), 3),
                    "images_per_s": _fmt(metrics.get("images_per_s"), 1),
                    "tokens": metrics.get("tokens", "—"),
                }
            )
    return rows


def summary_line(results: dict) -> str:
    """One sentence: method (and keep rate where it acts), top-1, data, GMACs, the paper."""
    dataset, pruning, pruned = results["dataset"], results["pruning"], results["metrics"]["pruned"]
    method = pruning["pruning_method"]
    return (
        (f"Pruning: **{method}**" if method else "The unpruned reference (pruning switched off)")
        + (f" at keep rate {pruning.get('keep_rate')}" if _uses(method, "keep_rate") else "")
        + f", top-1 {_fmt(pruned['top1'])} % on {dataset['name']} ({dataset.get('split') or 'evaluation'} split, "
        f"{dataset.get('images', '?')} images) at {_fmt(pruned.get('gmacs'), 3)} GMACs. "
        + f"Method: {method_source(method)[0]}."
    )


def build_model_card(results: dict):
    """A `huggingface_hub.ModelCard` for a pruned checkpoint, with `model-index` results.

    Args:
        results (`dict`): see the module docstring. `metrics.unpruned` may be absent.

    Returns:
        `huggingface_hub.ModelCard`; `str(card)` is the README.md text, `card.save(path)` writes it, and
        `card.data.eval_results` holds the top-1 / top-5 of the pruned model.

    Raises:
        KeyError: naming a missing required entry (`base_model`, `dataset`, `pruning`, `metrics.pruned`).
    """
    from huggingface_hub import ModelCard

    protocol = {k: results.get("protocol", {}).get(k, "—") for k in ("top1", "gmacs", "throughput", "machine")}
    return ModelCard.from_template(
        card_metadata(results),
        template_path=str(TEMPLATE_PATH),
        model_name=model_name_of(results),
        summary=summary_line(results),
        base_model=results["base_model"],
        dataset_name=results["dataset"]["name"],
        result_rows=result_rows(results),
        protocol=protocol,
        results_note=results.get("results_note", ""),
        pruning_rows=_relevant_pruning_rows(results["pruning"]),
        training_rows=[(k, _fmt(v, None)) for k, v in (results.get("training") or {}).items()],
        repo_id=results.get("repo_id") or "path/to/this/model",
        command=results.get("command"),
        citation=method_source(results["pruning"].get("pruning_method"))[1],
    )
