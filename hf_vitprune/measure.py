"""Counting (GMACs with fvcore) and timing (images/s) of ViT models, under the field's protocols."""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .reducers import REDUCERS
from .token_reduction import TokenReduction, reducer_from_config

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sdpa_macs(inputs, outputs) -> int:
    """fvcore op handle for `aten::scaled_dot_product_attention`: `q k^T` and `attn v` multiply-adds.

    For query `(..., n, d)`, key `(..., m, d)` and value `(..., m, d_v)`: `B n m d + B n m d_v`, `B` the product of the
    leading dimensions, exactly what fvcore counts for the two `matmul`s of eager attention.
    """
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(v) for v in inputs[:3])
    batch = math.prod(query[:-2])
    n, d = query[-2], query[-1]
    m, d_v = key[-2], value[-1]
    return batch * n * m * d + batch * n * m * d_v


class LogitsOnly(nn.Module):
    """An HF vision model as one tensor in, one tensor out, for timers, compilers and exporters: `pixel_values`
    `(batch, channels, height, width)` in, `logits` `(batch, classes)` out (`last_hidden_state` `(batch, tokens,
    hidden)` for a model without a head). `interpolate_pos_encoding=True` passes that flag on (other image sizes)."""

    def __init__(self, model: nn.Module, interpolate_pos_encoding: bool = False):
        super().__init__()
        self.model = model
        self.interpolate_pos_encoding = interpolate_pos_encoding

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_pos_encoding else {}
        outputs = self.model(pixel_values=pixel_values, **kwargs)
        return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


def model_image_size(model: nn.Module) -> int:
    """The side in pixels (`int`) of the images `model` takes: its config's `image_size`, the first of a pair (HF ViT
    configs hold an `int`, some others a pair). Raises `AttributeError` for a model without `config.image_size`."""
    size = model.config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


def count_gmacs(model: nn.Module, image_size: int | None = None) -> float:
    """Multiply-accumulates of one forward pass for one image, in GMACs (1e9 MACs), counted with fvcore.

    fvcore counts one multiply-add as one "flop", so this is the number the DeiT / EViT / arXiv:2507.19175 papers call
    GFLOPs (DeiT-S: 4.61). Counted: linear layers, convolutions, matrix products (attention, the class-token
    attention row of the pruning criteria, the fusion average) and normalisation layers; SDPA is counted through an op
    handle (`q k^T` and `attn v`), which fvcore lacks, so the result does not depend on the attention
    implementation. Not counted (fvcore ignores them): softmax, GELU, sorting, gathers.

    Args:
        model (`nn.Module`): an HF vision model taking `pixel_values` (any of this package's, or a stock ViT).
        image_size (`int`, *optional*): square input side in pixels; defaults to `model.config.image_size`.
            Another size uses `interpolate_pos_encoding=True`.

    Returns:
        `float`: GMACs per image. Batch-independent: pruning keeps the same number of tokens for every image.

    Raises:
        ImportError: if fvcore is not installed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import warns about torch.jit.script's deprecation
        from fvcore.nn import FlopCountAnalysis

    size = image_size or model_image_size(model)
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, model.config.num_channels, size, size, generator=generator)
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    wrapped = LogitsOnly(model, interpolate_pos_encoding=size != model_image_size(model))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(wrapped, pixel_values)
            analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = analysis.total()
    finally:
        model.train(was_training)
    return total / 1e9


def check_device(name: str) -> torch.device:
    """The `torch.device` called `name`, once it is known to exist on this machine.

    Raises:
        ValueError: for a name torch does not know (listing the usual ones), or a device type this machine does not
            have (cuda without a CUDA GPU, an index beyond the GPUs present, mps without Apple's GPU), naming
            `--device`.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"--device {name!r} is not a device torch knows ({error}); use cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA GPU torch can use; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")  # fmt: skip
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's GPU (mps) is not available here; use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        available = getattr(torch, device.type, None)
        if available is None or not getattr(available, "is_available", lambda: False)():
            raise ValueError(f"--device {name}: no {device.type} device is available here; use --device cpu.")
    return device


def device_name(device: torch.device) -> str:
    """A human-readable name of `device`: the GPU model, or the CPU model, core count and (Linux) last-level cache,
    e.g. `cpu (Intel(R) Xeon(R) Processor, 2 cores, 480 MiB L3)`. Virtual machines often report one generic CPU model
    for different hosts; the cache size tells such hosts apart, and speed-ups differ between them."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    import os

    cache = _last_level_cache()
    return f"cpu ({cpu}, {os.cpu_count()} cores{f', {cache}' if cache else ''})"


def _last_level_cache(root: str = "/sys/devices/system/cpu/cpu0/cache") -> str | None:
    """The largest cache level of CPU 0 as `"<MiB> MiB L<level>"` from Linux sysfs (`index*/level`, `index*/size`,
    sizes like `491520K`), or `None` where sysfs does not say.

    Args:
        root (`str`): the sysfs folder of CPU 0's caches (a test points it elsewhere).
    """
    from pathlib import Path

    best, units = None, {"K": 1, "M": 1024, "G": 1024**2}
    for index in sorted(Path(root).glob("index*")):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):  # unreadable or unknown: left out
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            kib = int(size[:-1]) * units[size[-1]]
            if best is None or level > best[0]:
                best = (level, kib)
    if best is None:
        return None
    return f"{best[1] / 1024:g} MiB L{best[0]}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CompilerUnavailableError(RuntimeError):
    """`torch.compile` cannot run on this machine ([`check_compiler`])."""


def check_compiler(device: str | torch.device = "cpu") -> None:
    """Fail early, with the reason, where `torch.compile` cannot run (no C/C++ compiler for inductor's CPU kernels,
    no Triton for CUDA, an unsupported Python or platform).

    Compiles and runs a two-operation function (a float tensor of shape `(4,)`) on `device` with `fullgraph=True`,
    the mode the speed protocol uses. Source: our protocol; it calls `torch.compile` exactly as
    [`time_interleaved`] does, so a failure here is the failure the timing would hit after minutes of work.

    Args:
        device (`str` or `torch.device`): where the timed variants will run.

    Raises:
        CompilerUnavailableError: naming the device and torch's error, and what to do (drop `--compile`, or ask
            for the eager fallback explicitly).
    """
    try:
        compiled = torch.compile(lambda x: torch.relu(x) * 2, fullgraph=True)
        compiled(torch.ones(4, device=device))
    except Exception as error:  # any compiler failure: inductor raises many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CompilerUnavailableError(
            f"torch.compile cannot run on {device} here ({type(error).__name__}: {reason}). Drop --compile to time "
            "eager, or pass --compile_fallback_eager to time eager and record that the compiler was unavailable."
        ) from error


def _check_protocol(dtype: str, runs: int, batch_size: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    if runs < 1 or batch_size < 1:
        raise ValueError(f"runs and batch_size must be >= 1, got runs={runs}, batch_size={batch_size}.")


def autocast(device: torch.device, dtype: str):
    """The autocast context of `dtype` on `device`: `torch.autocast` for "bf16" / "fp16" (weights stay float32), no
    autocast for "fp32". The one helper every timing and accuracy pass uses.

    Raises:
        KeyError: for a dtype not in [`DTYPES`].
    """
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] else contextlib.nullcontext()


@dataclass
class InterleavedTiming:
    """Speed of one variant, timed in alternation with the others (see [`time_interleaved`]).

    Attributes:
        name (`str`): the variant's label.
        images_per_s (`float`): median over the variant's timings (one per round; the reference's: one per group of
            variants and round) of images/s (batch `batch_size`).
        images_per_s_min, images_per_s_max (`float`): spread over those timings.
        speedup (`float`): median over rounds of the reference's time per batch, interpolated to this variant's place
            between the reference timings around it, divided by this variant's (1.0 for the reference).
        speedup_min, speedup_max (`float`): spread over rounds of that ratio.
        latency_ms (`float`), latency_p90_ms (`float`): median and 90th percentile of single-image (batch 1) forward
            passes, milliseconds, over every timed pass (`None` when not measured).
        latency_speedup (`float`): the same ratio as `speedup` for the median batch-1 latency of each timing (`None`
            when not measured).
        speedups (`list[float]`): every round's speed-up, in the order measured (the reference: 1.0 per group of
            variants): `speedup` is their median; with them a reader can put an interval on the median or compare
            two runs round by round.
        latency_speedups (`list[float]`): the same for the batch-1 speed-up (empty when not measured).
        rates (`list[float]`): images/s of every timing of the step, in the order measured.
    """

    name: str
    images_per_s: float
    images_per_s_min: float
    images_per_s_max: float
    speedup: float
    speedup_min: float
    speedup_max: float
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_speedup: float | None = None
    speedups: list[float] = field(default_factory=list)
    latency_speedups: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


@dataclass
class TimedStep:
    """One thing [`time_interleaved`] times.

    Attributes:
        name (`str`): its label.
        run (`Callable[[], object]`): one timed pass (e.g. a forward pass on a batch).
        single (`Callable[[], object]`, *optional*): one batch-1 pass, for the latency (with `latency_runs`).
        context (`Callable[[], ContextManager]`): entered around the step's passes in each round and in the warm-up
            (e.g. `lambda: model.pruning(keep_rate=0.5)`); by default nothing.
    """

    name: str
    run: Callable[[], object]
    single: Callable[[], object] | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def time_interleaved(
    steps: list[TimedStep],
    images_per_run: int = 1,
    rounds: int = 5,
    runs: int = 2,
    warmup: int = 2,
    latency_runs: int = 0,
    seed: int = 0,
    bracket: int = 4,
    device: str | torch.device | None = None,
) -> list[InterleavedTiming]:
    """Time several steps against the first one (the reference) in interleaved rounds: the one timer of the package,
    used by `evaluate`, `sweep`, `train` and `benchmarks/speed.py`.

    In each round every step is timed once, in a shuffled order (seeded): `runs` synchronised calls of `step.run`
    (their median is the round's time) and `latency_runs` calls of `step.single`, inside `step.context()`. The
    reference brackets the others: it is timed before and after every group of at most `bracket` of them, and its time
    at each step is interpolated linearly between those two timings by the step's place in the group (the j-th of k:
    `t_before + (t_after - t_before) j / (k + 1)`); the step's speed-up is that time over its own (latency likewise).
    Drift that is linear across a group cancels exactly, however many steps a round holds. Warm-up: `warmup` untimed
    calls of each step (and of its `single`) before the first round. Source: this project's protocol (README, docs).

    Args:
        steps (`list[TimedStep]`): the first is the reference.
        images_per_run (`int`): images one `run` processes (images/s = images_per_run / seconds).
        rounds, runs, warmup, latency_runs (`int`): as described (`latency_runs=0`: no latency).
        seed (`int`): shuffling seed.
        bracket (`int`): most steps timed between two reference timings (1: around every step).
        device (*optional*): a CUDA device is synchronised around every timed call (kernels run asynchronously).

    Returns:
        One [`InterleavedTiming`] per step, in the given order.

    Raises:
        ValueError: for fewer than 1 round / run / image per run, no step, `bracket` < 1, or negative warm-up or
            latency passes.
    """
    import random

    if rounds < 1 or runs < 1 or images_per_run < 1 or not steps:
        raise ValueError(
            f"need at least one round, run, image per run and step, got rounds={rounds}, runs={runs}, "
            f"images_per_run={images_per_run}, {len(steps)} steps."
        )
    if bracket < 1:
        raise ValueError(f"bracket must be at least 1 (steps between two reference timings), got {bracket}.")
    if warmup < 0 or latency_runs < 0:
        raise ValueError(f"warmup and latency_runs must be >= 0, got {warmup} and {latency_runs}.")
    device = torch.device(device) if device is not None else torch.device("cpu")

    def seconds(call) -> float:
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        return time.perf_counter() - start

    others = list(range(1, len(steps)))
    shuffler = random.Random(seed)
    rates = [[] for _ in steps]  # images/s of every timing
    latencies = [[] for _ in steps]  # every batch-1 pass (ms)
    speedups = [[] for _ in steps]  # per round: against the reference timings around the step's group
    latency_speedups = [[] for _ in steps]
    timed_latency = latency_runs > 0 and all(step.single is not None for step in steps)

    def time_step(index: int) -> tuple[float, float | None]:
        step = steps[index]
        with step.context():
            rate = images_per_run / statistics.median(seconds(step.run) for _ in range(runs))
            passes = [1e3 * seconds(step.single) for _ in range(latency_runs)] if timed_latency else []
        rates[index].append(rate)
        latencies[index] += passes
        return rate, statistics.median(passes) if passes else None

    for step in steps:  # warm-up (and compilation) of every step
        with step.context():
            for _ in range(warmup):
                step.run()
                if timed_latency:
                    step.single()
    for _ in range(rounds):
        shuffler.shuffle(others)
        before = time_step(0)
        for start in range(0, max(len(others), 1), bracket):
            group = [(index, time_step(index)) for index in others[start : start + bracket]]
            after = time_step(0)
            speedups[0].append(1.0)
            if timed_latency:
                latency_speedups[0].append(1.0)
            for place, (index, (rate, latency)) in enumerate(group, start=1):
                share = place / (len(group) + 1)  # the reference interpolated to the step's place
                reference_seconds = (1 - share) / before[0] + share / after[0]  # per image
                speedups[index].append(rate * reference_seconds)
                if latency is not None:
                    latency_speedups[index].append(((1 - share) * before[1] + share * after[1]) / latency)
            before = after
    timings = []
    for index, step in enumerate(steps):
        latency = latency_p90 = latency_speedup = None
        if timed_latency:
            latency = statistics.median(latencies[index])
            latency_p90 = statistics.quantiles(latencies[index], n=10)[-1] if len(latencies[index]) > 1 else latency
            latency_speedup = statistics.median(latency_speedups[index])
        timings.append(
            InterleavedTiming(
                name=step.name,
                images_per_s=statistics.median(rates[index]),
                images_per_s_min=min(rates[index]),
                images_per_s_max=max(rates[index]),
                speedup=statistics.median(speedups[index]),
                speedup_min=min(speedups[index]),
                speedup_max=max(speedups[index]),
                latency_ms=latency,
                latency_p90_ms=latency_p90,
                latency_speedup=latency_speedup,
                speedups=speedups[index],
                latency_speedups=latency_speedups[index],
                rates=rates[index],
            )
        )
    return timings


QUIET_LIMITS = {"reference_jitter": 0.15, "speedup_spread": 0.6, "latency_tail": 1.6}
"""What a quiet machine gives, from this project's quiet runs on 2-core CPUs (benchmarks/results/
benchmark_cpu_deit_tiny.md, benchmarks/results/offshelf_matched_deit_tiny.md): two timings of the reference in a row
differ by a few % (the machine drifts slowly: over a whole run they may differ by a third, which the interleaving
cancels, so that is not counted), a variant's per-round speed-ups vary by at most ~30 % of their median, and batch-1
passes have a 90th percentile at most ~1.3x their median. [`check_timings`] flags a run beyond about twice that,
where the numbers say more about the other jobs on the machine than about the model."""


class BusyMachineWarning(UserWarning):
    """The timing rounds disagreed beyond what a quiet machine gives ([`check_timings`]): other work was probably
    running; the speed numbers are not to be trusted."""


@dataclass
class TimingCheck:
    """Whether a [`time_interleaved`] run looks like a quiet machine's ([`check_timings`]).

    Attributes:
        quiet (`bool`): every measure within [`QUIET_LIMITS`].
        reference_jitter (`float`): the median, over consecutive timings of the reference, of their relative
            difference `|r_i - r_(i-1)| / mean(r_i, r_(i-1))` (0 with one timing): slow drift moves it little, other
            jobs coming and going move it a lot.
        speedup_spread (`float`): the largest (max - min) / median of a variant's per-round speed-ups (0 with one
            round).
        latency_tail (`float` or `None`): the largest 90th percentile / median of a variant's batch-1 passes (`None`
            when not measured).
        reasons (`list[str]`): one sentence per measure beyond its limit.
    """

    quiet: bool
    reference_jitter: float
    speedup_spread: float
    latency_tail: float | None
    reasons: list[str] = field(default_factory=list)

    def message(self) -> str:
        """The warning printed and written next to the numbers (`""` when quiet)."""
        if self.quiet:
            return ""
        return (
            "the timing rounds disagree beyond what a quiet machine gives ("
            + "; ".join(self.reasons)
            + "): other jobs were probably running, so these speeds are not reliable; re-run on an idle machine"
        )


def check_timings(timings: list[InterleavedTiming], limits: dict | None = None) -> TimingCheck:
    """Tell a busy machine from a quiet one by how much the interleaved rounds of one run disagree.

    The reference is timed many times (before and after every group of variants, every round): on a quiet machine two
    of its timings in a row agree closely, and a variant's per-round speed-ups and its batch-1 passes agree too. Other
    jobs sharing the machine make them scatter (a user on a shared machine saw batch-1 medians of 821 ms with a 90th
    percentile of 2,203 ms, and realisations of 5.01). Our check, with limits from this project's quiet runs
    ([`QUIET_LIMITS`]).

    Args:
        timings (`list[InterleavedTiming]`): one run's timings, the reference first.
        limits (`dict`, *optional*): overrides of [`QUIET_LIMITS`] (`reference_jitter`, `speedup_spread`,
            `latency_tail`).

    Returns:
        [`TimingCheck`].

    Raises:
        ValueError: for no timings.
    """
    if not timings:
        raise ValueError("check_timings needs the timings of at least the reference.")
    limits = {**QUIET_LIMITS, **(limits or {})}
    rates = timings[0].rates
    steps = [abs(b - a) / ((a + b) / 2) for a, b in zip(rates, rates[1:])]
    reference_jitter = statistics.median(steps) if steps else 0.0
    speedup_spread = max(
        ((t.speedup_max - t.speedup_min) / t.speedup for t in timings[1:] if t.speedup > 0), default=0.0
    )
    tails = [t.latency_p90_ms / t.latency_ms for t in timings if t.latency_ms and t.latency_p90_ms is not None]
    latency_tail = max(tails) if tails else None
    reasons = []
    if reference_jitter > limits["reference_jitter"]:
        reasons.append(
            f"two timings of the reference in a row differed by {100 * reference_jitter:.0f} % (median), limit "
            f"{100 * limits['reference_jitter']:.0f} %"
        )
    if speedup_spread > limits["speedup_spread"]:
        reasons.append(
            f"a variant's per-round speed-ups varied by {100 * speedup_spread:.0f} % of their median, limit "
            f"{100 * limits['speedup_spread']:.0f} %"
        )
    if latency_tail is not None and latency_tail > limits["latency_tail"]:
        reasons.append(
            f"batch-1 passes had a 90th percentile {latency_tail:.1f}x their median, "
            f"limit {limits['latency_tail']:.1f}x"
        )
    return TimingCheck(not reasons, reference_jitter, speedup_spread, latency_tail, reasons)


def interleaving_protocol(reference: str, rounds: int, runs: int, warmup: int, latency_runs: int, seed: int,
                          bracket: int, num_steps: int) -> str:  # fmt: skip
    """The protocol line of a [`time_interleaved`] run (its rounds, passes and bracketing)."""
    group = min(bracket, max(num_steps - 1, 1))
    return (
        f"{rounds} interleaved rounds (variants in shuffled order, seed {seed}) of {runs} timed batch passes"
        + (f" and {latency_runs} batch-1 passes" if latency_runs else "")
        + f" per variant after {warmup} warm-up; {reference} timed before and after "
        + ("every variant" if group == 1 else f"every group of at most {group} variants")
        + f", speed-ups per round against {reference} interpolated between the two timings around each, median and "
        "min-max"
    )


def time_pruning_settings(
    model: nn.Module,
    variants: list[tuple[str, dict]],
    batch_size: int = 64,
    rounds: int = 5,
    runs: int = 2,
    warmup: int = 2,
    latency_runs: int = 10,
    dtype: str = "fp32",
    device: str | torch.device | None = None,
    compile_mode: str | None = None,
    seed: int = 0,
    bracket: int = 4,
) -> tuple[list[InterleavedTiming], str]:
    """Images/s and batch-1 latency of several pruning settings of one model, with [`time_interleaved`].

    Each variant's setting is applied by `model.pruning(**fields)` around its passes; the first variant is the
    reference (e.g. the unpruned model). The model runs in eval mode under `torch.inference_mode()` on one fixed random
    batch (seed 0) and its first image; bf16 / fp16 under `torch.autocast` (weights stay float32);
    `torch.compile(mode=compile_mode, fullgraph=True, dynamic=False)` when given (each setting its own graph, compiled
    during its warm-up, which then has at least 2 passes).

    Args:
        model (`nn.Module`): a pruned image model (PrunedViT class, or a stock model after `prune`).
        variants (`list[(name, fields)]`): `fields` for `model.pruning(...)`; the first is the reference.
        batch_size, rounds, runs, warmup, latency_runs, seed, bracket: as [`time_interleaved`].
        dtype (`str`): "fp32", "bf16" or "fp16"; device (*optional*): defaults to the model's; compile_mode (`str`,
            *optional*): "default", "max-autotune" or "reduce-overhead".

    Returns:
        `(timings, protocol)`: one [`InterleavedTiming`] per variant, in the given order, and the protocol line.

    Raises:
        ValueError: for an unknown `dtype`, `batch_size` < 1, or what [`time_interleaved`] refuses.

    Warns:
        BusyMachineWarning: when the rounds disagree beyond what a quiet machine gives ([`check_timings`]); the
            protocol line then ends with the same warning.
    """
    _check_protocol(dtype, runs, batch_size)
    if not variants:
        raise ValueError("need at least one round and one variant, got no variant.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    size = model_image_size(model)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, model.config.num_channels, size, size, generator=generator).to(device)
    single = batch[:1].clone()
    forward = LogitsOnly(model, interpolate_pos_encoding=False)
    if compile_mode is not None:  # every variant is its own graph: room for all of them in dynamo's cache
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(variants))
        forward = torch.compile(forward, mode=compile_mode, fullgraph=True, dynamic=False)  # one graph per setting
        warmup = max(warmup, 2)
    steps = [
        TimedStep(name, lambda: forward(batch), lambda: forward(single), lambda f=fields: model.pruning(**f))
        for name, fields in variants
    ]
    with torch.inference_mode(), autocast(device, dtype):
        timings = time_interleaved(steps, batch_size, rounds, runs, warmup, latency_runs, seed, bracket, device)
    check = check_timings(timings)
    if not check.quiet:
        warnings.warn(check.message(), BusyMachineWarning, stacklevel=2)
    protocol = (
        f"batch {batch_size}, {size} px, {dtype}, {getattr(model.config, '_attn_implementation', None) or 'eager'} "
        f"attention, {device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        + (f", torch.compile(mode={compile_mode!r})" if compile_mode else "")
        + "; "
        + interleaving_protocol(variants[0][0], rounds, runs, warmup, latency_runs, seed, bracket, len(variants))
        + ("" if check.quiet else f". WARNING: {check.message()}")
    )
    return timings, protocol


# ---------------------------------------------------------------------------------------------------------------------
# The latency model of `hf-vitprune tune` (one layer timed at several token counts)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LatencyModel:
    """Milliseconds of one forward pass of a schedule, predicted from one layer timed at several token counts.

    `predict` adds: the rest of the model (`fixed_ms`: embeddings, final norm, head); each layer at its token count,
    split between the tokens entering it (attention, by its share of the layer's MACs) and those leaving it (MLP);
    and each reducing layer's own work (`overhead_ms[method]` at the full token count, scaled by the tokens entering).

    Attributes:
        tokens (`list[int]`), layer_ms (`list[float]`): one layer's milliseconds at these token counts (increasing),
            interpolated linearly between them.
        fixed_ms (`float`): the whole unpruned model minus its layers.
        overhead_ms (`dict[str, float]`): per method, its reduction work at the full token count.
        num_layers (`int`), num_prefix_tokens (`int`), hidden_size (`int`), intermediate_size (`int`).
        batch_size (`int`), dtype (`str`), device (`str`), machine (`str`: [`device_name`]), threads (`int`: torch's
            intra-op threads), rounds (`int`): what was measured and how.
        quiet (`bool`): whether the timing rounds agreed ([`check_timings`]); a busy measurement is never reused.
    """

    tokens: list[int]
    layer_ms: list[float]
    fixed_ms: float
    overhead_ms: dict[str, float]
    num_layers: int
    num_prefix_tokens: int
    hidden_size: int
    intermediate_size: int
    batch_size: int = 1
    dtype: str = "fp32"
    device: str = "cpu"
    machine: str = ""
    threads: int = 0
    rounds: int = 0
    quiet: bool = True

    def conditions(self) -> dict:
        """What the measurement depends on besides the model: device, machine, batch size, dtype, threads, rounds."""
        return {"device": self.device, "machine": self.machine, "batch_size": self.batch_size, "dtype": self.dtype,
                "threads": self.threads, "rounds": self.rounds}  # fmt: skip

    def layer(self, num_tokens: float) -> float:
        """One layer's milliseconds at `num_tokens` tokens (linear between the measured counts, clamped)."""
        points = list(zip(self.tokens, self.layer_ms))
        if num_tokens <= points[0][0]:
            return points[0][1] * num_tokens / points[0][0]
        for (n0, t0), (n1, t1) in zip(points, points[1:]):
            if num_tokens <= n1:
                return t0 + (t1 - t0) * (num_tokens - n0) / (n1 - n0)
        (n0, t0), (n1, t1) = points[-2], points[-1]
        return t1 + (t1 - t0) * (num_tokens - n1) / (n1 - n0)

    def attention_share(self, num_tokens: float) -> float:
        """Share of a layer's MACs before its reduction point (attention: 4 N D^2 + 2 N^2 D of + 2 N D I)."""
        d, n = self.hidden_size, num_tokens
        attention = 4 * n * d * d + 2 * n * n * d
        return attention / (attention + 2 * n * d * self.intermediate_size)

    def predict(self, token_counts: list[tuple[int, int]], method: str | None) -> float:
        """Milliseconds of a forward pass.

        Args:
            token_counts (`list[(entering, leaving)]`): tokens (prefix included) of each layer, in order.
            method (`str`, *optional*): the method reducing where `leaving < entering`.
        """
        total, full = self.fixed_ms, self.tokens[-1]
        for entering, leaving in token_counts:
            share = self.attention_share(entering)
            total += share * self.layer(entering) + (1 - share) * self.layer(leaving)
            if leaving != entering and method is not None:
                total += self.overhead_ms.get(method, 0.0) * entering / full
        return total

    def unpruned_ms(self) -> float:
        """The unpruned model's predicted milliseconds."""
        return self.predict([(self.tokens[-1], self.tokens[-1])] * self.num_layers, None)

    def fastest_ms(self) -> float:
        """A bound no schedule beats: the first layer's attention on every token, then one token per image left
        besides the prefix, with no reduction work."""
        full, least = self.tokens[-1], self.num_prefix_tokens + 1
        counts = [(full, least)] + [(least, least)] * (self.num_layers - 1)
        return self.predict(counts, None)


def token_counts(model, settings: dict) -> list[tuple[int, int]]:
    """Tokens `(entering, leaving)` of each layer of `model` under `settings` (prefix included), from the method's
    own schedule (`TokenReducer.layer_schedule`)."""
    config = model.config
    prefix = config.num_prefix_tokens
    patches = model.base_model.embeddings.patch_embeddings.num_patches
    counts = [[prefix + patches, prefix + patches] for _ in range(config.num_hidden_layers)]
    with model.pruning(**settings):
        reducer = reducer_from_config(config, prefix)
        if reducer is None:
            return [tuple(c) for c in counts]
        for layer_idx, kept, fused in reducer.layer_schedule(patches, config.num_hidden_layers):
            counts[layer_idx][1] = prefix + kept + fused  # reduced after its attention
            for later in range(layer_idx + 1, config.num_hidden_layers):
                counts[later] = [prefix + kept + fused] * 2
    return [tuple(c) for c in counts]


def measure_latency_model(model, methods_: list[str], batch_size: int, dtype: str, device, rounds: int = 5,
                          seed: int = 0) -> LatencyModel:  # fmt: skip
    """Time one layer at several token counts, the whole unpruned model, and one reducing layer of each method, all in
    the same interleaved rounds ([`~measure.time_interleaved`]), and build the [`LatencyModel`]. A reducing layer's
    timed pass is what a forward pass does there: build its `TokenReduction` and run the layer with it; the setting is
    switched once per method, outside the timing (switching costs ~0.2 ms, about a layer's reduction work at batch 1).

    Args:
        model: a PrunedViT image classifier (its setting is left unchanged).
        methods_ (`list[str]`): the methods whose reduction work is timed.
        batch_size (`int`), dtype (`str`), device: as the latency is wanted.
        rounds (`int`), seed (`int`): of the interleaved rounds.

    Returns:
        [`LatencyModel`].
    """

    config = model.config
    device = torch.device(device)
    model.eval().to(device)
    prefix, layers = config.num_prefix_tokens, model.base_model.layers
    patches = model.base_model.embeddings.patch_embeddings.num_patches
    full = prefix + patches
    grid = sorted({prefix + max(1, round(patches * q)) for q in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)})
    generator = torch.Generator().manual_seed(seed)
    hidden = {n: torch.randn(batch_size, n, config.hidden_size, generator=generator).to(device) for n in grid}
    image = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, generator=generator)
    image = image.to(device)
    layer = layers[0]

    def reducing(method: str):
        with model.pruning(**probe_settings(method, config.num_hidden_layers)):  # once: switching is not the work
            reducer = reducer_from_config(config, prefix)  # as the model's forward pass builds it

        def run():  # a forward pass builds its TokenReduction from the reducer, then the layer reduces
            reduction = TokenReduction(reducer, prefix, num_hidden_layers=config.num_hidden_layers)
            layer(hidden[full], None, token_reduction=reduction)

        return run

    steps = [TimedStep("model", lambda: model(pixel_values=image))]
    steps += [TimedStep(f"layer@{n}", lambda n=n: layer(hidden[n])) for n in grid]
    steps += [TimedStep(f"reduce:{m}", reducing(m)) for m in methods_]
    with torch.inference_mode(), autocast(device, dtype), model.pruning(pruning_method=None):
        timings = time_interleaved(steps, 1, rounds=rounds, runs=3, warmup=2, seed=seed, device=device)
    check = check_timings(timings)
    if not check.quiet:  # the search would follow a distorted model; the verification re-measures anyway
        warnings.warn(f"latency model: {check.message()}", BusyMachineWarning, stacklevel=2)
    ms = {t.name: 1e3 / t.images_per_s for t in timings}
    layer_ms = [ms[f"layer@{n}"] for n in grid]
    latency = LatencyModel(grid, layer_ms, 0.0, {}, config.num_hidden_layers, prefix, config.hidden_size,
                           config.intermediate_size, batch_size, dtype, str(device), device_name(device),
                           torch.get_num_threads(), rounds, check.quiet)  # fmt: skip
    latency.fixed_ms = max(ms["model"] - config.num_hidden_layers * ms[f"layer@{full}"], 0.0)
    for method in methods_:
        counts = token_counts(model, probe_settings(method, config.num_hidden_layers))[0]
        share = latency.attention_share(full)
        expected = share * latency.layer(counts[0]) + (1 - share) * latency.layer(counts[1])
        latency.overhead_ms[method] = max(ms[f"reduce:{method}"] - expected, 0.0)
    return latency


def probe_settings(method: str, num_layers: int) -> dict:
    """A setting of `method` that reduces at layer 0 only, by about 30 % (its reduction work is what is timed)."""
    if REDUCERS[method].amount_setting == "tome_r":
        return {"pruning_method": method, "tome_r": [16] + [0] * (num_layers - 1)}
    if REDUCERS[method].keep_rate_per_layer:
        return {"pruning_method": method, "keep_rate": [0.7] + [1.0] * (num_layers - 1)}
    return {"pruning_method": method, "keep_rate": 0.7, "prune_layers": [0]}
