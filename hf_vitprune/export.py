"""`hf-vitprune export`: a pruned model as an ONNX file (onnxruntime) or a `torch.export` program, any batch size.

    hf-vitprune export --model_name_or_path facebook/deit-small-patch16-224 --pruning_method variance --keep_rate 0.7 \
        --output deit-small-variance-0.7.onnx

The model is exported with torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, opset 18 by default;
`torch.export.export` for `--format pt2`) with a dynamic batch axis: one file serves batch 1 and batch 256. Token counts
are fixed by the image size and the pruning setting, so every shape but the batch is static. Input `pixel_values`
`(batch, channels, image_size, image_size)`, output `logits` `(batch, num_labels)`. After exporting, the file is run
once (onnxruntime, or the exported program) on random images at batch 1 and 3 and compared with the PyTorch model;
the largest difference is printed. The ONNX extra brings what this needs: `pip install "hf-vitprune[onnx]"`.
`pruning_method="random"` exports (ONNX draws its own random numbers, so its pruning differs from torch's draws).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .arguments import PruningArguments, overwrite_file_field, parse_arguments
from .measure import LogitsOnly, model_image_size

FORMATS = ("onnx", "pt2")


@dataclass(kw_only=True)
class ExportArguments(PruningArguments):
    """Arguments of `hf-vitprune export` (each is a flag of the same name): the pruning settings
    ([`~arguments.PruningArguments`]; a flag left out keeps the checkpoint's value), then what to export where."""

    output: str = field(
        metadata={"help": "File to write (.onnx for --format onnx, .pt2 for --format pt2). ONNX also writes the "
                  "weights beside it, as OUTPUT.data; neither file is replaced without --overwrite."}
    )  # fmt: skip
    model_name_or_path: str = field(
        default="facebook/deit-small-patch16-224",
        metadata={"help": "Hub id or local folder of a ViT / DeiT / PrunedViT checkpoint.", "aliases": ["--model"]},
    )
    format: str = field(default="onnx", metadata={"help": f"One of {', '.join(FORMATS)}."})
    opset: int = field(default=18, metadata={"help": "ONNX opset (the dynamo exporter needs >= 18)."})
    overwrite: bool = overwrite_file_field()


def check_export_arguments(args: ExportArguments) -> Path:
    """Check the format, opset and output before any model is loaded.

    Raises:
        ValueError: for an unknown format, an opset the exporter cannot write, or an output suffix that does not fit.
        FileExistsError: if `output` (or, for ONNX, its weights file `output.data`) exists and `overwrite` is not set.
        ImportError: for `--format onnx` without onnx / onnxruntime / onnxscript installed (with the pip command).
    """
    if args.format not in FORMATS:
        raise ValueError(f"--format {args.format!r} is not supported: use one of {', '.join(FORMATS)}.")
    output = Path(args.output)
    if output.suffix != f".{args.format}":
        raise ValueError(f"--format {args.format} writes a .{args.format} file; --output {output} has another suffix.")
    if args.format == "onnx":
        if args.opset < 18:
            raise ValueError(f"--opset {args.opset} is not supported: torch's dynamo exporter writes opset >= 18.")
        missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if _missing(name)]
        if missing:
            raise ImportError(f'--format onnx needs {", ".join(missing)}: pip install "hf-vitprune[onnx]".')
    if output.is_dir():
        raise ValueError(f"--output {output} is a directory: give the file to write, e.g. {output / output.name}.")
    written = [output, *([external_data_path(output)] if args.format == "onnx" else [])]
    existing = [str(path) for path in written if path.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass --overwrite to replace "
            f"{'it' if len(existing) == 1 else 'them'}, or another --output."
        )
    return output


def external_data_path(output: Path) -> Path:
    """Where torch's ONNX exporter writes an export's weights: `OUTPUT.data` beside `OUTPUT`."""
    return output.with_name(output.name + ".data")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def export_model(model: nn.Module, output: str | Path, format: str = "onnx", opset: int = 18):
    """Export `model` (an image classifier taking `pixel_values`) with a dynamic batch axis.

    Args:
        model (`nn.Module`): in eval mode; its pruning setting is exported as it is.
        output (`str` or `Path`): the file to write.
        format (`str`): `"onnx"` (torch's dynamo ONNX exporter) or `"pt2"` (`torch.export.save`).
        opset (`int`): ONNX opset.

    Returns:
        The `torch.export.ExportedProgram` that was written (for `pt2`) or saved to ONNX.

    Raises:
        torch's export errors, unchanged, for a model it cannot trace.
    """
    size = model_image_size(model)
    example = torch.randn(2, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    wrapped = LogitsOnly(model).eval()
    if format == "pt2":
        program = torch.export.export(wrapped, (example,), dynamic_shapes={"pixel_values": {0: batch}})
        torch.export.save(program, str(output))
        return program
    onnx_program = torch.onnx.export(
        wrapped,
        (example,),
        str(output),
        dynamo=True,
        dynamic_shapes={"pixel_values": {0: batch}},
        input_names=["pixel_values"],
        output_names=["logits"],
        opset_version=opset,
        verbose=False,
    )
    return onnx_program


def run_exported(path: str | Path, format: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of an exported file on `pixel_values` `(batch, channels, H, W)`: onnxruntime (CPU) for ONNX, the
    loaded program for pt2."""
    if format == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(pixel_values)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0])


def run_export(args: ExportArguments, command: str | None = None) -> dict:
    """Load, export, and check the export against the PyTorch model.

    Returns:
        `{"output", "format", "opset", "pruning", "max_abs_difference"}`.

    Raises:
        ValueError / OSError / ImportError / FileExistsError: for bad arguments or models, before exporting.
    """
    from .loading import load_pruned_model

    output = check_export_arguments(args)
    model = load_pruned_model(args.model_name_or_path, attn_implementation="sdpa", **args.settings()).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    export_model(model, output, args.format, args.opset)
    size = model.config.image_size if isinstance(model.config.image_size, int) else model.config.image_size[0]
    difference = 0.0
    for batch_size in (1, 3):
        x = torch.randn(batch_size, model.config.num_channels, size, size, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        with torch.no_grad():
            expected = model(pixel_values=x).logits
        difference = max(difference, float((run_exported(output, args.format, x) - expected).abs().max()))
    pruning = {k: getattr(model.config, k) for k in ("pruning_method", "keep_rate", "prune_layers", "tome_r")}
    report = {"output": str(output), "format": args.format, "opset": args.opset if args.format == "onnx" else None,
              "pruning": pruning, "max_abs_difference": difference}  # fmt: skip
    note = " (random pruning draws differently outside torch)" if pruning["pruning_method"] == "random" else ""
    print(f"wrote {output} ({args.format}, dynamic batch); largest |logit difference| to PyTorch: {difference:.2e}"
          f"{note}")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune export`."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(ExportArguments, argv, prog="hf-vitprune export", description=__doc__)
    return run_export(args, command="hf-vitprune export " + shlex.join(argv))
