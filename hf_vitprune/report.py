"""How the commands write their results: the output folder checked before any work, every file written whole
(`write_files`), the Markdown tables of `evaluate` and `sweep` (labels and cells from [`methods`]), the token schedule
text, and the footer that gives the protocol of every number."""

from __future__ import annotations

import math
from pathlib import Path

from . import methods
from .token_reduction import PRUNING_FIELDS, PruningSettings


def check_output_dir(output_dir: str, overwrite: bool, filenames: tuple[str, ...]) -> Path:
    """Refuse to replace any file a user already has, before any work starts.

    Args:
        output_dir (`str`): where the run writes.
        overwrite (`bool`): replace existing files.
        filenames (`tuple[str, ...]`): every file the run writes there; the first is returned.

    Returns:
        `Path` of `output_dir / filenames[0]`.

    Raises:
        FileExistsError: naming the files that exist, if any does and `overwrite` is false.
    """
    existing = [name for name in filenames if (Path(output_dir) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds {', '.join(existing)}: pass --overwrite_output_dir to replace them, or "
            "another --output_dir."
        )
    return Path(output_dir) / filenames[0]


def write_files(output_dir: Path, files: dict[str, str]) -> None:
    """Write each `{name: text}` into `output_dir` (created if needed), first to a temporary name and then renamed:
    a file of that name is always complete, even if the run is killed while writing.

    Raises:
        OSError: when the folder cannot be created or a file written.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        temporary = output_dir / f".{name}.partial"
        temporary.write_text(text)
        temporary.replace(output_dir / name)


def tokens_text(config, num_patches: int) -> str:
    """`196→138+1→98+1→70+1`: candidate tokens after each pruning layer (+1 = the fused token).

    Args:
        config: a PrunedViT config (its `token_schedule`); num_patches (`int`): patches of one image.
    """
    return "→".join(
        [str(num_patches)]
        + [f"{kept}+{fused}" if fused else str(kept) for kept, fused in config.token_schedule(num_patches)]
    )


def markdown_delimiter(header: str) -> str:
    """The delimiter row of a Markdown table whose header row is `header` (`| a | b |` -> `|---|---|`): one `---`
    cell per column, which GitHub needs to render the table at all. Cells must not contain `|`.

    Raises:
        ValueError: for a header that does not start and end with `|`.
    """
    header = header.strip()
    if not (header.startswith("|") and header.endswith("|") and len(header) > 1):
        raise ValueError(f"not a Markdown header row (it must start and end with '|'): {header!r}")
    return "|" + "---|" * (header.count("|") - 1)


def markdown_table(rows: list[dict]) -> str:
    """Markdown table of evaluation rows (as written by `run_evaluation`); the method, keep-rate and fusion cells
    come from `methods.label` and `methods.table_cells`. Speed columns (when measured): images/s (median over
    interleaved rounds), speed-up against the first row (median of the per-round ratios, min-max), realisation
    (speed-up divided by the GMACs ratio), batch-1 latency (median and p90, ms) and its realisation.

    Args:
        rows (`list[dict]`): results rows; the first is the reference.

    Raises:
        KeyError: for a row without `tokens`, `top1`, `top1_delta` or `gmacs` (not written by `run_evaluation`).
    """
    timed = any(not math.isnan(r.get("images_per_s", math.nan)) for r in rows)
    header = "| method | keep rate | fusion | tokens per stage | top-1 (%) | Δ top-1 | GMACs |"
    if timed:
        header += " images/s | speed-up (min–max) | realisation | batch-1 ms (p90) | batch-1 realisation |"
    lines = [header, markdown_delimiter(header)]
    for r in rows:
        settings, explicit = settings_of(r)
        method = methods.label(settings)
        keep, fusion = methods.table_cells(settings, explicit)
        line = (
            f"| {method} | {keep} | {fusion} | {r['tokens']} | {r['top1']:.2f} | {r['top1_delta']:+.2f} | "
            f"{r['gmacs']:.3f} |"
        )
        if timed:
            line += (
                f" {r['images_per_s']:.1f} | {r['speedup']:.2f}× ({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) | "
                f"{r['realisation']:.2f} | "
            )
            if r.get("latency_ms") is not None:
                line += f"{r['latency_ms']:.1f} ({r['latency_p90_ms']:.1f}) | {r['latency_realisation']:.2f} |"
            else:
                line += "— | — |"
        lines.append(line)
    return "\n".join(lines)


def settings_of(row: dict) -> tuple[PruningSettings, tuple[str, ...]]:
    """`(settings, explicit)` of a results row (as `run_evaluation` writes it, this version or an earlier one): its
    pruning settings, and the ones chosen for the variant rather than left at the model's value that labels show (an
    explicit temperature is flagged by `fusion_temperature_set`)."""
    settings = PruningSettings(**{name: row[name] for name in PRUNING_FIELDS if name in row})
    return settings, ("fusion_temperature",) if row.get("fusion_temperature_set") else ()


def table_footer(report: dict) -> str:
    """The Markdown lines under a results table: data (and the images `--skip_unreadable` skipped), model,
    preprocessing, throughput protocol, command.

    Args:
        report (`dict`): `{"rows": [...], "protocol": {...}}` as `run_evaluation` writes it.

    Raises:
        KeyError: for a protocol without `images`, `data`, `model`, `preprocessing`, `gmacs`, `throughput`, `command`.
    """
    protocol = report["protocol"]
    skipped = report["rows"][0].get("unreadable_skipped", 0) if report.get("rows") else 0
    images = f"{protocol['images']} images"
    if skipped:
        images += f" ({skipped} unreadable, skipped with --skip_unreadable: {protocol['images'] - skipped} evaluated)"
    return (
        f"\n\n{images} of `{protocol['data']}`; model `{protocol['model']}`; "
        f"{protocol['preprocessing']}. GMACs: {protocol['gmacs']}. "
        f"images/s: {protocol['throughput'] or 'not measured'}."
        f"\n\nCommand: `{protocol['command']}`\n"
    )
