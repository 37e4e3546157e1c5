"""The `hf-vitprune` command: `hf-vitprune <command> [flags]`, `hf-vitprune <command> --help` for each."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path

COMMANDS = {
    "evaluate": ("hf_vitprune.evaluation", "top-1, GMACs and images/s of pruning variants of a model on images"),
    "sweep": ("hf_vitprune.sweep", "the trade-off curves of every method (tables, plots, matched-GMACs table)"),
    "visualize": ("hf_vitprune.visualize", "draw which patches each pruning layer keeps on images (PNG)"),
    "train": ("hf_vitprune.train", "fine-tune with pruning switched on (HF Trainer; accelerate launch -m works too)"),
    "export": ("hf_vitprune.export", "export a pruned model to ONNX (onnxruntime) or a torch.export program"),
    "tune": ("hf_vitprune.tune", "choose the reduction schedule by latency measured on this device (greedy search)"),
}


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

    from .arguments import OnOff

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


def main(argv: list[str] | None = None) -> int:
    """Dispatch `argv[0]` to its command's `main(argv[1:])`.

    Returns:
        The process exit status: 0 on success, 2 on a usage error or a bad argument (printed, without a traceback).
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: hf-vitprune <command> [flags]\n\ncommands:\n" + "\n".join(
            f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hf-vitprune: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    from huggingface_hub.errors import StrictDataclassError

    from .measure import CompilerUnavailableError
    from .tune import TuneError

    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        module.main(argv[1:])
    except SystemExit as exit:  # argparse: --help (0) or a flag it could not read (2, already printed)
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(f"hf-vitprune {argv[0]}: error: {exit.code}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, StrictDataclassError, CompilerUnavailableError, TuneError) as error:
        if os.environ.get("HF_VITPRUNE_TRACEBACK"):
            raise
        print(f"hf-vitprune {argv[0]}: error: {error}", file=sys.stderr)
        print("(set HF_VITPRUNE_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
