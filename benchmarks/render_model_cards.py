"""Render the model card of each `hf-vitprune train` run into `model_cards/`, from the run's `pruning_results.json`.

Run: `python benchmarks/render_model_cards.py runs/train/NAME ... --output_dir model_cards [--note TEXT] [--overwrite]`

Each card is `model_cards/NAME.md`, built by `hf_vitprune.model_card.build_model_card` (huggingface_hub `ModelCard`,
`model-index` metadata) exactly as `hf-vitprune train` builds the card it saves next to the model; `--note` adds a
sentence under the results (for example, where the checkpoint can or cannot be downloaded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_vitprune.model_card import build_model_card


def render(run_folder: str, output_dir: str, note: str | None = None, overwrite: bool = False) -> Path:
    """Write `output_dir/<run folder name>.md` and return its path.

    Raises:
        FileNotFoundError: the run folder has no `pruning_results.json` (the run did not finish).
        FileExistsError: the card exists and `overwrite` is False (nothing is replaced without asking).
    """
    source = Path(run_folder) / "pruning_results.json"
    if not source.exists():
        raise FileNotFoundError(f"{source} not found: did the run in {run_folder} finish?")
    results = json.loads(source.read_text())
    if note:
        results["results_note"] = note
    path = Path(output_dir) / f"{Path(run_folder).resolve().name}.md"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    build_model_card(results).save(str(path))
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (output_dir of hf-vitprune train)")
    parser.add_argument("--output_dir", default="model_cards")
    parser.add_argument("--note", default=None, help="a sentence added under the card's results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing cards")
    args = parser.parse_args(argv)
    paths = [render(run, args.output_dir, args.note, args.overwrite) for run in args.runs]
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
