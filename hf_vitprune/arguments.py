"""Command-line flags of the pruning settings, generated from their one declaration.

Every command takes the same flag for the same setting, named as the setting (`--pruning_method`, `--keep_rate`,
`--fuse_pruned`, ...), with the help text declared beside the field. Two forms:

- [`PruningArguments`] (train, export): one value per setting; a flag left out keeps the model's own value.
- [`PruningGridArguments`] (evaluate, sweep): one or more values per setting; each method is crossed with the values
  of the settings it reads ([`PruningGridArguments.variants`]). `prune_layers` is one value for the whole run.

Both are dataclasses for `transformers.HfArgumentParser`, so a command accepts them as flags or in a .json / .yaml
file ([`parse_arguments`], which every command parses its flags with). The flags of earlier versions (`--methods`,
`--keep_rates`, `--fusion on off`, `--renyi_alphas`, ...) are kept as aliases.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import types
import typing
import warnings
from argparse import ArgumentTypeError
from dataclasses import field
from pathlib import Path

from transformers.hf_argparser import string_to_bool

from .measure import DTYPES, check_device
from .reducers import REDUCERS
from .token_reduction import (
    PRUNING_FIELDS,
    PruningFields,
    UnreadSettingWarning,
    check_setting_names,
    settings_read_by,
)


class OnOff:
    """The argparse type of a boolean setting: what `transformers.HfArgumentParser` reads as a boolean
    (`hf_argparser.string_to_bool`: true / false, yes / no, t / f, y / n, 1 / 0), plus `on` / `off` (the old
    `--fusion`).

    Calling it returns a `bool`, never an `OnOff`.

    Raises:
        ValueError: for any other string (argparse reports it as an invalid value of the flag).
    """

    def __new__(cls, value) -> bool:  # noqa: D102
        text = value if isinstance(value, bool) else {"on": "true", "off": "false"}.get(str(value).strip().lower())
        try:
            return string_to_bool(str(value).strip() if text is None else text)
        except ArgumentTypeError as error:
            raise ValueError(str(error)) from None


def _scalar_type(annotation) -> tuple[type, bool, bool]:
    """`(scalar type, accepts a list, accepts a scalar)` of a [`PruningFields`] annotation, e.g.
    `int | float | list[int | float]` -> `(float, True, True)`, `list[int] | None` -> `(int, True, False)`."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    scalars, listed = [], False
    for member in members:
        if member is type(None):
            continue
        if typing.get_origin(member) is list:
            listed = True
            inner = typing.get_args(member)[0]
            scalars.extend(typing.get_args(inner) if isinstance(inner, types.UnionType) else (inner,))
        else:
            scalars.append(member)
    accepts_scalar = any(typing.get_origin(m) is not list and m is not type(None) for m in members)
    if bool in scalars:
        return OnOff, listed, accepts_scalar
    if float in scalars:
        return float, listed, accepts_scalar
    return scalars[0], listed, accepts_scalar


ALIASES: dict[str, list[str]] = {
    "pruning_method": ["--methods"],
    "keep_rate": ["--keep_rates"],
    "fuse_pruned": ["--fusion"],
    "fusion_temperature": ["--fusion_temperatures"],
    "renyi_alpha": ["--renyi_alphas"],
    "entropy_axis": ["--entropy_axes"],
    "bspf_block": ["--bspf_blocks"],
    "bspf_joint": ["--bspf_joints"],
}
"""The flag names of earlier versions, still accepted (README: "Changes")."""


_FIELDS = {f.name: f for f in dataclasses.fields(PruningFields)}


def _help(name: str, grid: bool) -> str:
    help = _FIELDS[name].metadata["help"]
    if name == "pruning_method":
        help += f" Known: {', '.join(REDUCERS)}, none."
    readers = [m for m in REDUCERS if name in REDUCERS[m].settings_used]
    if name != "pruning_method":
        help += f" Read by: {', '.join(readers)}."
    return help + (" One or more values (each a variant)." if grid and name != "prune_layers" else "")


def _build(grid: bool, defaults: dict) -> list[tuple]:
    specs = []
    for f in _FIELDS.values():
        scalar, listed, accepts_scalar = _scalar_type(f.type)
        if f.name == "pruning_method":
            scalar = str
        kind = list[scalar] | None if (grid and accepts_scalar) or listed else scalar | None
        metadata = {"help": _help(f.name, grid), "aliases": ALIASES.get(f.name, [])}
        default = defaults.get(f.name)
        spec = field(default_factory=lambda d=default: list(d)) if isinstance(default, list) else field(default=default)
        spec.metadata = types.MappingProxyType(metadata)
        specs.append((f.name, kind, spec))
    return specs


def _to_value(name: str, value):
    """One setting's value as the config holds it: `none` -> `None`; a one-element list of a setting that also takes a
    scalar -> that scalar."""
    if name == "pruning_method" and isinstance(value, str) and value.lower() == "none":
        return None
    if isinstance(value, list):
        _, _, accepts_scalar = _scalar_type(_FIELDS[name].type)
        if accepts_scalar and len(value) == 1:
            return value[0]
        return list(value)
    return value


def _settings(self) -> dict:
    """The settings given on the command line (flags left out are not in the dict: the model keeps its own value),
    as the config holds them (`--pruning_method none` -> `None`; one keep rate -> a float).

    Warns:
        UnreadSettingWarning: for a setting the given `--pruning_method` does not read (no effect).
    """
    given = {name: _to_value(name, getattr(self, name)) for name in PRUNING_FIELDS if getattr(self, name) is not None}
    if "pruning_method" in given:
        check_setting_names(given, given["pruning_method"], context="--")
    return given


PruningArguments = dataclasses.make_dataclass(
    "PruningArguments", _build(grid=False, defaults={}), namespace={"settings": _settings}
)
PruningArguments.__doc__ = """One flag per pruning setting (generated from `token_reduction.PruningFields`); a flag
left out keeps the model's own value. `settings()` gives the settings given, as the config holds them."""
PruningArguments.__module__ = __name__


GRID_DEFAULTS = {
    "pruning_method": ["evit", "variance", "medad", "entropy", "random"],
    "keep_rate": [0.9, 0.7, 0.5],
    "fuse_pruned": [True, False],
}
"""What `hf-vitprune evaluate` compares when a flag is left out: the criteria at three keep rates, with and without
fusion."""

_GRID_ORDER = ("entropy_axis", "renyi_alpha", "bspf_block", "bspf_joint", "pitome_margin", "pitome_alpha", "keep_rate",
               "fuse_pruned", "fusion_temperature", "tome_r", "restore_patch_grid")  # fmt: skip
"""How variants are nested (outermost first): one line of a trade-off plot varies the inner settings."""


def _variants(self) -> list[dict]:
    """The unpruned model (`{"pruning_method": None}`), then every method crossed with the values of the settings it
    reads (its reducer's `settings_used`): a setting left out keeps the model's value; `fusion_temperature` only
    with fusion on.

    Returns:
        `list[dict]`: the settings each variant changes (what `model.pruning(**variant)` takes).

    Raises:
        ValueError: for an unknown method (listing the registry's) or an empty list.

    Warns:
        UnreadSettingWarning: for a setting given (away from its default) that no requested method reads.
    """
    if not self.pruning_method:
        raise ValueError("--pruning_method must name at least one method (none: the unpruned model only).")
    methods = [_to_value("pruning_method", m) for m in self.pruning_method]
    unknown = [m for m in methods if m is not None and m not in REDUCERS]
    if unknown:
        raise ValueError(f"Unknown pruning method(s) {unknown}; known: {list(REDUCERS)}.")
    for name in _GRID_ORDER:
        values = getattr(self, name)
        if values is not None and len(values) == 0:
            raise ValueError(f"--{name} must name at least one value.")
    read = {n for m in methods for n in settings_read_by(m)}
    given = [n for n in _GRID_ORDER if getattr(self, n) is not None and getattr(self, n) != _default(self, n)]
    if self.prune_layers is not None:  # one value for the whole run, but unread all the same by merging methods
        given.append("prune_layers")
    unused = [n for n in given if n not in read]
    if unused:  # the same documented no-op as everywhere: recorded nowhere here, so say so
        readers = {n: [m for m in REDUCERS if n in REDUCERS[m].settings_used] for n in unused}
        warnings.warn(
            "; ".join(f"--{n} is read by {', '.join(r)} only" for n, r in readers.items())
            + f", which --pruning_method {[m or 'none' for m in methods]} does not include: no effect.",
            UnreadSettingWarning,
            stacklevel=2,
        )
    variants = [{"pruning_method": None}]
    for method in methods:
        if method is None:
            continue
        axes = [n for n in _GRID_ORDER if n in settings_read_by(method) and getattr(self, n) is not None]
        for values in itertools.product(*(getattr(self, n) for n in axes)):
            variant = {"pruning_method": method, **dict(zip(axes, values))}
            if not variant.get("fuse_pruned", True):
                variant.pop("fusion_temperature", None)
            if variant not in variants:
                variants.append(variant)
    return variants


def _default(self, name: str):
    spec = type(self).__dataclass_fields__[name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def with_grid_defaults(cls: type, defaults: dict) -> type:
    """A subclass of the arguments dataclass `cls` whose pruning flags default to `defaults` (`{setting: [values]}`),
    each flag keeping its type, help and aliases (e.g. `sweep`'s longer lists of keep rates).

    Raises:
        ValueError: for a name in `defaults` that is not a pruning setting.
    """
    check_setting_names(defaults)
    specs = []
    for name, values in defaults.items():
        base = cls.__dataclass_fields__[name]
        spec = field(default_factory=lambda v=values: list(v), metadata=base.metadata)
        specs.append((name, base.type, spec))
    return dataclasses.make_dataclass(cls.__name__, specs, bases=(cls,))


def _layers(self) -> dict:
    """`{"prune_layers": [...]}` when `--prune_layers` was given (one value for every variant of the run), else `{}`."""
    return {} if self.prune_layers is None else {"prune_layers": list(self.prune_layers)}


def grid_arguments(name: str, defaults: dict) -> type:
    """A [`PruningGridArguments`]-like dataclass whose flags default to `defaults` (`{setting: [values]}`): what a
    command compares when a flag is left out.

    Raises:
        ValueError: for a name in `defaults` that is not a pruning setting.
    """
    check_setting_names(defaults)
    cls = dataclasses.make_dataclass(
        name, _build(grid=True, defaults=defaults), namespace={"variants": _variants, "model_settings": _layers}
    )
    cls.__doc__ = """One flag per pruning setting taking one or more values (generated from
    `token_reduction.PruningFields`); `variants()` crosses each method with the values of the settings it reads."""
    cls.__module__ = __name__
    return cls


PruningGridArguments = grid_arguments("PruningGridArguments", GRID_DEFAULTS)


def parse_arguments(dataclass_types, argv: list[str] | None, prog: str, description: str | None = None) -> tuple:
    """Parse `argv` into instances of `dataclass_types` with `transformers.HfArgumentParser`.

    `argv` is either flags (`--name value`; a flag must be spelled out, abbreviations are refused) or one
    `.json` / `.yaml` / `.yml` file holding the same names (a flag's aliases, e.g. `dataset` for `dataset_name`, are
    accepted as keys too).

    Returns:
        One instance per dataclass type, in order.

    Raises:
        SystemExit: on `--help` or unparsable flags (argparse's behaviour).
        ValueError: for unknown keys in a JSON / YAML file.
    """
    from transformers import HfArgumentParser

    # no abbreviations: `--hub_tok X` must not quietly mean `--hub_token X` (nor a later flag's prefix an earlier one)
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description, allow_abbrev=False)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        import json

        import yaml

        text = Path(argv[0]).read_text()
        values = json.loads(text) if argv[0].endswith(".json") else yaml.safe_load(text)
        if not isinstance(values, dict):
            raise ValueError(f"{argv[0]} must hold one mapping of argument names to values.")
        types = dataclass_types if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        try:
            return parser.parse_dict(_file_values(values, types, argv[0]))
        except TypeError as error:  # e.g. a required argument missing from the file
            raise ValueError(f"{argv[0]}: {error}") from error
    return parser.parse_args_into_dataclasses(argv)


def _file_values(values: dict, types: list, source: str) -> dict:
    """The values of an arguments file as the flags would give them: keys spelled as a flag's alias renamed to the
    argument, a single value of a list argument wrapped in a list, true / false / on / off strings of a boolean
    setting read as booleans (`HfArgumentParser.parse_dict` applies no argparse type).

    Raises:
        ValueError: for an argument given twice (under its name and an alias), naming both keys and the file.
    """
    import typing

    aliases, hints = {}, {}
    for cls in types:
        resolved = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            hints[spec.name] = resolved.get(spec.name, spec.type)
            for alias in spec.metadata.get("aliases", []):
                aliases[alias.lstrip("-").replace("-", "_")] = spec.name
    out, given_as = {}, {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in out:
            raise ValueError(f"{source} gives {name} twice, as {given_as[name]!r} and {key!r}: keep one.")
        hint = hints.get(name)
        members = [m for m in typing.get_args(hint) if m is not type(None)] if typing.get_origin(hint) else [hint]
        listed = next((m for m in members if typing.get_origin(m) is list), None)
        if listed is not None and value is not None and not isinstance(value, list):
            value = [value]
        element = typing.get_args(listed)[0] if listed is not None else (members[0] if members else None)
        if element is OnOff and value is not None:
            value = [OnOff(v) for v in value] if isinstance(value, list) else OnOff(value)
        out[name], given_as[name] = value, key
    return out


@dataclasses.dataclass
class ModelSourceArguments:
    """The checkpoint a command loads (`evaluate`, `sweep`, `tune`, `train`, `export`, `visualize` take these flags)."""

    model_name_or_path: str = field(
        default="facebook/deit-small-patch16-224",
        metadata={"help": "Hub id or local folder of a ViT / DeiT / PrunedViT checkpoint.", "aliases": ["--model"]},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})


@dataclasses.dataclass
class ImageDataArguments:
    """The labelled images a command reads, and how their classes map onto the model's outputs (`evaluate`, `sweep`,
    `tune`, `train`)."""

    dataset_name: str = field(
        default="clane9/imagenet-100",
        metadata={"help": "Local folder with one sub-folder of images per class (or split folders holding them), or a "
                  "Hub dataset id.", "aliases": ["--data", "--dataset"]},
    )  # fmt: skip
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of the Hub dataset's repository to read (e.g. 320px)."}
    )
    data_revision: str | None = field(
        default=None,
        metadata={"help": "Branch or commit of the Hub dataset (e.g. refs/convert/parquet, the Hub's Parquet export)."},
    )
    image_column: str = field(default="image", metadata={"help": "Image column of a Hub dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a Hub dataset."})
    class_list: str | None = field(
        default=None,
        metadata={
            "help": "Class list mapping data-set class names to the model's outputs (or a teacher's): imagenet1k "
            "(built in: the ImageNet-1k WordNet ids and names), a TSV with index and wnid columns, or one class name "
            "per line. Without it, class names must match the model's id2label (or one of its comma-separated names)."
        },
    )


@dataclasses.dataclass
class DeviceArguments:
    """Where and in which precision a command runs the model (`evaluate`, `sweep`, `tune`)."""

    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda if available)."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, or bf16 / fp16 autocast."})

    def __post_init__(self):
        """Check the device and dtype when the flags are parsed, before any model or data is loaded.

        Raises:
            ValueError: for a dtype not in `measure.DTYPES`, a device name torch does not know, or a device this
                machine does not have (e.g. cuda without CUDA), naming the flag and what fits.
        """
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}.")
        if self.device is not None:
            check_device(self.device)


def overwrite_file_field():
    """The `--overwrite` flag of a command that writes one file (`export`, `visualize`): also spelled
    `--overwrite_output_dir` / `--overwrite_output`, as the commands that write a folder spell it."""
    return field(
        default=False,
        metadata={"help": "Replace --output if it exists.",
                  "aliases": ["--overwrite_output_dir", "--overwrite_output"]},
    )  # fmt: skip


__all__ = [
    "ALIASES",
    "GRID_DEFAULTS",
    "DeviceArguments",
    "ImageDataArguments",
    "ModelSourceArguments",
    "OnOff",
    "PruningArguments",
    "PruningGridArguments",
    "grid_arguments",
    "parse_arguments",
    "with_grid_defaults",
]
