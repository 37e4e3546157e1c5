"""The tuned schedule against the paper's fixed schedule and ToMe, at equal measured speed-up, at batch 1 and 64.

Run: `python benchmarks/tune_study.py runs/tune_study [--calibration 1000] [--report_samples N] [--rounds 5 [30]]
[--methods variance evit tome pitome] [--batch_sizes 1 64] [--output FILE]`

The real DeiT-Tiny (`../shared/models/deit-tiny-patch16-224`, 1000-way head) on Imagenette
(`../shared/data/imagenette`, mapped through the ImageNet-1k class list). For each (batch, target) of (1, 1.3x) and
(64, 1.5x), on this machine, fp32:

1. `hf-vitprune tune` (in process, `hf_vitprune.tune.run_tune`): calibration on `--calibration` seeded train images,
   report on the val split; both runs share one log (`tune_log.jsonl`: the calibration top-1s are batch-independent).
2. The paper's fixed schedule (variance with fusion at layers 3, 6, 9, one keep rate), the same with EViT's
   criterion where `evit` is among `--methods`, and ToMe (one `r` in every layer): a ladder of settings timed against
   the unpruned model in interleaved rounds (every other rung, then the one before the first that reaches); the weakest
   setting of each whose measured speed-up reaches the target is picked (cached in `batch<B>/ladder_picks.json`).
3. One final interleaved timing of the unpruned model, the tuner's choice of every method and each ladder's pick with
   the rungs either side; their val top-1 (with the binomial standard error) and drop; the table, and each fixed
   family's top-1 interpolated at each tuned schedule's measured speed-up (equal measured speed-up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.path.relpath(ROOT.parent / "shared"))  # as a user types it from the repository root: ../shared
MODEL = SHARED / "models" / "deit-tiny-patch16-224"
DATA = SHARED / "data" / "imagenette"
TARGETS = ((1, 1.3), (64, 1.5))


def fixed_ladder(method: str, num_layers: int = 12) -> list[tuple[str, dict]]:
    """The fixed-schedule family of `method` that the tuner walks beside its per-layer search
    (`hf_vitprune.schedule_search.uniform_space`), weakest first, without its no-reduction point: the paper's layers
    3, 6, 9 at one keep rate (steps of 0.05), or ToMe's one `r` in every layer (steps of 2)."""
    from hf_vitprune.schedule_search import uniform_space

    space = uniform_space(method, num_layers)
    return [(f"tome r={value}" if method == "tome" else f"{method}@{value} layers 3,6,9", space.build([value]))
            for value in space.grids[0][1:]]  # fmt: skip


def weakest_reaching(model, ladder: list[tuple[str, dict]], batch_size: int, target: float, rounds: int) -> int:
    """Index in `ladder` (weakest first) of the first setting whose measured speed-up reaches `target` (the fastest
    timed where none does): every other rung is timed in one interleaved run against the unpruned model, then the
    rung skipped just before the first coarse one that reaches (a second run): about n / 2 + 1 timings for n rungs."""
    from hf_vitprune.measure import time_pruning_settings

    def timed(indices):
        rungs = [ladder[i] for i in indices]
        timings, _ = time_pruning_settings(model, [("unpruned", {"pruning_method": None}), *rungs],
                                           batch_size=batch_size, rounds=rounds, runs=3 if batch_size > 1 else 7,
                                           latency_runs=0)  # fmt: skip
        return {i: timing.speedup for i, timing in zip(indices, timings[1:])}

    speeds = timed(list(range(1, len(ladder), 2)))
    first = next((i for i in sorted(speeds) if speeds[i] >= target), None)
    if first is None:
        return max(speeds, key=speeds.get)
    speeds.update(timed([first - 1]))
    return first - 1 if speeds[first - 1] >= target else first


def interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """Top-1 at speed-up `at`, linear between the two `(speed-up, top-1)` points around it; None outside them."""
    points = sorted(points)
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if s0 <= at <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (at - s0) / (s1 - s0)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--report_samples", type=int, default=None)
    parser.add_argument("--rounds", type=int, nargs="+", default=[5],
                        help="Interleaved rounds: one value, or one per --batch_sizes entry, in its order (batch-1 "
                        "rounds are cheap, and more of them narrow the median).")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=["variance", "evit", "tome", "pitome"])
    parser.add_argument(
        "--batch_sizes",
        type=int,
        nargs="+",
        default=[b for b, _ in TARGETS],
        help="Which of the (batch, target) pairs to run, by batch size, in this order.",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if len(args.rounds) not in (1, len(args.batch_sizes)):
        parser.error(f"--rounds takes one value or one per batch size ({len(args.batch_sizes)}), got {args.rounds}.")
    if not (MODEL / "model.safetensors").exists() or not DATA.is_dir():
        sys.exit(f"DeiT-Tiny or the Imagenette images are absent under {SHARED}: this benchmark needs ../shared.")

    from hf_vitprune.loading import load_pruned_model
    from hf_vitprune.measure import device_name, time_pruning_settings
    from hf_vitprune.tune import TuneArguments, load_split, run_tune, top1

    log = args.output_dir / "tune_log.jsonl"
    sections = []
    model = load_pruned_model(str(MODEL), pruning_method=None).eval()
    report_cache: dict[str, float] = {}
    report = None
    for batch_size, target in sorted(TARGETS, key=lambda t: args.batch_sizes.index(t[0]) if t[0] in args.batch_sizes
                                     else len(TARGETS)):  # fmt: skip
        if batch_size not in args.batch_sizes:
            continue
        out = args.output_dir / f"batch{batch_size}"
        rounds = args.rounds[args.batch_sizes.index(batch_size)] if len(args.rounds) > 1 else args.rounds[0]
        result_file = out / "results.json"
        if result_file.exists():  # resumable: a finished tune is read back
            result = json.loads(result_file.read_text())
        else:
            tune_args = TuneArguments(
                model_name_or_path=str(MODEL), dataset_name=str(DATA), calibration_split="train",
                calibration_samples=args.calibration, report_split="val", report_samples=args.report_samples,
                class_list="imagenet1k", pruning_method=args.methods, target_speedup=target,
                throughput_batch_size=batch_size,
                device="cpu", rounds=rounds, output_dir=str(out), tune_log=str(log),
            )  # fmt: skip
            command = (f"hf-vitprune tune --model_name_or_path {MODEL} --dataset_name {DATA} --calibration_split "
                       f"train --calibration_samples {args.calibration} --report_split val --class_list imagenet1k "
                       f"--pruning_method {' '.join(args.methods)} --target_speedup {target} --throughput_batch_size "
                       f"{batch_size} --device cpu --rounds {rounds} --tune_log {log}")  # fmt: skip
            result = run_tune(tune_args, command=command)
        for row in result["rows"]:
            report_cache[json.dumps(row["settings"], sort_keys=True)] = row["report_top1"]
        families = {"paper's fixed": fixed_ladder("variance")}
        if "evit" in args.methods:  # the baseline criterion at the paper's schedule: a fixed schedule too
            families["EViT fixed"] = fixed_ladder("evit")
        families["ToMe"] = fixed_ladder("tome")
        picks_file = out / "ladder_picks.json"  # resumable: the ladders are timed once per batch size
        picks = json.loads(picks_file.read_text()) if picks_file.exists() else {}
        for family, ladder in families.items():
            if family not in picks:
                picks[family] = weakest_reaching(model, ladder, batch_size, target, rounds)
                picks_file.write_text(json.dumps(picks))
        compared = [("unpruned", {"pruning_method": None})]
        compared += [(f"tuned {row['method']}: {row['setting']}", row["settings"]) for row in result["rows"][1:]]
        for family, ladder in families.items():  # the rung picked and its neighbours, to interpolate between
            compared += [(f"{family}: {name}", settings) for name, settings in ladder[max(picks[family] - 1, 0) :
                                                                                       picks[family] + 2]]  # fmt: skip
        timings, protocol = time_pruning_settings(model, compared, batch_size=batch_size, rounds=rounds,
                                                  runs=3 if batch_size > 1 else 7, latency_runs=0)  # fmt: skip
        lines = [f"### Batch {batch_size}, target {target}× measured speed-up", "",
                 "| schedule | measured speed-up (min–max) | val top-1 (± s.e.) | drop |",
                 "|---|---|---|---|"]  # fmt: skip
        base, accuracies = None, {}
        for (name, settings), timing in zip(compared, timings):
            key = json.dumps(settings, sort_keys=True)
            if key not in report_cache:
                if report is None:
                    tune_args = TuneArguments(model_name_or_path=str(MODEL), dataset_name=str(DATA),
                                              class_list="imagenet1k", target_speedup=1.5,
                                              report_samples=args.report_samples)  # fmt: skip
                    report = load_split(tune_args, "val", args.report_samples, model)
                report_cache[key] = top1(model, report[0], report[1], settings, 64, torch.device("cpu"), "fp32")
            accuracy = accuracies[name] = report_cache[key]
            base = accuracy if base is None else base
            images = result["protocol"]["report_images"]
            error = 100 * math.sqrt(accuracy / 100 * (1 - accuracy / 100) / images)
            lines.append(f"| {name} | {timing.speedup:.2f}× ({timing.speedup_min:.2f}–{timing.speedup_max:.2f}) | "
                         f"{accuracy:.2f} ± {error:.2f} | {accuracy - base:+.2f} |")  # fmt: skip
        measured = {name: (timing.speedup, accuracies[name]) for (name, _), timing in zip(compared, timings)}
        lines += ["", "At each tuned schedule's measured speed-up, the fixed schedules' val top-1, interpolated "
                  "between their two timed rungs around it (— where it lies outside them):", ""]  # fmt: skip
        for name, (speedup, accuracy) in measured.items():
            if name.startswith("tuned "):
                at = []
                for family in families:
                    value = interpolate([v for n, v in measured.items() if n.startswith(family + ":")], speedup)
                    at.append(f"{family} {'—' if value is None else f'{value:.2f} ({value - base:+.2f})'}")
                lines.append(f"- {name} ({speedup:.2f}×, {accuracy:.2f}, {accuracy - base:+.2f}): {'; '.join(at)}")
        chosen = json.dumps(result["chosen"])
        lines += ["", f"Timing: {protocol}. Tuner: `{result['protocol']['command']}` (calibration "
                  f"{result['protocol']['calibration']}, {result['protocol']['calibration_images']} images; report "
                  f"{result['protocol']['report']}, {images} images); chosen: `{chosen}`.", ""]  # fmt: skip
        sections.append("\n".join(lines))
        if args.output:  # written after each batch size: a stopped study keeps what it measured
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(_text(args, sections, device_name))
    text = _text(args, sections, device_name)
    print(text)
    if args.output:
        args.output.write_text(text)


def _text(args, sections: list[str], device_name) -> str:
    return (f"Tuned against fixed schedules at equal measured speed-up: DeiT-Tiny, Imagenette, "
            f"{device_name(torch.device('cpu'))}, fp32 (`python benchmarks/tune_study.py {args.output_dir} "
            f"--calibration {args.calibration} --rounds {' '.join(map(str, args.rounds))} "
            f"--methods {' '.join(args.methods)} --batch_sizes {' '.join(map(str, args.batch_sizes))}`).\n\n"
            + "\n".join(sections))  # fmt: skip


if __name__ == "__main__":
    main()
