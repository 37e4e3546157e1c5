"""`hf-vitprune tune`: choose the token-reduction schedule by the latency measured on this device.

For each method asked (`--methods`), a greedy coordinate search lowers one coordinate of the schedule at a time (the
keep rate of one pruning layer; for ToMe the `r`, for PiToMe the keep rate, of one group of layers), always taking the
step that costs the least calibration top-1 per millisecond it saves, until the predicted speed-up reaches the target.
Beside it, the method's fixed-schedule family is walked too (one keep rate at the paper's layers; one `r` in every
layer): the choice is the better of the two.
The milliseconds come from a latency model measured once on the device, dtype and batch size asked (one layer timed at
several token counts, the whole model, each method's own reduction work; interleaved rounds); the top-1 from a
calibration split held apart from the split the result is reported on, cached in `tune_log.jsonl` (an interrupted
search resumes from it). The schedules near the target are then timed for real against the unpruned model (interleaved
rounds): the chosen setting is the one with the best calibration top-1 whose **measured** speed-up reaches the target
(where the device beats the latency model, the earlier points of the search's path are timed too, back to the first that
falls short). On a machine whose rounds disagree (busy), the timing is repeated, and the tuner refuses to choose if it
stays busy.

Writes into `--output_dir`: `setting.json` (the chosen settings: `from_pretrained(model, **setting)`), `model/`
(`save_pretrained` of the model with that setting), `pareto.md` and `pareto.png` (calibration top-1 against speed-up of
every schedule evaluated), `results.md` / `results.json` (each method's choice on the report split), `tune_log.jsonl`.
Our design, for this project (issue 30): greedy search over a measured latency model.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import methods
from .arguments import DeviceArguments, ImageDataArguments, ModelSourceArguments, parse_arguments
from .evaluation import Variant, evaluate_variants
from .measure import (
    LatencyModel,
    check_timings,
    device_name,
    measure_latency_model,
    time_pruning_settings,
    token_counts,
)
from .reducers import REDUCERS
from .report import check_output_dir, write_files
from .schedule_search import Point, greedy_search, next_step, pareto, search_space, setting_key, uniform_space
from .token_reduction import PRUNING_FIELDS, PruningSettings

TUNE_OUTPUTS = ("setting.json", "pareto.md", "pareto.png", "results.md", "results.json")
"""The files a finished `hf-vitprune tune` writes into its `--output_dir` (besides `model/` and `tune_log.jsonl`)."""

SUPPORTED_MODEL_TYPES = ("vit", "deit", "pruned_vit", "pruned_deit")
"""Checkpoints `tune` takes: ViT / DeiT image classifiers (and PrunedViT ones)."""


class TuneError(RuntimeError):
    """The tuner will not choose: the machine stayed busy while timing, or no schedule reached the target when timed."""


@dataclass
class TuneArguments(ModelSourceArguments, ImageDataArguments, DeviceArguments):
    """Arguments of `hf-vitprune tune` (every one is a command-line flag of the same name): the model, data and device
    (the [`~arguments.ModelSourceArguments`], [`~arguments.ImageDataArguments`] and [`~arguments.DeviceArguments`]
    every command shares), then the splits, the methods searched, the target and the search."""

    calibration_split: str = field(default="train", metadata={"help": "Split the search measures top-1 on."})
    calibration_samples: int = field(default=1000, metadata={"help": "Seeded random images of the calibration split."})
    report_split: str | None = field(
        default="validation", metadata={"help": "Split the chosen settings are reported on (none: skip the report)."}
    )
    report_samples: int | None = field(default=None, metadata={"help": "Seeded random subset of the report split."})
    pruning_method: list[str] = field(
        default_factory=lambda: ["variance", "evit", "tome", "pitome"],
        metadata={"help": "The methods to search, each on its own (names in reducers.REDUCERS), as evaluate takes "
                  "several.", "aliases": ["--methods"]},
    )  # fmt: skip
    target_speedup: float | None = field(
        default=None, metadata={"help": "Measured speed-up over the unpruned model to reach (e.g. 1.5)."}
    )
    target_latency_ms: float | None = field(
        default=None, metadata={"help": "Measured milliseconds per batch to reach instead (at --batch_size)."}
    )
    throughput_batch_size: int = field(
        default=1, metadata={"help": "Batch size the latency is measured at (evaluate's name for its timing batch)."}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Renamed: --throughput_batch_size (timing) or --eval_batch_size (top-1)."}
    )
    search_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Pruning layers the search may use (pruning methods); default: the paper's three layers "
                  "(3, 6, 9 of 12) and one after a sixth of the depth (2 of 12)."},
    )  # fmt: skip
    keep_step: float = field(default=0.1, metadata={"help": "Step of a pruning layer's keep rate in the search."})
    merge_groups: int = field(
        default=3, metadata={"help": "Groups of consecutive layers sharing one r (ToMe) or keep rate (PiToMe)."}
    )
    rounds: int = field(default=5, metadata={"help": "Interleaved timing rounds (latency model and verification)."})
    remeasure: int = field(
        default=2, metadata={"help": "Times the verification is repeated when the machine looks busy, then refused."}
    )
    refinements: int = field(
        default=2,
        metadata={"help": "Times the search goes further when no schedule reached the target when timed (its "
                  "predicted target corrected by the measured / predicted ratio)."},
    )  # fmt: skip
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the top-1 passes."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers."})
    output_dir: str = field(default="outputs/tune", metadata={"help": "Where the setting, tables and log go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished tune's outputs in --output_dir (the log is kept)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subsets and the timing order."})
    tune_log: str | None = field(
        default=None,
        metadata={"help": "The log caching calibration top-1s and latency models (default: tune_log.jsonl in "
                  "--output_dir); tunes of the same model, data and dtype at other batch sizes can share one."},
    )  # fmt: skip

    def __post_init__(self):
        """Check the flags before anything is loaded.

        Raises:
            ValueError: naming the flag, for no target or both, a target that is not a speed-up (<= 1) or not
                positive, an unknown method, counts below 1, the old `--batch_size`; a device or dtype
                [`~arguments.DeviceArguments`] refuses.
        """
        super().__post_init__()
        if isinstance(self.report_split, str) and self.report_split.lower() in ("none", "null", ""):
            self.report_split = None  # as the help offers it on the command line
        if self.batch_size is not None:
            raise ValueError(
                f"--batch_size {self.batch_size}: tune's two batch sizes have their own flags: --throughput_batch_size "
                "(the batch the latency is measured and the target reached at) and --eval_batch_size (the top-1 "
                "passes)."
            )
        if (self.target_speedup is None) == (self.target_latency_ms is None):
            raise ValueError("give exactly one of --target_speedup (e.g. 1.5) and --target_latency_ms.")
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise ValueError(f"--target_speedup must be above 1 (the unpruned model is 1), got {self.target_speedup}.")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise ValueError(f"--target_latency_ms must be positive, got {self.target_latency_ms}.")
        unknown = [m for m in self.pruning_method if m not in REDUCERS]
        if unknown or not self.pruning_method:
            raise ValueError(f"--pruning_method {unknown or '(none)'}: use names of {list(REDUCERS)}.")
        for name in ("calibration_samples", "throughput_batch_size", "rounds", "eval_batch_size", "merge_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.keep_step < 1:
            raise ValueError(f"--keep_step must lie in (0, 1), got {self.keep_step}.")
        if self.report_split is not None and self.report_split == self.calibration_split:
            raise ValueError(
                f"--calibration_split and --report_split are both {self.report_split!r}: the split the search tunes "
                "on must be held apart from the one it reports on. Calibrate on train, report on validation (or test)."
            )
        for name in ("report_samples", "num_workers", "remeasure", "refinements"):
            low = 1 if name == "report_samples" else 0
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name} must be at least {low}, got {value}.")


# ---------------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------------


class TuneLog:
    """`tune_log.jsonl`: what the cached numbers depend on, the latency models, every calibration top-1.

    One JSON record a line: first the header (`identity`: the model's contents, the calibration images' contents and
    labels, the seed and dtype, as [`model_fingerprint`] and [`load_split`] give them; `about`: the paths, for people),
    then `latency` records (each a [`~measure.LatencyModel`] with the conditions it was measured under) and `top1`
    records (a setting's [`setting_key`] and its calibration top-1 in %). A resumed or repeated tune reuses only what
    was measured on the same contents: a log of other weights or images (in the same folder or not) is refused, and a
    latency model is reused only under the same conditions, from a quiet machine, covering every method asked
    ([`latency_for`]).

    Args:
        path (`Path`): the log (created with its header when absent or empty).
        identity (`dict`): what the top-1s depend on; about (`dict`): shown in messages, never compared.

    Raises:
        ValueError: for a log of another identity, without a header, or with a damaged line (naming the file and the
            line). A truncated last line (a run killed while writing it) is dropped with a warning instead.
    """

    def __init__(self, path: Path, identity: dict, about: dict | None = None):
        self.path, self.identity = path, identity
        self.top1: dict[str, float] = {}
        self.latencies: list[dict] = []
        records = self._read() if path.exists() else []
        if not records:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            self._append({"kind": "header", "identity": identity, "about": about or {}})
            return
        first = records[0][1]
        if first.get("kind") != "header" or "identity" not in first:
            raise ValueError(
                f"{path} has no header of this hf_vitprune version (its first line is {first.get('kind')!r}): its "
                "cached numbers cannot be matched to a model and data. Move it away, or use another --tune_log."
            )
        if first["identity"] != identity:
            changed = sorted(k for k in identity if first["identity"].get(k) != identity[k])
            raise ValueError(
                f"{path} was written for other {', '.join(changed)} ({first.get('about', {})}): its calibration "
                "top-1s would be wrong here. Use another --output_dir or --tune_log (or move the log away)."
            )
        for number, record in records[1:]:
            kind = record.get("kind")
            if kind == "top1" and isinstance(record.get("key"), str) and isinstance(record.get("top1"), (int, float)):
                self.top1[record["key"]] = float(record["top1"])
            elif kind == "latency" and isinstance(record.get("latency"), dict):
                try:
                    LatencyModel(**record["latency"])
                except TypeError as error:
                    raise ValueError(f"{path}:{number}: a latency record this version cannot read ({error}).") from None
                self.latencies.append(record["latency"])
            else:
                raise ValueError(
                    f"{path}:{number}: not a record this version writes ({json.dumps(record)[:120]}): the log is "
                    "damaged. Move it away (or use another --tune_log) to start a new one."
                )

    def _read(self) -> list[tuple[int, dict]]:
        """`(line number, record)` of every line; a truncated last line is dropped from the file, with a warning."""
        text = self.path.read_text()
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                if number == len(lines) and not text.endswith("\n"):  # killed while writing its last record
                    warnings.warn(f"{self.path}:{number}: an unfinished last record (a run stopped while writing "
                                  "it) was dropped; the rest of the log is used.", stacklevel=3)  # fmt: skip
                    self.path.write_text(text[: len(text) - len(line)])
                    break
                raise ValueError(
                    f"{self.path}:{number}: not a JSON record ({error}): the log is damaged. Move it away (or use "
                    "another --tune_log) to start a new one."
                ) from None
            if not isinstance(records[-1][1], dict):
                raise ValueError(f"{self.path}:{number}: not a JSON object: the log is damaged.")
        return records

    def _append(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def add_top1(self, key: str, top1: float) -> None:
        """Record the calibration top-1 (in %) of the setting [`setting_key`] `key`, in memory and on disk at once."""
        self.top1[key] = top1
        self._append({"kind": "top1", "key": key, "top1": top1})

    def add_latency(self, latency: LatencyModel) -> None:
        """Record a measured latency model with its conditions and quietness (read back by [`latency_for`])."""
        self.latencies.append(asdict(latency))
        self._append({"kind": "latency", "latency": asdict(latency)})

    def latency_for(self, conditions: dict, methods: list[str]) -> tuple[LatencyModel | None, str]:
        """The latest latency model measured under `conditions` ([`~measure.LatencyModel.conditions`]) on a quiet
        machine whose reduction work covers every one of `methods`, and a line saying what was found: `(model, why)`;
        `(None, why)` when none fits (then the tuner measures)."""
        if not self.latencies:
            return None, "no latency model in the log"
        reasons = []
        for record in reversed(self.latencies):
            latency = LatencyModel(**record)
            if latency.conditions() != conditions:
                differ = sorted(k for k in conditions if latency.conditions()[k] != conditions[k])
                reasons.append(f"one for other {', '.join(differ)}")
            elif not latency.quiet:
                reasons.append("one measured on a busy machine")
            elif missing := [m for m in methods if m not in latency.overhead_ms]:
                reasons.append(f"one without the work of {', '.join(missing)}")
            else:
                return latency, f"the latency model of {self.path} ({_conditions_text(conditions)}, quiet)"
        return None, "the log holds " + "; ".join(dict.fromkeys(reasons))


def _conditions_text(conditions: dict) -> str:
    return (f"batch {conditions['batch_size']}, {conditions['dtype']}, {conditions['device']}: "
            f"{conditions['machine']}, {conditions['threads']} threads, {conditions['rounds']} rounds")  # fmt: skip


def model_fingerprint(model) -> str:
    """SHA-256 of what decides a model's predictions: its config (without the path it was loaded from, the library
    version and the pruning setting a run chooses) and every weight's bytes, in state-dict order. Two folders holding
    the same checkpoint share it; weights copied over a folder change it."""
    digest = hashlib.sha256()
    skipped = ("_name_or_path", "transformers_version", *PRUNING_FIELDS)
    config = {k: v for k, v in model.config.to_dict().items() if k not in skipped and not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_split(args: TuneArguments, split: str, samples: int | None, model, split_flag: str = "--calibration_split"):
    """`(pixel_values (N, 3, H, W), labels (N,), fingerprints, source)` of a split, preprocessed as the model expects;
    the fingerprints are the SHA-1 of each image file's bytes, in the order of the images. Errors name `split_flag`."""
    from .data import (
        TransformedImages,
        collate_skipping,
        load_image_data,
        load_preprocessing,
        open_rgb,
        resolve_label_mapping,
    )

    data = load_image_data(args.dataset_name, split, args.image_column, args.label_column, max_samples=samples,
                           seed=args.seed, data_dir=args.data_dir, revision=args.data_revision,
                           split_flag=split_flag)  # fmt: skip
    label_ids = resolve_label_mapping(data.class_names, model.config.id2label, args.class_list)
    preprocessing = load_preprocessing(args.model_name_or_path, model.config.image_size)
    images = TransformedImages(data, preprocessing.eval_transform(), label_ids)
    loader = torch.utils.data.DataLoader(images, batch_size=args.eval_batch_size, num_workers=args.num_workers,
                                         collate_fn=collate_skipping)  # fmt: skip
    pixels, labels = [], []
    for batch_pixels, batch_labels, _ in tqdm(loader, desc=f"read {split}", unit="batch"):
        pixels.append(batch_pixels)
        labels.append(batch_labels)
    fingerprints = []
    for row in data.dataset:
        image = row[data.image_column]
        raw = image.get("bytes") if isinstance(image, dict) else None
        if raw is None and isinstance(image, dict) and image.get("path"):
            raw = Path(image["path"]).read_bytes()
        if raw is None:
            raw = open_rgb(image).tobytes()
        fingerprints.append(hashlib.sha1(raw).hexdigest())
    return torch.cat(pixels), torch.cat(labels), fingerprints, data.source


def top1(model, pixels: torch.Tensor, labels: torch.Tensor, settings: dict, batch_size: int, device,
         dtype: str) -> float:  # fmt: skip
    """Top-1 in % of `model` under `settings` on preprocessed images, counted by evaluate's own pass
    ([`~evaluation.evaluate_variants`]); random pruning seeded (0) per pass."""
    batches = [(pixels[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size)]
    torch.manual_seed(0)
    (count,) = evaluate_variants(model, batches, [Variant(settings)], torch.device(device), dtype, progress=False)
    return 100 * count["correct_top1"] / count["images"]


def verify(model, candidates: list[Point], args: TuneArguments, device) -> tuple[dict, str, dict]:
    """Time the candidates against the unpruned model (interleaved rounds), again while the machine looks busy.

    Returns:
        `(speed-up per setting key, protocol line, timing check)`.

    Raises:
        TuneError: when the rounds still disagree after `--remeasure` repetitions: no choice is made on such
            numbers.
    """
    variants = [("unpruned", {"pruning_method": None})]
    variants += [(setting_key(p.settings), p.settings) for p in candidates]
    for attempt in range(args.remeasure + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = args.throughput_batch_size
            timings, protocol = time_pruning_settings(
                model, variants, batch_size=batch, rounds=args.rounds, runs=3 if batch > 1 else 5, warmup=2,
                latency_runs=0, dtype=args.dtype, device=device, seed=args.seed + attempt,
            )  # fmt: skip
        check = check_timings(timings)
        if check.quiet:
            return {t.name: t for t in timings[1:]}, protocol, asdict(check)
        print(f"warning: {check.message()} (attempt {attempt + 1} of {args.remeasure + 1})", file=sys.stderr)
    raise TuneError(
        f"the machine stayed busy through {args.remeasure + 1} timings ({check.message()}): hf-vitprune tune does not "
        "choose a schedule on such numbers. Run it when the machine is idle."
    )


def run_tune(args: TuneArguments, command: str | None = None, latency_model: LatencyModel | None = None) -> dict:
    """Search, verify, report and write (see the module docstring).

    Args:
        args ([`TuneArguments`]); command (`str`, *optional*): the command line, recorded.
        latency_model ([`LatencyModel`], *optional*): use this instead of measuring one (tests).

    Returns:
        The JSON report (`chosen`, `methods`, `protocol`).

    Raises:
        FileExistsError: when `--output_dir` holds a finished tune and `--overwrite_output_dir` is not set.
        ValueError: for an unsupported model, overlapping calibration and report splits, an unreachable target.
        TuneError: when the machine stays busy ([`verify`]) or no schedule reaches the target when measured.
    """
    from .loading import load_pruned_model

    out = check_output_dir(args.output_dir, args.overwrite_output_dir, TUNE_OUTPUTS).parent
    _check_model_type(args.model_name_or_path)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_pruned_model(args.model_name_or_path, pruning_method=None).to(device).eval()
    pixels, labels, calibration_ids, calibration_source = load_split(
        args, args.calibration_split, args.calibration_samples, model
    )
    report = None
    if args.report_split is not None:
        report = load_split(args, args.report_split, args.report_samples, model, "--report_split")
        shared = set(calibration_ids) & set(report[2])
        if shared:
            raise ValueError(
                f"{len(shared)} images of the calibration split {calibration_source} are also in the report split "
                f"{report[3]} (same file contents): the report would not be held apart. Use disjoint splits."
            )
    images = hashlib.sha256(json.dumps(list(zip(calibration_ids, labels.tolist()))).encode()).hexdigest()
    identity = {"model": model_fingerprint(model), "calibration": images, "images": len(labels), "seed": args.seed,
                "dtype": args.dtype}  # fmt: skip
    about = {"model": args.model_name_or_path, "calibration": calibration_source}
    log = TuneLog(Path(args.tune_log) if args.tune_log else out / "tune_log.jsonl", identity, about)
    conditions = {"device": str(device), "machine": device_name(device), "batch_size": args.throughput_batch_size,
                  "dtype": args.dtype, "threads": torch.get_num_threads(), "rounds": args.rounds}  # fmt: skip
    if latency_model is None:
        latency_model, why = log.latency_for(conditions, args.pruning_method)
        if latency_model is not None:
            print(f"Using {why}: measured earlier, not again.")
        else:
            print(f"Measuring the latency model ({_conditions_text(conditions)}): {why}.")
            latency_model = measure_latency_model(model, args.pruning_method, args.throughput_batch_size, args.dtype,
                                                  device, args.rounds, args.seed)  # fmt: skip
            log.add_latency(latency_model)
    unpruned_ms = latency_model.unpruned_ms()
    target_ms = unpruned_ms / args.target_speedup if args.target_speedup else args.target_latency_ms
    best_ms = latency_model.fastest_ms()
    if target_ms < best_ms:
        raise ValueError(
            f"the target ({_target_text(args)}) is out of reach: even keeping one token per layer after the first "
            f"layer's attention would take {best_ms:.1f} ms, a speed-up of {unpruned_ms / best_ms:.2f}x over the "
            f"unpruned {unpruned_ms:.1f} ms at batch {args.throughput_batch_size} here. Ask for at most that."
        )

    def predict(settings):
        return latency_model.predict(token_counts(model, settings), settings.get("pruning_method"))

    def top1_of(settings):
        key = setting_key(settings)
        if key not in log.top1:
            log.add_top1(key, top1(model, pixels, labels, settings, args.eval_batch_size, device, args.dtype))
        return log.top1[key]

    num_layers = model.config.num_hidden_layers
    spaces = {}  # per method: its per-layer search, and its fixed-schedule family (one coordinate)
    for m in args.pruning_method:
        spaces[m] = search_space(m, num_layers, args.search_layers, args.keep_step, args.merge_groups)
        spaces[f"{m} (fixed)"] = uniform_space(m, num_layers, args.keep_step)
    targets = dict.fromkeys(spaces, target_ms)  # each path's predicted target, corrected after each timing
    speeds, evaluated, chosen, failed = {}, [], {}, {}
    protocol, check, corrections = None, None, 0
    while len(chosen) + len(failed) < len(spaces):
        paths = {}
        with tqdm(desc="tune: calibration top-1 of each schedule", unit="schedule") as bar:
            for name, space in spaces.items():  # cached top-1s: a repeated search costs only its new points
                if name not in chosen and name not in failed:
                    paths[name], points = greedy_search(space, predict, top1_of, targets[name], unpruned_ms,
                                                        progress=bar)  # fmt: skip
                    evaluated += points
        for name, path in list(paths.items()):
            if len(path) == 1:  # every step adds more reduction work than it saves: nothing to time or choose
                failed[name] = "no step of its schedule saves time on this device (its reduction work costs more)"
                del paths[name]
        # The greedy path does not depend on the target (only where it stops), so each round walks the same path.
        candidates, optimistic = {}, []
        for name, path in paths.items():
            step = next_step(path, speeds, targets[name], lambda t: _reached(t, args, unpruned_ms))
            if isinstance(step, Point):
                chosen[name] = (step, speeds[setting_key(step.settings)])
            elif step:
                candidates.update((setting_key(p.settings), p) for p in step)
            else:
                optimistic.append(name)
        if candidates:
            timed, protocol, check = verify(model, list(candidates.values()), args, device)
            speeds.update(timed)
        elif optimistic and corrections < args.refinements:
            # Nothing near the crossing reached the target when timed: the latency model was optimistic here. Ask the
            # search for more, by the median measured / predicted ratio of the points timed on the path.
            corrections += 1
            for name in optimistic:
                ratios = sorted(speeds[k].speedup / p.predicted_speedup
                                for p in paths[name] if (k := setting_key(p.settings)) in speeds)  # fmt: skip
                if not ratios:
                    failed[name] = "no point of its path could be timed"
                    continue
                targets[name] *= min(1.0, ratios[len(ratios) // 2]) * 0.98
        else:
            for name in optimistic:
                failed[name] = f"no schedule of its path reached the target when timed ({corrections} corrections)"
            break
    # each method's choice: the better of its per-layer search and its fixed family (a tie: the faster)
    chosen = {
        method: max((chosen[n] for n in (method, f"{method} (fixed)") if n in chosen),
                    key=lambda c: (c[0].top1, c[1].speedup))
        for method in args.pruning_method if method in chosen or f"{method} (fixed)" in chosen
    }  # fmt: skip
    not_chosen = {m: failed.get(m, failed.get(f"{m} (fixed)", "")) for m in args.pruning_method if m not in chosen}
    for method, reason in not_chosen.items():
        print(f"tune: {method}: no choice: {reason}.", file=sys.stderr)
    if not chosen:
        measured = ", ".join(f"{k}: {t.speedup:.2f}x" for k, t in speeds.items()) or "nothing timed"
        raise TuneError(
            f"no schedule reached {_target_text(args)} when timed, after {corrections} corrections of the latency "
            f"model ({measured}; {'; '.join(f'{m}: {r}' for m, r in not_chosen.items())}). Ask for a lower target, "
            "or allow more --refinements."
        )
    best_method = max(chosen, key=lambda m: (chosen[m][0].top1, chosen[m][1].speedup))  # a tie: the faster
    best = chosen[best_method][0]
    rows = [{"method": "unpruned", "setting": "unpruned", "settings": {"pruning_method": None},
             "calibration_top1": top1_of({"pruning_method": None}), "predicted_speedup": 1.0,
             "measured_speedup": 1.0}]  # fmt: skip
    for method, (point, timing) in chosen.items():
        rows.append({"method": method, "setting": _short(point.settings, model.config), "settings": point.settings,
                     "calibration_top1": point.top1, "predicted_speedup": point.predicted_speedup,
                     "measured_speedup": timing.speedup, "measured_min": timing.speedup_min,
                     "measured_max": timing.speedup_max})  # fmt: skip
    if report is not None:
        for row in rows:
            row["report_top1"] = top1(model, report[0], report[1], row["settings"], args.eval_batch_size, device,
                                      args.dtype)  # fmt: skip
    result = {
        "chosen": best.settings,
        "rows": rows,
        "protocol": {
            "command": command,
            "target": _target_text(args),
            "calibration": calibration_source,
            "calibration_images": len(labels),
            "report": None if report is None else report[3],
            "report_images": None if report is None else len(report[1]),
            "timing": protocol,
            "timing_check": check,
            "latency_model": asdict(latency_model),
            "schedules_evaluated": len({setting_key(p.settings) for p in evaluated}),
            "not_chosen": not_chosen,
        },  # fmt: skip
    }
    _write_outputs(out, model, result, evaluated, speeds, args, command)
    return result


def _reached(timing, args: TuneArguments, unpruned_ms: float) -> bool:
    """Whether a measured timing meets the target (speed-up, or milliseconds by the unpruned model's prediction)."""
    if args.target_speedup:
        return timing.speedup >= args.target_speedup
    return unpruned_ms / timing.speedup <= args.target_latency_ms


def _check_model_type(name_or_path: str) -> None:
    """Refuse a checkpoint `tune` cannot take, listing the ones it can."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path) if not Path(name_or_path, "config.json").is_file() else None
    model_type = (config.model_type if config is not None
                  else json.loads(Path(name_or_path, "config.json").read_text()).get("model_type"))  # fmt: skip
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{name_or_path} is a {model_type!r} model; hf-vitprune tune takes image classifiers of the families "
            f"{list(SUPPORTED_MODEL_TYPES)} (ViT / DeiT checkpoints such as facebook/deit-small-patch16-224)."
        )


def _target_text(args: TuneArguments) -> str:
    if args.target_speedup:
        return f"{args.target_speedup:g}x speed-up at batch {args.throughput_batch_size}, {args.dtype}"
    return f"{args.target_latency_ms:g} ms per batch of {args.throughput_batch_size}, {args.dtype}"


def _short(settings: dict, config) -> str:
    if settings.get("pruning_method") is None:
        return "unpruned"
    from dataclasses import replace

    full = replace(PruningSettings.from_config(config), **settings)
    text = methods.short_name(full)
    if "prune_layers" in settings:
        text += f" at layers {','.join(map(str, settings['prune_layers']))}"
    return text


def _write_outputs(out: Path, model, result: dict, evaluated: list[Point], speeds: dict, args: TuneArguments,
                   command: str | None) -> None:  # fmt: skip
    """setting.json, model/, pareto.md, pareto.png, results.md, results.json (each written whole, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> None:
        write_files(out, {name: text})

    chosen = result["chosen"]
    write("setting.json", json.dumps(chosen, indent=2) + "\n")
    with model.pruning(**chosen):
        model.save_pretrained(out / "model")
    unique = {setting_key(p.settings): p for p in evaluated}
    points = sorted(unique.values(), key=lambda p: (p.method, -p.predicted_ms))
    frontier = pareto(points)
    lines = [f"Every schedule evaluated by `{command or 'hf-vitprune tune'}` ({result['protocol']['calibration']}, "
             f"{result['protocol']['calibration_images']} images; predicted speed-ups from the latency model at batch "
             f"{args.throughput_batch_size}, {args.dtype}; measured ones: {result['protocol']['timing']}).", "",
             "| method | schedule | calibration top-1 | predicted speed-up | measured speed-up (min–max) | Pareto |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        timing = speeds.get(setting_key(p.settings))
        measured = (f"{timing.speedup:.2f}× ({timing.speedup_min:.2f}–{timing.speedup_max:.2f})"
                    if timing is not None else "")  # fmt: skip
        lines.append(f"| {p.method} | {_short(p.settings, model.config)} | {p.top1:.2f} | {p.predicted_speedup:.2f}× "
                     f"| {measured} | {'yes' if id(p) in frontier else ''} |")  # fmt: skip
    write("pareto.md", "\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        axis.scatter([p.predicted_speedup for p in mine], [p.top1 for p in mine], s=12, alpha=0.5, label=method)
        timed = [(speeds[setting_key(p.settings)].speedup, p.top1) for p in mine if setting_key(p.settings) in speeds]
        if timed:
            axis.scatter(*zip(*timed), marker="x", s=40, color="black")
    axis.set_xlabel("speed-up over unpruned (dots: predicted, crosses: measured)")
    axis.set_ylabel("calibration top-1 (%)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / ".pareto.png.partial.png", dpi=120)
    plt.close(figure)
    (out / ".pareto.png.partial.png").replace(out / "pareto.png")
    has_report = result["protocol"]["report"] is not None
    table = ["| method | schedule | calibration top-1 | " + ("report top-1 | " if has_report else "")
             + "predicted speed-up | measured speed-up (min–max) |",
             "|---|---|---|" + ("---|" if has_report else "") + "---|---|"]  # fmt: skip
    for row in result["rows"]:
        measured = (f"{row['measured_speedup']:.2f}× ({row['measured_min']:.2f}–{row['measured_max']:.2f})"
                    if "measured_min" in row else "1.00×")  # fmt: skip
        table.append(f"| {row['method']} | {row['setting']} | {row['calibration_top1']:.2f} | "
                     + (f"{row['report_top1']:.2f} | " if has_report else "")
                     + f"{row['predicted_speedup']:.2f}× | {measured} |")  # fmt: skip
    for method, reason in result["protocol"]["not_chosen"].items():
        table.append(f"| {method} | no choice: {reason} |" + " |" * (4 if has_report else 3))
    protocol = result["protocol"]
    text = (f"Target: {protocol['target']}. Chosen: `{json.dumps(chosen)}` (best calibration top-1 among the "
            "schedules whose measured speed-up reached the target).\n\n" + "\n".join(table) + "\n\n"
            f"Calibration: {protocol['calibration']} ({protocol['calibration_images']} images); report: "
            f"{protocol['report']} ({protocol['report_images']} images). Timing: {protocol['timing']}. "
            f"{protocol['schedules_evaluated']} schedules evaluated. Reproduce: `{command}`.\n"
            "Load: `PrunedViTForImageClassification.from_pretrained(model, **json.load(open('setting.json')))`, or "
            "the saved `model/`.\n")  # fmt: skip
    write("results.md", text)
    write("results.json", json.dumps(result, indent=2, default=str))
    print(text)


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune tune`: parse `argv` (flags, or one .json / .yaml file) and run."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(TuneArguments, argv, prog="hf-vitprune tune", description=__doc__)
    return run_tune(args, command="hf-vitprune tune " + shlex.join(argv))


__all__ = ["TuneArguments", "TuneLog", "run_tune"]
