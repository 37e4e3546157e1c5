"""How the token-reduction methods are presented: their names in tables and plots, the paper each comes from, and its
BibTeX (for model cards).

Kept apart from [`token_reduction`] (the algorithms), which is shipped to the Hub with every checkpoint; this module is
not. Every function takes the effective [`~token_reduction.PruningSettings`] of one setting (the model's own values
merged with the ones a run chose).

Arguments shared by the functions below:
    settings ([`~token_reduction.PruningSettings`]): the effective settings of one run of the model.
    explicit (`tuple[str, ...]`): settings chosen for that run rather than left at the model's value (shown in labels).

None raises: a method no longer registered (e.g. in an old results row) is labelled by its name.
"""

from __future__ import annotations

from .reducers import REDUCERS
from .token_reduction import PruningSettings

BIBTEX_IGAUE2025 = """@article{igaue2025patch,
  title   = {Patch Pruning Strategy Based on Robust Statistical Measures of Attention Weight Diversity in Vision
             Transformers},
  author  = {Igaue, Yuki and Aizawa, Hiroaki},
  journal = {arXiv preprint arXiv:2507.19175},
  year    = {2025}
}"""
BIBTEX_IGAUE2026 = """@article{igaue2026renyi,
  title   = {R{\\'e}nyi Attention Entropy for Patch Pruning},
  author  = {Igaue, Yuki and Aizawa, Hiroaki},
  journal = {arXiv preprint arXiv:2604.03803},
  year    = {2026}
}"""
BIBTEX_EVIT = """@inproceedings{liang2022evit,
  title     = {Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations},
  author    = {Liang, Youwei and Ge, Chongjian and Tong, Zhan and Song, Yibing and Wang, Jue and Xie, Pengtao},
  booktitle = {International Conference on Learning Representations},
  year      = {2022}
}"""
BIBTEX_TOME = """@inproceedings{bolya2023tome,
  title     = {Token Merging: Your {ViT} But Faster},
  author    = {Bolya, Daniel and Fu, Cheng-Yang and Dai, Xiaoliang and Zhang, Peizhao and Feichtenhofer, Christoph and
               Hoffman, Judy},
  booktitle = {International Conference on Learning Representations},
  year      = {2023}
}"""
BIBTEX_BSPF = """@article{hsieh2025block,
  title   = {Block-based Symmetric Pruning and Fusion for Efficient Vision Transformers},
  author  = {Hsieh, Jun-Wei and Li, Xin and Hsieh, Yi-Kuan and others},
  journal = {arXiv preprint arXiv:2507.12125},
  year    = {2025}
}"""

BIBTEX_PITOME = """@inproceedings{tran2024pitome,
  title     = {Accelerating Transformers with Spectrum-Preserving Token Merging},
  author    = {Tran, Hoai-Chau and Nguyen, Duy M. H. and Nguyen, Duy M. and Nguyen, Trung-Tin and Le, Ngan and Xie,
               Pengtao and Sonntag, Daniel and Zou, James Y. and Nguyen, Binh T. and Niepert, Mathias},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""

SOURCES: dict[str, tuple[str, str]] = {
    "variance": ("Igaue & Aizawa, arXiv:2507.19175 (2025)", BIBTEX_IGAUE2025),
    "medad": ("Igaue & Aizawa, arXiv:2507.19175 (2025)", BIBTEX_IGAUE2025),
    "evit": ("EViT: Liang et al., ICLR 2022 (arXiv:2202.07800)", BIBTEX_EVIT),
    "entropy": (
        "Igaue & Aizawa, arXiv:2604.03803 (2026), reconstructed from the abstract by hf_vitprune",
        BIBTEX_IGAUE2026,
    ),
    "random": ("the random-pruning baseline of Igaue & Aizawa, arXiv:2507.19175 (2025)", BIBTEX_IGAUE2025),
    "tome": ("ToMe: Bolya et al., ICLR 2023 (arXiv:2210.09461)", BIBTEX_TOME),
    "bspf": (
        "BSPF-ViT: Hsieh et al., arXiv:2507.12125 (2025), reconstructed from the abstract by hf_vitprune",
        BIBTEX_BSPF,
    ),
    "pitome": ("PiToMe: Tran et al., NeurIPS 2024 (arXiv:2405.16148)", BIBTEX_PITOME),
}
"""`(one-line source, BibTeX)` of each method's paper by `pruning_method` name: authors, venue / arXiv id, and whether
hf_vitprune reconstructed the method from an abstract."""

SCORES: dict[str, str] = {
    "variance": "variance over heads of the class token's attention to the token (eq. 6)",
    "medad": "median absolute deviation over heads of that attention (eq. 7)",
    "evit": "mean over heads of that attention (eq. 5)",
    "entropy": "minus the Rényi entropy of the token's attention (query row, key column or across heads)",
    "random": "uniform random scores (the floor every criterion must beat)",
    "tome": "merges the most similar token pairs (keys, bipartite soft matching)",
    "bspf": "joint query/key importance smoothed over a patch block; pruned tokens merged into the most similar kept",
    "pitome": "energy of each token's key similarities protects informative tokens; the redundant ones merged (keys)",
}
"""What each method scores, in one line (README's methods table)."""


def source(method: str | None) -> tuple[str, str]:
    """`(one-line source, BibTeX)` of `method` ([`SOURCES`]); `("", "")` for the unpruned model (`None`) and for a
    method registered without an entry in [`SOURCES`] (its model card then names no paper)."""
    return SOURCES.get(method, ("", "")) if method is not None else ("", "")


def format_rate(rate) -> str:
    """`0.7` or, for one rate per layer, `0.9/0.7/0.5`.

    Args:
        rate (`float` or `list[float]`): a keep rate (or ToMe's `r`), or one per layer.
    """
    return "/".join(f"{r:g}" for r in rate) if isinstance(rate, (list, tuple)) else f"{rate:g}"


def _kind(method: str | None) -> str:
    """`"none"`, `"tome"` (a method whose amount is ToMe's `r`), `"bspf"`, `"pitome"` (a keep rate in every layer) or
    `"pruner"` (a keep rate per pruning layer, any other method), by name and by the reducer's `amount_setting`; a
    name no longer registered counts as a pruner."""
    if method is None:
        return "none"
    if method in ("bspf", "pitome"):
        return method
    reducer = REDUCERS.get(method)
    return "tome" if reducer is not None and reducer.amount_setting == "tome_r" else "pruner"


_IN_THE_BASE_LABEL = ("keep_rate", "fuse_pruned", "fusion_temperature", "tome_r", "renyi_alpha", "entropy_axis",
                      "bspf_block", "bspf_joint", "pitome_margin", "prune_layers")  # fmt: skip
"""Settings the base labels below show in their own way (`prune_layers` is one value for every row of a run)."""
_DEFAULTS = PruningSettings()


def _other_settings(settings: PruningSettings) -> list[str]:
    """`name=value` of every other setting the method reads (its reducer's `settings_used`) whose value differs from
    the default, so that two settings that differ in anything the method reads never share a label."""
    reducer = REDUCERS.get(settings.pruning_method)
    used = reducer.settings_used if reducer is not None else ()
    return [f"{name}={format_rate(value) if not isinstance(value, bool) else value}"
            for name in used if name not in _IN_THE_BASE_LABEL
            and (value := getattr(settings, name)) != getattr(_DEFAULTS, name)]  # fmt: skip


def label(settings: PruningSettings) -> str:
    """The method's name in tables: `unpruned`, `variance`, `entropy (α=2)`, `ToMe (r=8)`, `BSPF (block 3, mean)`;
    any other setting the method reads, away from its default, follows in brackets: `PiToMe [pitome_alpha=2]`.

    Args: `settings` (see the module docstring). Returns: `str`.
    """
    others = _other_settings(settings)
    return _base_label(settings) + (f" [{', '.join(others)}]" if others else "")


def _base_label(settings: PruningSettings) -> str:
    method, kind = settings.pruning_method, _kind(settings.pruning_method)
    if kind == "none":
        return "unpruned"
    if kind == "tome":
        return f"ToMe (r={format_rate(settings.tome_r)})"
    if kind == "bspf":
        return f"BSPF (block {settings.bspf_block}, {settings.bspf_joint})"
    if kind == "pitome":
        return "PiToMe" if settings.pitome_margin is None else f"PiToMe (margin {settings.pitome_margin:g})"
    if method == "entropy":
        axis = "" if settings.entropy_axis == "query" else f", {settings.entropy_axis}"
        return f"entropy (α={settings.renyi_alpha:g}{axis})"
    return method


def short_name(settings: PruningSettings, explicit: tuple[str, ...] = ()) -> str:
    """A compact label of one setting: `unpruned`, `variance@0.7+fusion`, `entropy(a=2)@0.5`, `tome(r=8)`,
    `bspf(b=3,mean)@0.7`; a fusion temperature in `explicit` (chosen rather than the model's) shows as
    `+fusion(T=0.3)`, and any other setting the method reads, away from its default, in brackets:
    `pitome@0.7[pitome_alpha=2]`, `tome(r=8)[restore_patch_grid=True]`. Two settings that differ in anything the
    method reads (bar `prune_layers`, one value per run, and a temperature left at the model's value) never share a
    name.

    Args: `settings`, `explicit` (see the module docstring). Returns: `str`.
    """
    others = _other_settings(settings)
    return _base_short_name(settings, explicit) + (f"[{','.join(others)}]" if others else "")


def _base_short_name(settings: PruningSettings, explicit: tuple[str, ...]) -> str:
    method, kind = settings.pruning_method, _kind(settings.pruning_method)
    if kind == "none":
        return "unpruned"
    if kind == "tome":
        return f"tome(r={format_rate(settings.tome_r)})"
    if kind == "bspf":
        return f"bspf(b={settings.bspf_block},{settings.bspf_joint})@{format_rate(settings.keep_rate)}"
    if kind == "pitome":
        margin = "" if settings.pitome_margin is None else f"(m={settings.pitome_margin:g})"
        return f"pitome{margin}@{format_rate(settings.keep_rate)}"
    fusion = ""
    if settings.fuse_pruned:
        shown = "fusion_temperature" in explicit
        fusion = f"+fusion(T={settings.fusion_temperature:g})" if shown else "+fusion"
    name = method
    if method == "entropy":
        axis = "" if settings.entropy_axis == "query" else f",{settings.entropy_axis}"
        name = f"entropy(a={settings.renyi_alpha:g}{axis})"
    return f"{name}@{format_rate(settings.keep_rate)}{fusion}"


def series(settings: PruningSettings) -> str:
    """The line a setting belongs to in a trade-off plot (its fixed part): `variance + fusion`, `ToMe`, ...

    Args: `settings` (see the module docstring). Returns: `str`.
    """
    kind = _kind(settings.pruning_method)
    if kind == "tome":
        return "ToMe"
    if kind == "pruner":
        return label(settings) + (" + fusion" if settings.fuse_pruned else "")
    return label(settings)


def setting_text(settings: PruningSettings) -> str:
    """The setting that moves along a trade-off line: `keep 0.7`, `r=8`, or `""` (unpruned).

    Args: `settings` (see the module docstring). Returns: `str`.
    """
    kind = _kind(settings.pruning_method)
    if kind == "tome":
        return f"r={format_rate(settings.tome_r)}"
    if kind == "none":
        return ""
    return f"keep {format_rate(settings.keep_rate)}"


def table_cells(settings: PruningSettings, explicit: tuple[str, ...] = ()) -> tuple[str, str]:
    """The `keep rate` and `fusion` cells of a results table (`—` where the method has no such setting).

    Args: `settings`, `explicit` (see the module docstring). Returns: `(keep rate, fusion)` strings.
    """
    kind = _kind(settings.pruning_method)
    if kind == "bspf":
        return format_rate(settings.keep_rate), "similarity"
    if kind == "pitome":
        return format_rate(settings.keep_rate), "merging"
    if kind != "pruner":
        return "—", "—"
    fusion = "no"
    if settings.fuse_pruned:
        shown = "fusion_temperature" in explicit
        fusion = f"yes (T={settings.fusion_temperature:g})" if shown else "yes"
    return format_rate(settings.keep_rate), fusion


__all__ = ["SCORES", "SOURCES", "format_rate", "label", "series", "setting_text", "short_name", "source", "table_cells"]
