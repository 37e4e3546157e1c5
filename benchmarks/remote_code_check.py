"""Does a saved run load with `trust_remote_code=True` and give bit-identical logits to the package's own class?

Run: `python benchmarks/remote_code_check.py runs/train/NAME ... [--data ../shared/data/imagenette/val]
[--num_images 16]`

For each saved model folder (the output of `hf-vitprune train`, holding `modeling_pruned_vit.py` and its siblings), the
same real images (the first `--num_images` files of `--data` in sorted order, preprocessed by the folder's image
processor) go through `transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)`
in a fresh Python process that never imports hf_vitprune (the code shipped in the folder, as a Hub user gets it; in a
process that imported hf_vitprune, transformers would resolve the registered package class instead), and through
`hf_vitprune.PrunedViTForImageClassification`.
Prints a markdown table: run, pruning method, images, max |logit difference|, bit-identical (`torch.equal`).
Both models run in eval mode, fp32, on the CPU, batch of `--num_images`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_vitprune import PrunedViTForImageClassification

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

REMOTE = """
import json, sys, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(pixel_values=torch.load(sys.argv[2])).logits, sys.argv[3])
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__}))
"""


def first_images(folder: str, count: int) -> list[Image.Image]:
    """The first `count` images under `folder` (recursively, sorted by path), as RGB.

    Raises:
        FileNotFoundError: when `folder` holds fewer than `count` images.
    """
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"{folder} holds {len(paths)} images, fewer than the {count} asked for.")
    return [Image.open(p).convert("RGB") for p in paths]


def compare(run_folder: str, images: list[Image.Image]) -> dict:
    """Logits of the remote-code model and of the package class on `images`.

    Returns:
        `dict` with `run`, `method` (`config.pruning_method`), `images`, `max_abs_diff` (float) and `identical` (bool).

    Raises:
        FileNotFoundError: when the folder ships no `modeling_pruned_vit.py` (it was not saved by hf_vitprune).
        RuntimeError: when the remote-code load fails (its error is quoted).
    """
    if not (Path(run_folder) / "modeling_pruned_vit.py").exists():
        raise FileNotFoundError(f"{run_folder} has no modeling_pruned_vit.py: is it a model saved by hf_vitprune?")
    pixel_values = AutoImageProcessor.from_pretrained(run_folder)(images, return_tensors="pt")["pixel_values"]
    local = PrunedViTForImageClassification.from_pretrained(run_folder).eval()
    with torch.no_grad():
        local_logits = local(pixel_values=pixel_values).logits
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "pixel_values.pt"), os.path.join(tmp, "logits.pt")
        torch.save(pixel_values, inputs)
        done = subprocess.run(
            [sys.executable, "-c", REMOTE, str(Path(run_folder).resolve()), inputs, outputs],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loading {run_folder} with trust_remote_code=True failed:\n{done.stderr[-3000:]}")
        remote_class = json.loads(done.stdout.strip().splitlines()[-1])["class"]
        remote_logits = torch.load(outputs)
    return {
        "run": Path(run_folder).name,
        "method": local.config.pruning_method,
        "remote_class": remote_class,
        "images": len(images),
        "max_abs_diff": (remote_logits - local_logits).abs().max().item(),
        "identical": torch.equal(remote_logits, local_logits),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="saved model folders (output_dir of hf-vitprune train)")
    parser.add_argument("--data", default="../shared/data/imagenette/val", help="a folder of images")
    parser.add_argument("--num_images", type=int, default=16)
    args = parser.parse_args(argv)
    images = first_images(args.data, args.num_images)
    rows = [compare(run, images) for run in args.runs]
    print("| run | pruning method | remote class | images | max abs logit difference | bit-identical |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['run']} | {row['method']} | `{row['remote_class']}` | {row['images']} | "
            f"{row['max_abs_diff']:.1e} | {'yes' if row['identical'] else 'no'} |"
        )
    return rows


if __name__ == "__main__":
    main()
