"""Sharded evaluation against one process: identical per-image predictions, and the accuracy pass's wall time.

Run: `python benchmarks/distributed_eval.py OUT_DIR [--images 1000] [--processes 2] [--output FILE]`

Runs `hf-vitprune evaluate` once in one process and once under `accelerate launch --multi_gpu --num_processes N`
(on a machine without CUDA accelerate runs them as MULTI_CPU with gloo, one thread each) on the real DeiT-Tiny and a
seeded random `--images` of the Imagenette validation photographs, every method at keep 0.7 (ToMe r=11), with
`--save_predictions --skip_throughput`; then compares every image's top-1 class under every variant and prints the
top-1 of each run and the wall time of each accuracy pass (`accuracy_pass_s` in results.json: every variant over every
image, data loading included). Needs `../shared`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.path.relpath(ROOT.parent / "shared"))  # as a user types it from the repository root: ../shared
MODEL = SHARED / "models" / "deit-tiny-patch16-224"
IMAGES = SHARED / "data" / "imagenette" / "val"


def evaluate_command(out: Path, images: int) -> list[str]:
    """The `evaluate` arguments both runs share (after the launcher)."""
    return ["evaluate", "--model_name_or_path", str(MODEL), "--dataset_name", str(IMAGES), "--class_list", "imagenet1k",
            "--max_samples", str(images), "--pruning_method", "evit", "variance", "medad", "entropy", "random", "bspf",
            "tome", "--keep_rate", "0.7", "--fuse_pruned", "on", "--tome_r", "11", "--skip_throughput",
            "--save_predictions", "--num_workers", "1", "--output_dir", str(out), "--overwrite_output_dir"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--output", type=Path, help="Also write the table (Markdown) here.")
    args = parser.parse_args(argv)
    if not (MODEL / "model.safetensors").exists() or not IMAGES.is_dir():
        sys.exit(f"DeiT-Tiny or the Imagenette images are absent under {SHARED}: this benchmark needs ../shared.")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    single = args.out / "one_process"
    subprocess.run([sys.executable, "-m", "hf_vitprune.cli", *evaluate_command(single, args.images)], env=env,
                   check=True)  # fmt: skip
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    sharded = args.out / f"{args.processes}_processes"
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", str(args.processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_vitprune.cli"]  # fmt: skip
    subprocess.run([*launcher, *evaluate_command(sharded, args.images)], env={**env, "OMP_NUM_THREADS": "1"},
                   check=True)  # fmt: skip

    reports = [json.loads((run / "results.json").read_text()) for run in (single, sharded)]
    predictions = [json.loads((run / "predictions.json").read_text()) for run in (single, sharded)]
    same = predictions[0] == predictions[1]
    names = predictions[0]["variants"]
    differing = {
        name: sum(a[i] != b[i] for a, b in zip(predictions[0]["top1_class"], predictions[1]["top1_class"]))
        for i, name in enumerate(names)
    }
    lines = [
        f"DeiT-Tiny, {reports[0]['protocol']['images']} Imagenette val images, {reports[0]['protocol']['machine']}, "
        f"torch {reports[0]['protocol']['torch']} (`python benchmarks/distributed_eval.py OUT --images {args.images} "
        f"--processes {args.processes}`). Per-image predictions identical: {'yes' if same else 'NO'}.",
        "",
        f"| variant | top-1, 1 process | top-1, {args.processes} processes | images predicted differently |",
        "|---|---|---|---|",
    ]
    for row_one, row_many in zip(reports[0]["rows"], reports[1]["rows"], strict=True):
        lines.append(
            f"| {row_one['name']} | {row_one['top1']:.2f} | {row_many['top1']:.2f} | {differing[row_one['name']]} |"
        )
    lines += [
        "",
        "| processes | accuracy pass (s) |",
        "|---|---|",
        f"| 1 (2 threads) | {reports[0]['protocol']['accuracy_pass_s']:.1f} |",
        f"| {args.processes} (1 thread each) | {reports[1]['protocol']['accuracy_pass_s']:.1f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
