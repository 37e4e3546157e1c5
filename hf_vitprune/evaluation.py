"""`hf-vitprune evaluate`: top-1, GMACs and images/s of pruning variants of one model on real images."""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import __version__, methods
from .arguments import (
    DeviceArguments,
    ImageDataArguments,
    ModelSourceArguments,
    PruningGridArguments,
    parse_arguments,
)
from .measure import (
    CompilerUnavailableError,
    autocast,
    check_compiler,
    check_timings,
    count_gmacs,
    device_name,
    time_pruning_settings,
)
from .report import check_output_dir, markdown_table, table_footer, tokens_text, write_files
from .token_reduction import PruningSettings


@dataclass
class Variant:
    """One pruning setting to evaluate: the settings it changes on the model (`{"pruning_method": None}` is the
    unpruned model); every other setting keeps the model's value.

    Attributes:
        changes (`dict`): what `model.pruning(**changes)` takes ([`~arguments.PruningGridArguments.variants`]).
    """

    changes: dict

    def settings(self, config) -> PruningSettings:
        """The effective settings: `config`'s, with this variant's changes."""
        return replace(PruningSettings.from_config(config), **self.changes)

    def name(self, config) -> str:
        """Short label: `variance@0.7+fusion`, `entropy(a=2)@0.5`, `tome(r=8)`, `unpruned`."""
        return methods.short_name(self.settings(config), tuple(self.changes))


def evaluate_variants(
    model,
    loader,
    variants: list[Variant],
    device: torch.device,
    dtype: str = "fp32",
    progress: bool = True,
    accelerator=None,
    predictions: dict | None = None,
) -> list[dict]:
    """Top-1 / top-5 of every variant, in one pass over the data (each batch is decoded once, run by each variant).

    Under `accelerate launch` each process runs its shard of `loader` and the counts are summed over the processes
    (each image is in exactly one shard). Random pruning draws each image's scores from the image's own seed
    ([`~token_reduction.per_sample_random_seeds`]) when the loader gives seeds, so the predictions do not depend on
    how the data were sharded or batched.

    Args:
        model: a pruned image classifier (`model.pruning(...)` sets each variant; the model's own setting is
            untouched).
        loader: yields `(pixel_values (B, 3, H, W), labels (B,))`, labels already in the model's output indices;
            `(pixel_values, labels, skipped)` ([`data.collate_skipping`]: `skipped` unreadable images left out); or
            `(pixel_values, labels, indices, seeds, skipped)` ([`data.collate_with_ids`]).
        variants (`list[Variant]`).
        device (`torch.device`); dtype (`str`): "fp32", or "bf16" / "fp16" autocast.
        progress (`bool`): a progress bar (images, with images/s) on the main process.
        accelerator (`accelerate.Accelerator`, *optional*): sums the counts over its processes.
        predictions (`dict`, *optional*): filled with `{image index: [top-1 class per variant]}` over every process
            (with a loader that gives indices).

    Returns:
        One dict per variant: `correct_top1`, `correct_top5`, `images` (evaluated), `skipped` (unreadable images).

    Raises:
        NonFiniteLogitsError: when a variant's logits hold NaN or infinity (a ValueError naming the variant).
    """
    from .reducers import per_sample_random_seeds

    counts = torch.zeros(len(variants), 4, dtype=torch.long)  # top-1, top-5, images, skipped
    mine: dict[int, list[int]] = {}
    main = accelerator is None or accelerator.is_main_process
    processes = 1 if accelerator is None else accelerator.num_processes
    model.eval()
    bar = tqdm(desc=f"evaluate {len(variants)} variants", unit="img", disable=not (progress and main))
    with torch.inference_mode(), autocast(device, dtype):
        for batch in loader:
            if len(batch) != 5:  # no image ids: no per-image predictions, random pruning from the global generator
                batch = (*batch[:2], None, None, batch[2] if len(batch) == 3 else 0)
            pixel_values, labels, indices, seeds, skipped = batch
            counts[:, 3] += skipped
            bar.update((len(labels) + skipped) * processes)  # the shards advance together
            if len(labels) == 0:
                continue
            pixel_values, labels = pixel_values.to(device), labels.to(device)
            top1s = []
            for index, variant in enumerate(variants):
                with model.pruning(**variant.changes), per_sample_random_seeds(seeds):
                    logits = model(pixel_values=pixel_values).logits
                check_finite(logits, variant, int(counts[index, 2]), model.config)
                top1, top5 = top_k_hits(logits, labels)
                counts[index] += torch.tensor([top1, top5, len(labels), 0])
                top1s.append(logits.argmax(dim=-1).tolist())
            if predictions is not None and indices is not None:
                mine.update({i: list(p) for i, p in zip(indices.tolist(), zip(*top1s, strict=True), strict=True)})
    bar.close()
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
        if predictions is not None:
            from accelerate.utils import gather_object

            for part in gather_object([mine]):
                predictions.update(part)
    elif predictions is not None:
        predictions.update(mine)
    keys = ("correct_top1", "correct_top5", "images", "skipped")
    return [dict(zip(keys, (int(v) for v in row), strict=True)) for row in counts]


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[int, int]:
    """How many images the model gets right at top-1 and at top-`k`: `(top1, topk)` counts.

    Args:
        logits (`torch.Tensor` of shape `(batch, classes)`), labels (`torch.LongTensor` of shape `(batch,)`).
        k (`int`): capped at the number of classes.

    The one place both `hf-vitprune evaluate` and training-time evaluation count with (`torch.topk`).
    """
    ranked = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    labels = labels.to(ranked.device)
    return int((ranked[:, 0] == labels).sum()), int((ranked == labels[:, None]).any(dim=-1).sum())


class NonFiniteLogitsError(ValueError):
    """A variant's logits hold NaN or infinity: its top-1 would be meaningless, so the run stops without results."""


def check_finite(logits: torch.Tensor, variant: Variant, images_before: int, variant_config=None) -> None:
    """Stop with a message naming `variant` when `logits` `(batch, classes)` hold NaN or infinity.

    Raises:
        NonFiniteLogitsError: naming the variant and the first image (0-based, in data order) with such a logit.
    """
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bool(bad.any()):
        first = images_before + int(bad.nonzero()[0, 0])
        raise NonFiniteLogitsError(
            f"variant {variant.name(variant_config)} gave non-finite logits (NaN or inf) for {int(bad.sum())} "
            "image(s) of a batch, "
            f"the first being image {first} of the data: no results are written for a run whose numbers would be "
            "wrong. Check the variant's settings (and the model's dtype), or leave the variant out."
        )


@dataclass
class EvaluateArguments(PruningGridArguments, ModelSourceArguments, ImageDataArguments, DeviceArguments):
    """Arguments of `hf-vitprune evaluate` (every one is a command-line flag of the same name): the pruning settings
    to compare ([`~arguments.PruningGridArguments`], one or more values each), the model, data and device (the
    [`~arguments.ModelSourceArguments`], [`~arguments.ImageDataArguments`] and [`~arguments.DeviceArguments`] every
    command shares), then the split and the protocol."""

    split: str | None = field(default="validation", metadata={"help": "Split of a Hub dataset (ignored for folders)."})
    tie_query_key: str | None = field(
        default=None,
        metadata={"help": "Tie the query and key projections of a checkpoint that has them apart (BSPF's symmetric "
                  "attention): mean or query, how the shared projection starts."},
    )  # fmt: skip
    patch_stride: int | None = field(
        default=None,
        metadata={"help": "Patch-embedding stride (e.g. 12 for overlapping 16 px patches); a checkpoint with "
                  "another stride has its position embeddings resized (then it needs fine-tuning)."},
    )  # fmt: skip
    batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate a seeded random subset of this size."})
    throughput_batch_size: int = field(default=64, metadata={"help": "Batch size of the images/s measurement."})
    throughput_rounds: int = field(
        default=5, metadata={"help": "Interleaved timing rounds: each round times every variant once, shuffled."}
    )
    throughput_runs: int = field(default=2, metadata={"help": "Timed batch passes per variant and round (median)."})
    throughput_bracket: int = field(
        default=4,
        metadata={"help": "Most variants timed between two timings of the unpruned model (1: around every variant)."},
    )
    throughput_warmup: int = field(default=2, metadata={"help": "Warm-up passes of each variant before the rounds."})
    latency_runs: int = field(default=10, metadata={"help": "Timed batch-1 passes per variant and round (0: none)."})
    compile: bool = field(
        default=False, metadata={"help": "Time the variants through torch.compile (accuracy stays eager)."}
    )
    compile_fallback_eager: bool = field(
        default=False,
        metadata={"help": "With --compile: where torch.compile cannot run, time eager instead (recorded) of stopping."},
    )
    skip_throughput: bool = field(default=False, metadata={"help": "Do not measure images/s and latency."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream a Hub dataset (datasets streaming: nothing is downloaded ahead, for data sets that "
                  "do not fit on disk; --max_samples then takes the first N). Local folders are read file by file "
                  "anyway."},
    )  # fmt: skip
    save_predictions: bool = field(
        default=False,
        metadata={"help": "Also write predictions.json: every image's top-1 class under every variant, in data order."},
    )  # fmt: skip
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Where results.json / results.md go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace results already in --output_dir.", "aliases": ["--overwrite", "--overwrite_output"]},
    )
    seed: int = field(default=0, metadata={"help": "Seed (random criterion, --max_samples subset)."})
    skip_unreadable: bool = field(
        default=False,
        metadata={"help": "Skip images that cannot be decoded (each is named in a warning and counted in the results) "
                  "instead of stopping at the first one."},
    )  # fmt: skip

    def __post_init__(self):
        """Check the timing flags when the arguments are parsed, before any model or data is loaded (inside the
        timing they would stop a run only after its accuracy pass, which can take an hour).

        Raises:
            ValueError: for a batch size, number of rounds, timed passes, bracket or `--max_samples` below 1, or a
                negative number of warm-up or batch-1 passes or workers, naming the flag; a device or dtype
                [`~arguments.DeviceArguments`] refuses.
        """
        super().__post_init__()
        minimum = {"throughput_batch_size": 1, "throughput_rounds": 1, "throughput_runs": 1, "throughput_bracket": 1,
                   "throughput_warmup": 0, "latency_runs": 0, "batch_size": 1, "num_workers": 0,
                   "max_samples": 1}  # fmt: skip
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name} must be at least {low}, got {value}.")


@dataclass
class EvaluationSetup:
    """What an evaluation run needs, prepared once: the model, the data and how they were prepared."""

    model: object
    loader: object
    data: object
    device: torch.device
    image_size: int
    num_patches: int
    preprocessing: str
    predictions: dict | None = None
    """With `--save_predictions`: `{image index: [top-1 class per variant]}` (set by the accuracy pass)."""
    accelerator: object = None
    """The `accelerate.Accelerator` of the run: one process, or several under `accelerate launch`, each with its
    shard of the data."""
    accuracy_pass_s: float | None = None
    """Wall seconds of the accuracy pass (every variant over every image; data loading included)."""
    num_images: int | None = None
    """Images evaluated, all processes together (set by the accuracy pass; known ahead except when streaming)."""
    timing_check: dict | None = None
    """[`~measure.TimingCheck`] of the timing rounds as a dict (`quiet`, spreads, `reasons`); `None` if not timed."""


EVALUATE_OUTPUTS = ("results.json", "results.md", "predictions.json")
"""The files `hf-vitprune evaluate` writes into its `--output_dir`."""


def variants_from_args(args: EvaluateArguments) -> list[Variant]:
    """The variants `args` asks for, every value checked before any model or data is loaded.

    Raises:
        ValueError: for an unknown method, a setting no requested method reads, or a rejected value (the dtype and
            device were checked when the flags were parsed).
    """
    variants = [Variant(changes) for changes in args.variants()]
    for variant in variants[1:]:
        replace(PruningSettings(), **variant.changes).with_defaults(12).validate(12)
    return variants


def check_shards(max_samples: int | None, num_processes: int) -> None:
    """Refuse a `--max_samples` subset smaller than the processes of an `accelerate launch` run, before any work.

    Raises:
        ValueError: naming both numbers and what to do.
    """
    if max_samples is not None and max_samples < num_processes:
        raise ValueError(
            f"--max_samples {max_samples} is smaller than the {num_processes} processes: every process needs at least "
            "one image. Evaluate more images or launch fewer processes."
        )


def prepare_evaluation(args: EvaluateArguments) -> EvaluationSetup:
    """Load the model and the data, map the labels and build the DeiT-preprocessing DataLoader.

    Raises:
        ValueError / OSError: for a bad model, data set or class list.
    """
    from accelerate import Accelerator

    from .data import TransformedImages, collate_with_ids, load_image_data, load_preprocessing, resolve_label_mapping
    from .loading import load_pruned_model

    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # each process its own shard (no image twice: even_batches=False), its own device under accelerate launch
    from datetime import timedelta

    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    # the other processes wait at a barrier while the main one counts GMACs and times: allow it hours
    waiting = InitProcessGroupKwargs(timeout=timedelta(hours=6))
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(even_batches=False),
        kwargs_handlers=[waiting],
    )
    if accelerator.num_processes > 1:
        device = accelerator.device
        check_shards(args.max_samples, accelerator.num_processes)
    extra = args.model_settings()
    if args.patch_stride is not None:
        extra["patch_stride"] = args.patch_stride
    if args.tie_query_key is not None:
        extra.update(tie_query_key=True, tied_qk_init=args.tie_query_key)
    model = (
        load_pruned_model(args.model_name_or_path, attn_implementation=args.attn_implementation, **extra)
        .to(device)
        .eval()
    )
    data = load_image_data(
        args.dataset_name, args.split, args.image_column, args.label_column, max_samples=args.max_samples,
        seed=args.seed, data_dir=args.data_dir, revision=args.data_revision, streaming=args.streaming,
    )  # fmt: skip
    label_ids = resolve_label_mapping(data.class_names, model.config.id2label, args.class_list)
    image_size = model.config.image_size
    preprocessing = load_preprocessing(args.model_name_or_path, image_size)
    streamed = data.streaming
    if streamed:  # each process reads its own part of the stream
        from datasets.distributed import split_dataset_by_node

        data.dataset = split_dataset_by_node(data.dataset, accelerator.process_index, accelerator.num_processes)
    images = TransformedImages(
        data,
        preprocessing.eval_transform(),
        label_ids,
        skip_unreadable=args.skip_unreadable,
        with_ids=True,
        skip_flag="--skip_unreadable",
    )
    loader = torch.utils.data.DataLoader(
        images.streamed() if streamed else images,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_with_ids,
    )
    if not streamed:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    return EvaluationSetup(
        model=model,
        loader=loader,
        data=data,
        device=device,
        image_size=image_size,
        num_patches=model.base_model.embeddings.patch_embeddings.num_patches,
        preprocessing=preprocessing.describe(),
        accelerator=accelerator,
        num_images=None if streamed else len(data),
    )


def measure_variants(
    setup: EvaluationSetup, variants: list[Variant], args: EvaluateArguments
) -> tuple[list[dict], str | None]:
    """Top-1 / top-5 (one pass over the data), GMACs, and images/s and batch-1 latency (interleaved rounds) of every
    variant.

    Returns:
        `(rows, throughput_protocol)`: one JSON-ready dict per variant (the first variant is the reference for
        `top1_delta`, `gmacs_ratio`, `speedup` and `realisation`), and the timing protocol line (`None` if not
        measured).
    """
    model, device, accelerator = setup.model, setup.device, setup.accelerator
    main = accelerator is None or accelerator.is_main_process
    processes = 1 if accelerator is None else accelerator.num_processes
    if main:
        print(
            f"Evaluating {len(variants)} variants of {args.model_name_or_path} on "
            f"{setup.num_images if setup.num_images is not None else 'the streamed'} images of {setup.data.source}"
            + (f", sharded over {processes} processes" if processes > 1 else "")
        )
    torch.manual_seed(args.seed)  # the random criterion's draws do not depend on what ran before (e.g. GMACs counts)
    predictions = {} if args.save_predictions else None
    started = time.perf_counter()
    counts = evaluate_variants(
        model, setup.loader, variants, device, args.dtype, accelerator=accelerator, predictions=predictions
    )
    setup.accuracy_pass_s = time.perf_counter() - started  # the counts are summed at the end: the slowest shard
    setup.num_images = counts[0]["images"] + counts[0]["skipped"]
    setup.predictions = predictions
    if counts[0]["images"] == 0:  # nothing was evaluated: a top-1 of 0.00 % would be a silently wrong result
        raise ValueError(
            f"no image was evaluated: all {counts[0]['skipped']} images of {setup.data.source} were unreadable and "
            "skipped (--skip_unreadable); no results are written."
            if counts[0]["skipped"]
            else f"no image was evaluated: {setup.data.source} holds no image; no results are written."
        )
    if not main:  # GMACs, timing and writing are the main process's; the others wait at the end of the run
        return None, None
    rows = []
    for variant, count in tqdm(list(zip(variants, counts)), desc="GMACs", unit="variant"):
        with model.pruning(**variant.changes):
            rows.append(measure_variant(setup, variant, count))
    base = rows[0]
    for row in rows:
        row["top1_delta"] = row["top1"] - base["top1"]
        row["gmacs_ratio"] = row["gmacs"] / base["gmacs"]
    if args.skip_throughput:
        for row in rows:
            row.update(images_per_s=math.nan, speedup=math.nan, realisation=math.nan)
        return rows, None
    compile_mode = "default" if args.compile else None
    if compile_mode is not None:
        try:
            check_compiler(device)
        except CompilerUnavailableError as error:
            if not args.compile_fallback_eager:
                raise
            print(f"warning: {error}; timing eager, as --compile_fallback_eager asks", file=sys.stderr)
            compile_mode = None
    print(f"Timing {len(variants)} variants in {args.throughput_rounds} interleaved rounds")
    timings, protocol = time_pruning_settings(
        model,
        [(variant.name(model.config), variant.changes) for variant in variants],
        batch_size=args.throughput_batch_size,
        rounds=args.throughput_rounds,
        runs=args.throughput_runs,
        warmup=args.throughput_warmup,
        latency_runs=args.latency_runs,
        dtype=args.dtype,
        device=device,
        compile_mode=compile_mode,
        seed=args.seed,
        bracket=args.throughput_bracket,
    )
    if args.compile and compile_mode is None:
        protocol += "; --compile asked but torch.compile could not run here: eager (--compile_fallback_eager)"
    if processes > 1:
        protocol += f"; timed on the main process alone, the other {processes - 1} idle at a barrier"
    setup.timing_check = asdict(check_timings(timings))  # time_pruning_settings warned already when not quiet
    for row, timing in zip(rows, timings):
        row.update({k: v for k, v in asdict(timing).items() if k != "name"})
        row["realisation"] = row["speedup"] * row["gmacs_ratio"]  # speed-up / (GMACs of the reference / own)
        if timing.latency_speedup is not None:
            row["latency_realisation"] = timing.latency_speedup * row["gmacs_ratio"]
    return rows, protocol


def measure_variant(setup: EvaluationSetup, variant: Variant, count: dict) -> dict:
    """The results row of the variant the model is set to now: its fields, tokens, top-1 / top-5 from `count` and
    GMACs (fvcore, [`count_gmacs`])."""
    model = setup.model
    settings = PruningSettings.from_config(model.config)
    row = {name: value for name, value in settings.as_dict().items() if name != "prune_layers"}
    row["fusion_temperature_set"] = "fusion_temperature" in variant.changes
    row["name"] = methods.short_name(settings, tuple(variant.changes))
    row["tokens"] = tokens_text(model.config, setup.num_patches)
    row["images"] = count["images"]
    row["unreadable_skipped"] = count["skipped"]
    row["top1"] = 100.0 * count["correct_top1"] / max(count["images"], 1)
    row["top5"] = 100.0 * count["correct_top5"] / max(count["images"], 1)
    row["gmacs"] = count_gmacs(model)
    return row


def run_evaluation(args: EvaluateArguments, command: str | None = None) -> dict:
    """Evaluate the variants `args` describes and write `results.json` and `results.md` to `args.output_dir`.

    Returns:
        The JSON-ready report: `rows` (one per variant, the unpruned model first) and `protocol`.

    Raises:
        FileExistsError: if `output_dir` already holds results and `overwrite` is not set (nothing is replaced).
        ValueError / OSError: for bad data, class lists, models or settings, before any evaluation starts.
    """
    results_file = check_output_dir(args.output_dir, args.overwrite_output_dir, EVALUATE_OUTPUTS)
    variants = variants_from_args(args)
    setup = prepare_evaluation(args)
    rows, throughput_protocol = measure_variants(setup, variants, args)
    if rows is None:  # not the main process: wait until the main one has timed and written
        setup.accelerator.wait_for_everyone()
        return {}
    report = {"rows": rows, "protocol": evaluation_protocol(setup, args, command, throughput_protocol)}
    text = markdown_table(rows) + table_footer(report)
    write_results(results_file.parent, {"results.json": json.dumps(report, indent=2), "results.md": text},
                  setup, variants)  # fmt: skip
    print(text)
    setup.accelerator.wait_for_everyone()
    return report


def write_results(output_dir: Path, files: dict[str, str], setup: EvaluationSetup, variants: list[Variant]) -> None:
    """Write a run's files (`{name: text}`, plus `predictions.json` when the run kept predictions) into
    `output_dir`, each to a temporary name first and then renamed: a file of that name is always complete."""
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions = getattr(setup, "predictions", None)
    if predictions is not None:
        names = [variant.name(setup.model.config) for variant in variants]
        files = {**files, "predictions.json": json.dumps(
            {"variants": names, "top1_class": [predictions[i] for i in sorted(predictions)],
             "image_index": sorted(predictions)})}  # fmt: skip
    write_files(output_dir, files)


def evaluation_protocol(
    setup: EvaluationSetup, args: EvaluateArguments, command: str | None, throughput_protocol: str | None
) -> dict:
    """How every number of a run was obtained, for the JSON report.

    Args:
        setup ([`~evaluation.EvaluationSetup`]), args ([`~evaluation.EvaluateArguments`]), command (`str`, *optional*):
            the command line as recorded, throughput_protocol (`str`, *optional*): the timer's protocol line.

    Returns:
        `dict` of JSON-ready strings and numbers.
    """
    return {
        "command": command,
        "model": args.model_name_or_path,
        "data": setup.data.source,
        "images": setup.num_images,
        "num_processes": 1 if setup.accelerator is None else setup.accelerator.num_processes,
        "accuracy_pass_s": setup.accuracy_pass_s,
        "class_list": args.class_list,
        "preprocessing": setup.preprocessing,
        "top1": "argmax over all model outputs; torch.manual_seed(seed) right before the pass (random pruning)",
        "gmacs": "fvcore, one image, SDPA counted through an op handle (hf_vitprune.measure.count_gmacs)",
        "throughput": throughput_protocol,
        "timing_check": setup.timing_check,
        "machine": device_name(setup.device),
        "torch": torch.__version__,
        "hf_vitprune": __version__,
        "fusion_temperature_default": setup.model.config.fusion_temperature,
    }


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune evaluate`: parse `argv` (flags, or one .json / .yaml file) and run."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(EvaluateArguments, argv, prog="hf-vitprune evaluate", description=__doc__)
    return run_evaluation(args, command="hf-vitprune evaluate " + shlex.join(argv))
