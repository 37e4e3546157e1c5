"""How much of the arithmetic saving of patch pruning turns into time: a benchmark that prints tables.

Random-weight DeiT-S and DeiT-Tiny shapes (12 layers, 224 px, 16 px patches; speed does not depend on the weights).
Every comparison is timed in interleaved rounds by the package's one timer (`hf_vitprune.measure.time_interleaved`):
within a round each variant runs once, in a shuffled order, between two timings of the reference, and speed-ups are
computed within the round, so the machine's drift cancels; medians and min-max over rounds are printed. Tables:

1. speed-up against the GMACs saving, at batch `--batch_size` and at batch 1 (latency median / p90), with the
   realisation (speed-up / GMACs ratio; goals on CPU: >= 1.0 at batch 64, >= 0.9 at batch 1 for keep 0.7 and 0.5);
   the `ceiling` rows keep the same number of tokens with no selection work (the first tokens, no statistic, sort or
   fusion): the best any selection could do on this machine;
2. pruning under SDPA and under eager attention;
3. the pruning overhead: time in the class-attention row, the criterion, the selection, gathers and fusion, as a share
   of a pruning layer's time (torch.utils.benchmark; goal: below 5 %);
4. a training step (forward, backward, AdamW) pruned against unpruned, also with a distillation teacher's forward
   pass added (what `--distill_from` costs);
5. one ViT layer against its token count;
6. `torch.compile` (default mode; on CUDA also CUDA graphs, `reduce-overhead`) against eager;
7. the ONNX export run by onnxruntime (CPU), pruned against the unpruned export, at batch 1 and 32;
8. a torch.profiler table of one pruned forward pass at batch 1 (where the time goes);
9. peak memory at batch `--batch_size`, inference and forward + backward (CPU: resident-set growth of a fresh process;
   CUDA: `torch.cuda.max_memory_allocated`).

The Markdown file given by `--output` is rewritten after every table, so a run that stops keeps what it measured;
beside it, `A.md` → `A.rounds.json` holds table 1's speed-up of every round (what `benchmarks/speed_agreement.py` needs
for intervals on the medians and for testing whether runs differ by more than their rounds do).

Run: `python benchmarks/speed.py --device cpu --output benchmarks/results/benchmark_cpu.md --overwrite`
     `python benchmarks/speed.py --device cpu --shapes deit-tiny --tables speed --no_ceiling --rounds 3 \
      --processes 6 --bracket 1 --threads 1 --seed 0 --output A.md` (and `--seed 10 --output B.md`; then
      `python benchmarks/speed_agreement.py A.md B.md --model deit-tiny`: do two runs agree within 3 %? Each process
      has its own speed-up, so table 1 pools six fresh processes here; `docs/benchmark_cpu.md`, table 1b)
     `python benchmarks/speed.py --device cuda --dtype bf16 --output benchmarks/results/benchmark_gpu.md`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import benchmark as torch_benchmark

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.losses import distillation_loss
from hf_vitprune.measure import (
    DTYPES,
    CompilerUnavailableError,
    TimedStep,
    autocast,
    check_compiler,
    count_gmacs,
    device_name,
    time_interleaved,
    time_pruning_settings,
)
from hf_vitprune.reducers import REDUCERS, AttentionPruner, ReductionState
from hf_vitprune.report import markdown_delimiter
from hf_vitprune.token_ops import CLASS_ATTENTION, KEYS, class_attention_row
from hf_vitprune.token_reduction import TokenReduction, reducer_from_config

SHAPES = {
    "deit-small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "deit-tiny": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
}
TABLES = ("speed", "attention", "overhead", "training", "layer", "compile", "onnx", "profile", "memory")


def build(shape: str, device: torch.device, **pruning) -> PrunedViTForImageClassification:
    """A random-init DeiT of the given shape (12 layers, 224 px, 16 px patches, 1000 classes)."""
    torch.manual_seed(0)
    config = PrunedViTConfig(**SHAPES[shape], num_labels=1000, layer_norm_eps=1e-6, **pruning)
    return PrunedViTForImageClassification(config).to(device).eval()


class KeepFirstTokens(AttentionPruner):
    """Benchmark-only "method": keeps the first `ceil(keep_rate * candidates)` tokens and appends one (the next) in
    place of the fused token, computing no statistic, no criterion, no sort and no fusion. Same token counts as the
    pruning methods with fusion: its speed-up is the ceiling the selection work can reach on this machine."""

    name = "ceiling"
    statistic = None

    def reduce(self, hidden_states, statistic, state, amount, layer_idx):
        tokens = 1 + amount + 1
        kept = (*state.kept_patch_indices, state.patch_ids[:, :amount])
        return hidden_states[:, :tokens].contiguous(), ReductionState(state.patch_ids[:, : amount + 1], None, kept)


@contextlib.contextmanager
def ceiling_method():
    """The benchmark-only "ceiling" method, known to `REDUCERS` for the duration of a `with` block (a run of this
    script), never from import on: other code in the same process sees the package's methods only."""
    REDUCERS[KeepFirstTokens.name] = KeepFirstTokens
    try:
        yield
    finally:
        REDUCERS.pop(KeepFirstTokens.name, None)


def variants(args) -> list[tuple[str, dict]]:
    """`(label, pruning fields)` of every timed setting: unpruned first (the reference), then each method at each keep
    rate with fusion, then ToMe at each `r`, then the ceiling (same token counts, no selection work) at each keep
    rate."""
    out = [("unpruned", {"pruning_method": None})]
    for method in args.methods:
        for keep in args.keep_rates:
            out.append((f"{method} {keep:g}", {"pruning_method": method, "keep_rate": keep, "fuse_pruned": True}))
    out += [(f"tome r={r}", {"pruning_method": "tome", "tome_r": r}) for r in args.tome_r]
    if args.ceiling:
        out += [(f"ceiling {keep:g}", {"pruning_method": "ceiling", "keep_rate": keep}) for keep in args.keep_rates]
    return out


def time_steps(steps: dict, rounds: int, images_per_run: int, warmup: int = 1, seed: int = 0,
               device: torch.device | None = None) -> dict:  # fmt: skip
    """`{name: InterleavedTiming}` of the callables in `steps` (the first is the reference), timed by the package's
    one timer, `hf_vitprune.measure.time_interleaved` (one call per step and round, bracketed by the reference)."""
    timed = [TimedStep(name, step) for name, step in steps.items()]
    timings = time_interleaved(timed, images_per_run, rounds=rounds, runs=1, warmup=warmup, seed=seed,
                               bracket=BRACKET, device=device)  # fmt: skip
    return {t.name: t for t in timings}


BRACKET = 4
"""Steps timed between two timings of the reference in tables 2, 4 and 7 (as in table 1's default `--bracket`)."""


def spread(values: list[float]) -> str:
    """`median (min–max)`."""
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


# 1. Speed-up against the GMACs saving ---------------------------------------------------------------------------------

MEMORY_WORKER = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from speed import build

def status_mib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

shape, fields, batch, training = json.loads(sys.argv[1])
model = build(shape, torch.device("cpu"), **fields)
x = torch.randn(batch, 3, 224, 224)

def step(images):
    if training:  # forward and backward: the activations kept for the backward pass are what pruning shrinks
        model.train()
        model(pixel_values=images).logits.sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            model(pixel_values=images)

step(x[:1])  # one-time allocations (kernels, thread pools, gradient buffers) outside the measurement
resident = status_mib("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)
step(x)
print(status_mib("VmHWM:") - resident)
"""


def peak_memory_mib(shape: str, fields: dict, batch_size: int, training: bool = False) -> float:
    """Peak resident-set growth (MiB) of a fresh process during one inference forward pass (or, with `training`, one
    forward + backward) at `batch_size`, after the model and the input exist and a batch-1 pass has run: the
    activations' peak (CPU, Linux: the VmHWM of /proc/self/status, reset through /proc/self/clear_refs just before).

    Raises:
        subprocess.CalledProcessError: where the worker fails (no /proc, as on macOS or Windows).
    """
    payload = json.dumps([shape, fields, batch_size, training])
    result = subprocess.run([sys.executable, "-c", MEMORY_WORKER, payload, str(Path(__file__).resolve().parent)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return float(result.stdout.strip().splitlines()[-1])


def speed_table(args, device, dtype: str) -> list[str]:
    lines = ["### 1. Speed-up against the GMACs saving", ""]
    header = (f"| model | method | GMACs | GMACs ratio | images/s (batch {args.batch_size}) | speed-up (min–max) | "
              "realisation | batch-1 ms (p90) | batch-1 speed-up | batch-1 realisation |")  # fmt: skip
    protocol = None
    rows = [header, markdown_delimiter(header)]
    for shape in args.shapes:
        if args.processes > 1:
            results, protocol = speed_rows_of_processes(args, shape)
        else:
            results, protocol = speed_rows(args, device, dtype, shape)
        for r in results:
            ratio = results[0]["gmacs"] / r["gmacs"]
            speedup = statistics.median(r["speedups"])
            low, high = min(r["speedups"]), max(r["speedups"])
            row = (f"| {shape} | {r['method']} | {r['gmacs']:.3f} | {ratio:.2f}× | {r['images_per_s']:.1f} | "
                   f"{speedup:.2f}× ({low:.2f}–{high:.2f}) | {speedup / ratio:.2f} | ")  # fmt: skip
            if r["latency_speedups"]:
                latency = statistics.median(r["latency_speedups"])
                row += (f"{r['latency_ms']:.1f} ({r['latency_p90_ms']:.1f}) | {latency:.2f}× | "
                        f"{latency / ratio:.2f} |")  # fmt: skip
            else:
                row += "— | — | — |"
            rows.append(row)
            args.per_round.append({"table": "speed", "model": shape, **r})
        args.speed_protocol = protocol
    return lines + [f"Protocol: {protocol}.", ""] + rows


def gmacs_of(model, settings: list[tuple[str, dict]]) -> list[float]:
    """GMACs (fvcore, `count_gmacs`) of `model` under each `(label, pruning fields)` setting, in order."""
    out = []
    for _, fields in settings:
        with model.pruning(**fields):
            out.append(count_gmacs(model))
    return out


def speed_rows(args, device, dtype: str, shape: str) -> tuple[list[dict], str]:
    """Table 1 of one shape, timed in this process: one dict per variant (`method`, `gmacs`, `images_per_s`,
    `latency_ms`, `latency_p90_ms`, per-round `speedups` and `latency_speedups`), and the protocol line."""
    model = build(shape, device)
    settings = variants(args)
    gmacs = gmacs_of(model, settings)
    timings, protocol = time_pruning_settings(model, settings, batch_size=args.batch_size, rounds=args.rounds,
                                              runs=args.runs, warmup=2, latency_runs=args.latency_runs, dtype=dtype,
                                              device=device, seed=args.seed, bracket=args.bracket)  # fmt: skip
    results = [{"method": name, "gmacs": macs, "images_per_s": t.images_per_s, "latency_ms": t.latency_ms,
                "latency_p90_ms": t.latency_p90_ms, "speedups": t.speedups, "latency_speedups": t.latency_speedups}
               for (name, _), macs, t in zip(settings, gmacs, timings)]  # fmt: skip
    return results, protocol


def speed_rows_of_processes(args, shape: str) -> tuple[list[dict], str]:
    """Table 1 of one shape pooled over `--processes K` fresh Python processes run one after another (this script with
    `--processes 1`, seeds `--seed` ... `--seed + K - 1`, the same timing flags): speed-ups of all K x `--rounds`
    rounds pooled (in process order), images/s, batch-1 ms and p90 the medians of the processes' own. Why: on a
    virtual machine each process meets its own placement of memory (measured: speed-ups of fresh processes differ by up
    to 4 % while each process pins its own median to about ±2 %), which more rounds in one process cannot average out.

    Raises:
        SystemExit: when a process fails (its exit status and command).
    """
    flags = ["--device", args.device, "--shapes", shape, "--tables", "speed", "--processes", "1",
             "--batch_size", str(args.batch_size), "--methods", *args.methods, "--keep_rates",
             *map(str, args.keep_rates), "--tome_r", *map(str, args.tome_r), "--rounds", str(args.rounds),
             "--bracket", str(args.bracket), "--runs", str(args.runs),
             "--latency_runs", str(args.latency_runs)]  # fmt: skip
    flags += [] if args.dtype is None else ["--dtype", args.dtype]
    flags += [] if args.threads is None else ["--threads", str(args.threads)]
    flags += [] if args.ceiling else ["--no_ceiling"]
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for k in range(args.processes):
            output = Path(folder) / f"process{k}.md"
            command = [sys.executable, __file__, *flags, "--seed", str(args.seed + k), "--output", str(output)]
            print(f"table 1, {shape}: process {k + 1} of {args.processes}", file=sys.stderr)
            done = subprocess.run(command, stdout=subprocess.DEVNULL)
            if done.returncode != 0:
                raise SystemExit(
                    f"process {k + 1} of --processes failed (exit {done.returncode}): {shlex.join(command)}"
                )
            runs.append(json.loads(rounds_path(output).read_text()))
    results = []
    for index, first in enumerate(runs[0]["rows"]):
        rows = [record["rows"][index] for record in runs]
        latency = [row["latency_ms"] for row in rows if row["latency_ms"] is not None]
        latency_p90 = [row["latency_p90_ms"] for row in rows if row["latency_p90_ms"] is not None]
        results.append({"method": first["method"], "gmacs": first["gmacs"],
                        "images_per_s": statistics.median(row["images_per_s"] for row in rows),
                        "latency_ms": statistics.median(latency) if latency else None,
                        "latency_p90_ms": statistics.median(latency_p90) if latency_p90 else None,
                        "speedups": [v for row in rows for v in row["speedups"]],
                        "latency_speedups": [v for row in rows for v in row["latency_speedups"]],
                        "rounds_per_process": [len(row["speedups"]) for row in rows]})  # fmt: skip
    one = runs[0]["protocol"].replace(f"(variants in shuffled order, seed {args.seed})", "(variants in shuffled order)")
    protocol = (f"{one}; all of it in each of {args.processes} fresh processes one after another (shuffling seeds "
                f"{args.seed}-{args.seed + args.processes - 1}), the speed-ups' median and min-max over all their "
                "rounds pooled, images/s and batch-1 ms (p90) the medians of the processes' own")  # fmt: skip
    return results, protocol


# 9. Peak memory -------------------------------------------------------------------------------------------------------


def cuda_peak_memory_mib(shape: str, fields: dict, batch_size: int, training: bool, device, dtype: str) -> float:
    """`torch.cuda.max_memory_allocated` growth (MiB) over one forward (+ backward with `training`) at `batch_size`."""
    model = build(shape, device, **fields)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    with autocast(device, dtype):
        if training:
            model.train()
            model(pixel_values=x).logits.float().sum().backward()
        else:
            with torch.inference_mode():
                model(pixel_values=x)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - start) / 2**20


def memory_table(args, device, dtype: str) -> list[str]:
    how = ("resident-set growth of a fresh process (VmHWM after a reset, minus VmRSS before; Linux)"
           if device.type == "cpu" else "torch.cuda.max_memory_allocated growth")  # fmt: skip
    rows = ["### 9. Peak memory", "", f"Batch {args.batch_size}, {dtype}; {how}. Inference: one forward pass under "
            "inference_mode; training: one forward + backward (no optimizer state).", "",
            "| model | method | inference peak (MiB) | training peak (MiB) | training peak / unpruned |",
            "|---|---|---|---|---|"]  # fmt: skip
    for shape in args.shapes:
        reference = None
        for name, fields in [v for v in variants(args) if not v[0].startswith("ceiling")]:
            if device.type == "cpu":
                inference, training = (peak_memory_mib(shape, fields, args.batch_size, t) for t in (False, True))
            else:
                inference, training = (cuda_peak_memory_mib(shape, fields, args.batch_size, t, device, dtype)
                                       for t in (False, True))  # fmt: skip
            reference = reference or training
            rows.append(f"| {shape} | {name} | {inference:.1f} | {training:.1f} | {training / reference:.2f} |")
    return rows


# 2. SDPA against eager ------------------------------------------------------------------------------------------------


def attention_table(args, device, dtype: str) -> list[str]:
    rows = ["### 2. Pruning under SDPA and under eager attention", "",
            f"Interleaved rounds ({args.rounds}); batch {args.batch_size}.", "",
            "| model | method | SDPA images/s | eager images/s | SDPA / eager (min–max) |",
            "|---|---|---|---|---|"]  # fmt: skip
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)
    for shape in args.shapes:
        for name, fields in variants(args)[: 1 + len(args.keep_rates)]:
            models = {impl: build(shape, device, **fields) for impl in ("sdpa", "eager")}
            models["eager"].set_attn_implementation("eager")
            steps = {impl: (lambda m=models[impl]: m(pixel_values=x)) for impl in ("eager", "sdpa")}  # eager: reference
            with torch.inference_mode(), autocast(device, dtype):
                timed = time_steps(steps, args.rounds, args.batch_size, seed=args.seed, device=device)
            sdpa, eager = timed["sdpa"].images_per_s, timed["eager"].images_per_s
            rows.append(f"| {shape} | {name} | {sdpa:.1f} | {eager:.1f} | {spread(timed['sdpa'].speedups)} |")
    return rows


# 3. Pruning overhead --------------------------------------------------------------------------------------------------


def _side_statistic(kind: str | None, query: torch.Tensor, key: torch.Tensor, scaling: float):
    """The statistic a reducer asks for, computed beside the layer's SDPA as the pruning layer does."""
    if kind is None:
        return None
    if kind == CLASS_ATTENTION:
        return class_attention_row(query, key, scaling, 1)
    if kind == KEYS:
        return key.float().mean(dim=1)
    raise ValueError(f"the overhead table times statistics computed beside SDPA, not {kind!r}")


def pruning_overhead(model, batch_size: int, dtype: str, device: torch.device) -> dict:
    """Time of the first pruning layer and of its pruning work alone, with torch.utils.benchmark (median).

    The pruning work is what the layer adds to an ordinary ViT layer: the attention statistic (class-attention row),
    the criterion, the selection, the gathers and the fusion (the reducer's `reduce`), timed on the very tensors the
    layer sees.
    """
    config = model.config
    reducer = reducer_from_config(config, 1)
    layer_idx = reducer.reducing_layers(model.vit.embeddings.patch_embeddings.num_patches, config.num_hidden_layers)[0]
    layer = model.vit.layers[layer_idx]
    pixel_values = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        hidden = model.vit.embeddings(pixel_values)
        for earlier in model.vit.layers[:layer_idx]:  # no reduction before the first pruning layer
            hidden = earlier(hidden)
        normed = layer.layernorm_before(hidden)
        shape = (*normed.shape[:-1], -1, layer.attention.head_dim)
        query = layer.attention.q_proj(normed).view(shape).transpose(1, 2)
        key = layer.attention.k_proj(normed).view(shape).transpose(1, 2)
        state = ReductionState.start(hidden, 1)
        amount = reducer.amount(layer_idx, hidden.shape[1] - 1)

        def whole_layer():
            layer(hidden, None, token_reduction=TokenReduction(reducer, 1))

        def pruning_work():
            statistic = _side_statistic(reducer.statistic, query, key, layer.attention.scaling)
            reducer.reduce(hidden, statistic, state, amount, layer_idx)

        times = {}
        for name, fn in (("layer", whole_layer), ("pruning", pruning_work)):
            timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            times[name] = timer.blocked_autorange(min_run_time=1.0).median
    return {"layer_ms": 1e3 * times["layer"], "pruning_ms": 1e3 * times["pruning"],
            "share": times["pruning"] / times["layer"]}  # fmt: skip


def overhead_table(args, device, dtype: str) -> list[str]:
    rows = ["### 3. Pruning overhead in the first pruning layer", "",
            "Statistic + criterion + selection + gathers + fusion, against the whole layer (torch.utils.benchmark, "
            "median), at the benchmark batch and at batch 1.", "",
            "| model | method | batch | pruning layer (ms) | pruning work (ms) | share |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for shape in args.shapes:
        for name, fields in variants(args)[1 : 1 + len(args.methods) * len(args.keep_rates)]:
            model = build(shape, device, **fields)
            for batch_size in (args.batch_size, 1):
                o = pruning_overhead(model, batch_size, dtype, device)
                rows.append(f"| {shape} | {name} | {batch_size} | {o['layer_ms']:.2f} | {o['pruning_ms']:.2f} | "
                            f"{100 * o['share']:.1f} % |")  # fmt: skip
    return rows


# 4. Training step -----------------------------------------------------------------------------------------------------


def training_table(args, device, dtype: str) -> list[str]:
    batch_size = args.train_batch_size or (32 if device.type == "cpu" else 128)
    rows = ["### 4. Training step: forward + backward + AdamW, no data loading", "",
            f"Batch {batch_size}, {dtype}; one step per variant and round, {args.rounds} interleaved rounds after 2 "
            "warm-up steps each; speed-up per round against unpruned.", "",
            "The `+ teacher` rows add what `hf-vitprune train --distill_from` adds to a step: the frozen unpruned "
            "model's forward pass under `no_grad` and DeiT's soft distillation loss (alpha 0.5, tau 1; "
            "`hf_vitprune.losses.distillation_loss`), with a teacher of the student's own shape (a larger teacher "
            "costs more).", "",
            "| model | method | training images/s | speed-up (min–max) |", "|---|---|---|---|"]  # fmt: skip
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    for shape in args.shapes:
        settings = [v for v in variants(args) if v[1].get("keep_rate") in (None, *args.keep_rates)][
            : 1 + len(args.keep_rates)
        ]
        teacher = build(shape, device, pruning_method=None).requires_grad_(False)
        settings += [(f"{name} + teacher", fields) for name, fields in settings[1:]]
        steps = {}
        for name, fields in settings:
            model = build(shape, device, **fields).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
            taught = teacher if name.endswith("+ teacher") else None

            def step(model=model, optimizer=optimizer, taught=taught):
                with autocast(device, dtype):
                    logits = model(pixel_values=x).logits
                    if taught is not None:
                        with torch.no_grad():
                            teacher_logits = taught(pixel_values=x).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                if taught is not None:
                    loss = 0.5 * loss + 0.5 * distillation_loss(logits, teacher_logits, 1.0).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            steps[name] = step
        timed = time_steps(steps, args.rounds, batch_size, warmup=2, seed=args.seed, device=device)
        for name, _ in settings:
            rows.append(f"| {shape} | {name} | {timed[name].images_per_s:.1f} | {spread(timed[name].speedups)} |")
    return rows


# 5. One layer against its token count ---------------------------------------------------------------------------------


def layer_table(args, device, dtype: str) -> list[str]:
    rows = ["### 5. One ViT layer (no pruning) against its token count", "",
            "| model | tokens | layer time (ms) | time per token (µs) |", "|---|---|---|---|"]  # fmt: skip
    for shape in args.shapes:
        layer = build(shape, device, pruning_method=None).vit.layers[0]
        for tokens in args.layer_tokens:
            hidden = torch.randn(args.batch_size, tokens, SHAPES[shape]["hidden_size"], device=device)
            with torch.inference_mode(), autocast(device, dtype):
                timer = torch_benchmark.Timer(stmt="layer(hidden)", globals={"layer": layer, "hidden": hidden},
                                              num_threads=torch.get_num_threads())  # fmt: skip
                ms = 1e3 * timer.blocked_autorange(min_run_time=1.0).median
            rows.append(f"| {shape} | {tokens} | {ms:.2f} | {1e3 * ms / tokens:.1f} |")
    return rows


# 6. torch.compile -----------------------------------------------------------------------------------------------------


def compile_table(args, device, dtype: str) -> list[str]:
    modes = ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    rows = ["### 6. torch.compile against eager", "",
            "Compiled variants timed in interleaved rounds against the compiled unpruned model, at batch "
            f"{args.batch_size} and at batch 1; `over eager` divides by the same variant's eager images/s (batch-1 "
            "latency) from table 1's protocol (timed here, interleaved too). Realisation = speed-up / GMACs ratio.", "",
            "| model | method | mode | compiled images/s | speed-up (min–max) | realisation | over eager | "
            "batch-1 ms (p90) | batch-1 speed-up | batch-1 realisation | batch-1 over eager |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    try:
        check_compiler(device)
    except CompilerUnavailableError as error:
        return rows[:2] + [f"Not measured: {error}"]
    for shape in args.shapes:
        model = build(shape, device)
        settings = variants(args)[: 1 + len(args.keep_rates)]
        gmacs = gmacs_of(model, settings)
        ratios = [gmacs[0] / macs for macs in gmacs]
        eager, _ = time_pruning_settings(model, settings, batch_size=args.batch_size, rounds=args.rounds, runs=1,
                                    latency_runs=args.latency_runs, dtype=dtype, device=device, seed=args.seed,
                                    bracket=args.bracket)  # fmt: skip
        for mode in modes:
            torch._dynamo.reset()
            compiled, _ = time_pruning_settings(model, settings, batch_size=args.batch_size, rounds=args.rounds, runs=1,
                                           latency_runs=args.latency_runs, dtype=dtype, device=device,
                                           compile_mode=mode, seed=args.seed, bracket=args.bracket)  # fmt: skip
            for (name, _), ratio, c, e in zip(settings, ratios, compiled, eager):
                row = (f"| {shape} | {name} | {mode} | {c.images_per_s:.1f} | "
                       f"{c.speedup:.2f}× ({c.speedup_min:.2f}–{c.speedup_max:.2f}) | {c.speedup / ratio:.2f} | "
                       f"{c.images_per_s / e.images_per_s:.2f}× |")  # fmt: skip
                if args.latency_runs:
                    row += (f" {c.latency_ms:.1f} ({c.latency_p90_ms:.1f}) | {c.latency_speedup:.2f}× | "
                            f"{c.latency_speedup / ratio:.2f} | {e.latency_ms / c.latency_ms:.2f}× |")  # fmt: skip
                else:
                    row += " — | — | — | — |"
                rows.append(row)
    return rows


# 7. ONNX Runtime ------------------------------------------------------------------------------------------------------


def onnx_table(args, device, dtype: str) -> list[str]:
    import onnxruntime

    from hf_vitprune.export import export_model

    rows = ["### 7. The ONNX export under onnxruntime (CPU)", "",
            "`hf-vitprune export` files (dynamo exporter, opset 18, dynamic batch), onnxruntime "
            f"{onnxruntime.__version__} CPUExecutionProvider, {args.rounds} interleaved rounds; speed-up per round "
            "against the unpruned export.",
            "", "| model | method | batch | images/s | speed-up (min–max) | realisation |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    for shape in args.shapes:
        sessions, gmacs = {}, {}
        tome = [v for v in variants(args) if v[1]["pruning_method"] == "tome"][:1]
        for name, fields in variants(args)[: 1 + len(args.keep_rates)] + tome:
            model = build(shape, torch.device("cpu"), **fields)
            gmacs[name] = count_gmacs(model)
            path = folder / f"{shape}-{name.replace(' ', '-')}.onnx"
            with contextlib.redirect_stdout(sys.stderr):
                export_model(model, path, "onnx")
            sessions[name] = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch_size in (1, 32):
            x = torch.randn(batch_size, 3, 224, 224).numpy()
            repeat = 8 if batch_size == 1 else 1  # batch 1 is short: 8 runs per timed call

            def run(session, x=x, repeat=repeat):
                for _ in range(repeat):
                    session.run(None, {"pixel_values": x})

            steps = {name: (lambda s=session: run(s)) for name, session in sessions.items()}  # unpruned first
            timed = time_steps(steps, args.rounds, repeat * batch_size, seed=args.seed)
            for name in sessions:
                t = timed[name]
                rows.append(f"| {shape} | {name} | {batch_size} | {t.images_per_s:.1f} | {spread(t.speedups)} | "
                            f"{t.speedup * gmacs[name] / gmacs['unpruned']:.2f} |")  # fmt: skip
    return rows


# 8. Profile -----------------------------------------------------------------------------------------------------------


def profile_table(args, device, dtype: str) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    shape = args.shapes[-1]
    name, fields = variants(args)[1]
    model = build(shape, device, **fields)
    x = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        for _ in range(5):
            model(pixel_values=x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                model(pixel_values=x)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return [f"### 8. Where the time goes: {shape}, {name}, batch 1 (torch.profiler, 20 passes, self CPU time)", "",
            "```", table.strip(), "```"]  # fmt: skip


def parse_args(argv: list[str] | None):
    """The benchmark's flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 64 on CPU, 256 on CUDA")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["variance", "medad", "evit"])
    parser.add_argument("--keep_rates", nargs="+", type=float, default=[0.7, 0.5])
    parser.add_argument("--tome_r", nargs="*", type=int, default=[13])
    parser.add_argument(
        "--no_ceiling",
        dest="ceiling",
        action="store_false",
        help="leave out the ceiling rows (same token counts, no selection work)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's, one per core); onnxruntime and the memory table's fresh "
        "processes keep their defaults",
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="table 1: time it in this many fresh processes one after another (--rounds each, seeds --seed, "
        "--seed + 1, ...) and pool their rounds: averages out what differs between processes (runs to compare: give "
        "them seeds at least this far apart, or their shuffles repeat)",
    )
    parser.add_argument(
        "--bracket",
        type=int,
        default=4,
        help="table 1: most variants timed between two timings of the unpruned reference (1: around every variant)",
    )
    parser.add_argument("--runs", type=int, default=2, help="timed batch passes per variant and round")
    parser.add_argument("--latency_runs", type=int, default=10, help="timed batch-1 passes per variant and round")
    parser.add_argument("--train_batch_size", type=int, default=None, help="training-step batch (default: 32 CPU)")
    parser.add_argument("--layer_tokens", nargs="*", type=int, default=[197, 178, 139, 99])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    parser.add_argument("--output", default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Run the chosen tables and print (and with `--output` write) the Markdown."""
    with ceiling_method():
        return _main(argv)


def _main(argv: list[str] | None) -> str:
    args = parse_args(argv)
    args.per_round = []  # table 1's speed-ups of every round, written beside --output (rounds_path)
    for path in [args.output, rounds_path(args.output)] if args.output else []:
        if Path(path).exists() and not args.overwrite:
            raise SystemExit(f"{path} already exists: pass --overwrite to replace it, or another --output.")
    if args.processes < 1:
        raise SystemExit(f"--processes must be at least 1, got {args.processes}.")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    builders = {"speed": speed_table, "attention": attention_table, "overhead": overhead_table,
                "training": training_table, "layer": layer_table, "compile": compile_table, "onnx": onnx_table,
                "profile": profile_table, "memory": memory_table}  # fmt: skip
    lines = [f"Machine: {device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}, {dtype}.",
             "Random-weight models (speed does not depend on the weights).", ""]  # fmt: skip
    for table in args.tables:
        if table == "onnx" and device.type != "cpu":
            continue
        table_lines = builders[table](args, device, dtype) + [""]
        lines += table_lines
        print("\n".join(table_lines), file=sys.stderr)  # progress
        if args.output:  # what is measured so far survives a run that stops later
            Path(args.output).write_text("\n".join(lines + [f"(incomplete: stopped after table {table!r})"]) + "\n")
            write_rounds(args, lines[0], command=None)
    command = f"python benchmarks/speed.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    text = "\n".join(lines + [f"Command: `{command}`"])
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
        write_rounds(args, lines[0], command)
    return text


def rounds_path(output: str) -> Path:
    """Where the per-round speed-ups of a run written to `output` go: `A.md` → `A.rounds.json`."""
    return Path(output).with_suffix(".rounds.json")


def write_rounds(args, machine: str, command: str | None) -> None:
    """Write table 1's per-round speed-ups (batch `--batch_size` and batch 1, in the order measured) beside
    `--output`, for `benchmarks/speed_agreement.py` (intervals on the medians, a test of whether two runs differ by more
    than their rounds do), with the machine line, the command and table 1's protocol line. `command` is `None` while
    the run is still going."""
    path = rounds_path(args.output)
    if not args.per_round:  # table 1 not (yet) run: no file; one from an earlier run goes, as --overwrite asked
        path.unlink(missing_ok=True)
        return
    record = {"machine": machine, "command": command, "batch_size": args.batch_size,
              "protocol": args.speed_protocol, "rows": args.per_round}  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
