"""How much of the arithmetic saving of patch pruning turns into time: a benchmark that prints tables.

For DeiT-S and DeiT-Tiny shapes (random weights: speed does not depend on them) at keep rates 0.9 / 0.7 / 0.5:

1. GMACs ratio to the unpruned model (unpruned / pruned, the ideal speed-up), measured speed-up, and their quotient
   (goal: >= 0.95 at batch 64 on CPU, batch 256 in bf16 on a GPU);
2. the same pruning computed under SDPA and under eager attention (how EViT / DynamicViT implement it);
3. the pruning overhead: time in the class-attention row, the criterion, top-k, gather and fusion, as a share of a
   pruning layer's time (goal: below 5 %);
4. on CUDA, `torch.compile` and CUDA-graph (`mode="reduce-overhead"`) variants, with static keep rates.

Run: `python benchmarks/speed.py --device cpu --batch_size 64 --output docs/benchmark_cpu.md`
     `python benchmarks/speed.py --device cuda --batch_size 256 --dtype bf16 --compile --output docs/benchmark_gpu.md`
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from dataclasses import dataclass, field

import torch
from torch.utils import benchmark as torch_benchmark

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.measure import DTYPES, count_gmacs, measure_throughput, measure_training_throughput
from hf_vitprune.token_reduction import (
    CLASS_ATTENTION,
    KEYS,
    ReductionState,
    TokenReduction,
    class_attention_row,
    reducer_from_config,
)

SHAPES = {
    "deit-small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "deit-tiny": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
}


def build(shape: str, device: torch.device, **pruning) -> PrunedViTForImageClassification:
    """A random-init DeiT of the given shape (12 layers, 224 px, 16 px patches, 1000 classes)."""
    torch.manual_seed(0)
    config = PrunedViTConfig(**SHAPES[shape], num_labels=1000, layer_norm_eps=1e-6, **pruning)
    return PrunedViTForImageClassification(config).to(device).eval()


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
    the criterion, the sort, the gathers and the fusion (the reducer's `reduce`), timed on the very tensors the layer
    sees.
    """
    config = model.config
    reducer = reducer_from_config(config, 1)
    layer_idx = reducer.reducing_layers(model.vit.embeddings.patch_embeddings.num_patches, config.num_hidden_layers)[0]
    layer = model.vit.layers[layer_idx]
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, 224, 224, generator=generator).to(device)
    autocast = torch.autocast(device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
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
            reducer.reduce(hidden, statistic, state, amount)

        times = {}
        for name, fn in (("layer", whole_layer), ("pruning", pruning_work)):
            timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            times[name] = timer.blocked_autorange(min_run_time=1.0).median
    return {"layer_ms": 1e3 * times["layer"], "pruning_ms": 1e3 * times["pruning"],
            "share": times["pruning"] / times["layer"]}  # fmt: skip


def layer_time_by_tokens(shape: str, batch_size: int, dtype: str, device: torch.device, token_counts) -> list:
    """Median time of one ViT layer (no pruning) at each token count, with torch.utils.benchmark.

    Shows how far the time of a layer follows its MACs: a layer's MACs grow a little faster than linearly with the
    token count (attention is quadratic), so time per token should fall slowly as tokens are removed.
    """
    model = build(shape, device, pruning_method=None)
    layer = model.vit.layers[0]
    rows = []
    autocast = torch.autocast(device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] else contextlib.nullcontext()
    for tokens in token_counts:
        hidden = torch.randn(batch_size, tokens, model.config.hidden_size, device=device)
        with torch.inference_mode(), autocast:
            timer = torch_benchmark.Timer(stmt="layer(hidden)", globals={"layer": layer, "hidden": hidden},
                                          num_threads=torch.get_num_threads())  # fmt: skip
            rows.append((shape, tokens, 1e3 * timer.blocked_autorange(min_run_time=1.0).median))
    return rows


def parse_args(argv: list[str] | None):
    """The benchmark's flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 64 on CPU, 256 on CUDA")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--keep_rates", nargs="+", type=float, default=[0.9, 0.7, 0.5])
    parser.add_argument("--method", default="variance", help="criterion timed (default: the paper's variance)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (and CUDA graphs on CUDA)")
    parser.add_argument("--train_batch_size", type=int, default=None, help="training-step batch (default: 32 CPU)")
    parser.add_argument("--train_runs", type=int, default=5)
    parser.add_argument(
        "--layer_tokens", nargs="*", type=int, default=[197, 196, 192, 178, 160, 139, 128, 99],
        help="token counts for the one-layer timing table (none: skip it)",
    )  # fmt: skip
    parser.add_argument("--output", default=None, help="also write the tables to this Markdown file")
    return parser.parse_args(argv)


@dataclass
class Tables:
    """The benchmark's measurements, one list of rows per table, and the protocol lines."""

    speed: list = field(default_factory=list)
    attention: list = field(default_factory=list)
    overhead: list = field(default_factory=list)
    compile: list = field(default_factory=list)
    train: list = field(default_factory=list)
    protocol: str | None = None
    train_protocol: str | None = None


def measure_shape(shape: str, args, device, timing: dict, train_timing: dict, tables: Tables) -> None:
    """Every table's rows for one model shape: the unpruned reference, then each keep rate of `args.method` (with
    fusion), under SDPA and eager attention, its pruning overhead, its training step and (with `--compile`) compiled."""
    model = build(shape, device, pruning_method=None)
    base = measure_throughput(model, **timing)
    base_gmacs = count_gmacs(model)
    tables.protocol = base.describe()
    tables.speed.append((shape, "—", base_gmacs, 1.0, base.images_per_s, 1.0, None))
    base_train = measure_training_throughput(model, **train_timing)
    tables.train_protocol = base_train.describe()
    tables.train.append((shape, "—", base_train.images_per_s, 1.0))
    compile_modes = (["default"] + (["reduce-overhead"] if device.type == "cuda" else [])) if args.compile else []
    for mode in compile_modes:
        compiled = measure_throughput(model, **timing, compile_mode=mode).images_per_s
        tables.compile.append((shape, "—", mode, compiled, base.images_per_s))
    for keep_rate in args.keep_rates:
        model.set_pruning(pruning_method=args.method, keep_rate=keep_rate, fuse_pruned=True)
        gmacs = count_gmacs(model)
        sdpa = measure_throughput(model, **timing)
        ratio, speedup = base_gmacs / gmacs, sdpa.images_per_s / base.images_per_s
        tables.speed.append((shape, keep_rate, gmacs, ratio, sdpa.images_per_s, speedup, speedup / ratio))
        model.set_attn_implementation("eager")
        eager = measure_throughput(model, **timing)
        model.set_attn_implementation("sdpa")
        tables.attention.append((shape, keep_rate, sdpa.images_per_s, eager.images_per_s))
        overhead = pruning_overhead(model, timing["batch_size"], timing["dtype"], device)
        tables.overhead.append((shape, keep_rate, overhead))
        train = measure_training_throughput(model, **train_timing)
        tables.train.append((shape, keep_rate, train.images_per_s, train.images_per_s / base_train.images_per_s))
        for mode in compile_modes:
            result = measure_throughput(model, **timing, compile_mode=mode)
            tables.compile.append((shape, keep_rate, mode, result.images_per_s, sdpa.images_per_s))


def render(tables: Tables, args, device, timing: dict, command: str) -> str:
    """The Markdown text of every table."""
    lines = [f"Protocol: {tables.protocol}.", "", "### Speed-up against the GMACs saving", ""]
    lines.append(
        "| model | keep rate | GMACs | GMACs ratio (ideal speed-up) | images/s | speed-up | speed-up / GMACs ratio |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for shape, keep, gmacs, ratio, ips, speedup, quotient in tables.speed:
        q = "—" if quotient is None else f"{quotient:.2f}"
        lines.append(f"| {shape} | {keep} | {gmacs:.3f} | {ratio:.2f}× | {ips:.1f} | {speedup:.2f}× | {q} |")
    lines += ["", f"### Pruning under SDPA and under eager attention ({args.method}, fusion)", ""]
    lines.append("| model | keep rate | SDPA images/s | eager images/s | SDPA / eager |")
    lines.append("|---|---|---|---|---|")
    for shape, keep, sdpa_ips, eager_ips in tables.attention:
        lines.append(f"| {shape} | {keep} | {sdpa_ips:.1f} | {eager_ips:.1f} | {sdpa_ips / eager_ips:.2f}× |")
    lines += ["", f"### Pruning overhead in the first pruning layer ({args.method}, fusion)", ""]
    lines.append("Class-attention row + criterion + sort + gathers + fusion, against the whole layer")
    lines.append("(torch.utils.benchmark, median).")
    lines += ["", "| model | keep rate | pruning layer (ms) | pruning work (ms) | share |", "|---|---|---|---|---|"]
    for shape, keep, o in tables.overhead:
        lines.append(f"| {shape} | {keep} | {o['layer_ms']:.2f} | {o['pruning_ms']:.2f} | {100 * o['share']:.1f} % |")
    lines += ["", f"### Training step ({args.method}, fusion): forward + backward + AdamW step, no data loading", ""]
    lines += [f"Protocol: {tables.train_protocol}.", "", "| model | keep rate | training images/s | speed-up |"]
    lines.append("|---|---|---|---|")
    for shape, keep, ips, speedup in tables.train:
        lines.append(f"| {shape} | {keep} | {ips:.1f} | {speedup:.2f}× |")
    if args.layer_tokens:
        lines += ["", "### One ViT layer (no pruning) against its token count", ""]
        lines += ["| model | tokens | layer time (ms) | time per token (µs) |", "|---|---|---|---|"]
        for shape in args.shapes:
            batch_size, dtype = timing["batch_size"], timing["dtype"]
            for name, tokens, ms in layer_time_by_tokens(shape, batch_size, dtype, device, args.layer_tokens):
                lines.append(f"| {name} | {tokens} | {ms:.2f} | {1e3 * ms / tokens:.1f} |")
    if tables.compile:
        lines += ["", "### torch.compile" + (" and CUDA graphs" if device.type == "cuda" else ""), ""]
        lines += ["| model | keep rate | mode | images/s | over uncompiled |", "|---|---|---|---|---|"]
        for shape, keep, mode, ips, plain in tables.compile:
            lines.append(f"| {shape} | {keep} | {mode} | {ips:.1f} | {ips / plain:.2f}× |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run every table and print (and with `--output` write) the Markdown."""
    args = parse_args(argv)
    device = torch.device(args.device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    timing = dict(batch_size=batch_size, dtype=dtype, warmup=args.warmup, runs=args.runs, device=device)
    train_timing = dict(batch_size=args.train_batch_size or (32 if device.type == "cpu" else 128), dtype=dtype,
                        warmup=2, runs=args.train_runs, device=device)  # fmt: skip
    tables = Tables()
    for shape in args.shapes:
        measure_shape(shape, args, device, timing, train_timing, tables)
    command = f"python benchmarks/speed.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    text = render(tables, args, device, timing, command)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
