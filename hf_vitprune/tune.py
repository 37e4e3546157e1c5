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

import json
import shlex
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import methods
from .arguments import parse_arguments
from .measure import (
    DTYPES,
    BusyMachineWarning,
    TimedStep,
    check_timings,
    time_interleaved,
    time_pruning_settings,
)
from .reducers import REDUCERS
from .token_reduction import PruningSettings, default_prune_layers, reducer_from_config

TUNE_OUTPUTS = ("setting.json", "pareto.md", "pareto.png", "results.md", "results.json")
"""The files a finished `hf-vitprune tune` writes into its `--output_dir` (besides `model/` and `tune_log.jsonl`)."""

SUPPORTED_MODEL_TYPES = ("vit", "deit", "pruned_vit", "pruned_deit")
"""Checkpoints `tune` takes: ViT / DeiT image classifiers (and PrunedViT ones)."""


class TuneError(RuntimeError):
    """The tuner will not choose: the machine stayed busy while timing, or no schedule reached the target when timed."""


@dataclass
class TuneArguments:
    """Arguments of `hf-vitprune tune` (every one is a command-line flag of the same name)."""

    model_name_or_path: str = field(
        default="facebook/deit-small-patch16-224",
        metadata={"help": "Hub id or local folder of a ViT / DeiT image classifier.", "aliases": ["--model"]},
    )
    dataset_name: str = field(
        default="clane9/imagenet-100",
        metadata={"help": "Hub dataset id or local folder of split folders (train/, val/).", "aliases": ["--dataset"]},
    )
    calibration_split: str = field(default="train", metadata={"help": "Split the search measures top-1 on."})
    calibration_samples: int = field(default=1000, metadata={"help": "Seeded random images of the calibration split."})
    report_split: str | None = field(
        default="validation", metadata={"help": "Split the chosen settings are reported on (none: skip the report)."}
    )
    report_samples: int | None = field(default=None, metadata={"help": "Seeded random subset of the report split."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of a Hub dataset's repository to read."})
    image_column: str = field(default="image", metadata={"help": "Image column of a Hub dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a Hub dataset."})
    class_list: str | None = field(
        default=None, metadata={"help": "Class list mapping data-set classes to the model's outputs (imagenet1k, ...)."}
    )
    methods: list[str] = field(
        default_factory=lambda: ["variance", "evit", "tome", "pitome"],
        metadata={"help": "Methods to search (names in token_reduction.REDUCERS)."},
    )
    target_speedup: float | None = field(
        default=None, metadata={"help": "Measured speed-up over the unpruned model to reach (e.g. 1.5)."}
    )
    target_latency_ms: float | None = field(
        default=None, metadata={"help": "Measured milliseconds per batch to reach instead (at --batch_size)."}
    )
    batch_size: int = field(default=1, metadata={"help": "Batch size the latency is measured at."})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda if available)."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, or bf16 / fp16 autocast."})
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
                positive, an unknown method, or counts below 1.
        """
        if (self.target_speedup is None) == (self.target_latency_ms is None):
            raise ValueError("give exactly one of --target_speedup (e.g. 1.5) and --target_latency_ms.")
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise ValueError(f"--target_speedup must be above 1 (the unpruned model is 1), got {self.target_speedup}.")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise ValueError(f"--target_latency_ms must be positive, got {self.target_latency_ms}.")
        unknown = [m for m in self.methods if m not in REDUCERS]
        if unknown or not self.methods:
            raise ValueError(f"--methods {unknown or '(none)'}: use names of {list(REDUCERS)}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {self.dtype!r}.")
        for name in ("calibration_samples", "batch_size", "rounds", "eval_batch_size", "merge_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.keep_step < 1:
            raise ValueError(f"--keep_step must lie in (0, 1), got {self.keep_step}.")


# ---------------------------------------------------------------------------------------------------------------------
# The latency model
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
        batch_size (`int`), dtype (`str`), device (`str`): what was measured.
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
    own schedule (`TokenReducer._schedule`)."""
    config = model.config
    prefix = config.num_prefix_tokens
    patches = model.base_model.embeddings.patch_embeddings.num_patches
    counts = [[prefix + patches, prefix + patches] for _ in range(config.num_hidden_layers)]
    with model.pruning(**settings):
        reducer = reducer_from_config(config, prefix)
        if reducer is None:
            return [tuple(c) for c in counts]
        for layer_idx, kept, fused in reducer._schedule(patches, config.num_hidden_layers):
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
    from .measure import _autocast
    from .token_reduction import TokenReduction

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
        with model.pruning(**_probe_settings(method, config.num_hidden_layers)):  # once: switching is not the work
            reducer = reducer_from_config(config, prefix)  # as the model's forward pass builds it

        def run():  # a forward pass builds its TokenReduction from the reducer, then the layer reduces
            reduction = TokenReduction(reducer, prefix, num_hidden_layers=config.num_hidden_layers)
            layer(hidden[full], None, token_reduction=reduction)

        return run

    steps = [TimedStep("model", lambda: model(pixel_values=image))]
    steps += [TimedStep(f"layer@{n}", lambda n=n: layer(hidden[n])) for n in grid]
    steps += [TimedStep(f"reduce:{m}", reducing(m)) for m in methods_]
    with torch.inference_mode(), _autocast(device, dtype), model.pruning(pruning_method=None):
        timings = time_interleaved(steps, 1, rounds=rounds, runs=3, warmup=2, seed=seed, device=device)
    check = check_timings(timings)
    if not check.quiet:  # the search would follow a distorted model; the verification re-measures anyway
        warnings.warn(f"latency model: {check.message()}", BusyMachineWarning, stacklevel=2)
    ms = {t.name: 1e3 / t.images_per_s for t in timings}
    layer_ms = [ms[f"layer@{n}"] for n in grid]
    latency = LatencyModel(grid, layer_ms, 0.0, {}, config.num_hidden_layers, prefix, config.hidden_size,
                           config.intermediate_size, batch_size, dtype, str(device))  # fmt: skip
    latency.fixed_ms = max(ms["model"] - config.num_hidden_layers * ms[f"layer@{full}"], 0.0)
    for method in methods_:
        counts = token_counts(model, _probe_settings(method, config.num_hidden_layers))[0]
        share = latency.attention_share(full)
        expected = share * latency.layer(counts[0]) + (1 - share) * latency.layer(counts[1])
        latency.overhead_ms[method] = max(ms[f"reduce:{method}"] - expected, 0.0)
    return latency


def _probe_settings(method: str, num_layers: int) -> dict:
    """A setting of `method` that reduces at layer 0 only, by about 30 % (its reduction work is what is timed)."""
    used = REDUCERS[method].settings_used
    if "tome_r" in used:
        return {"pruning_method": method, "tome_r": [16] + [0] * (num_layers - 1)}
    if REDUCERS[method].keep_rate_per_layer:
        return {"pruning_method": method, "keep_rate": [0.7] + [1.0] * (num_layers - 1)}
    return {"pruning_method": method, "keep_rate": 0.7, "prune_layers": [0]}


# ---------------------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SearchSpace:
    """The coordinates one method's schedule is searched over.

    Attributes:
        method (`str`).
        grids (`list[list]`): per coordinate, its values from no reduction to the strongest.
        build (`Callable[[list], dict]`): the settings of one point (one grid index per coordinate).
        names (`list[str]`): each coordinate's name (for the log).
    """

    method: str
    grids: list[list]
    build: object
    names: list[str]


def search_space(method: str, num_layers: int, search_layers: list[int] | None = None, keep_step: float = 0.1,
                 merge_groups: int = 3) -> SearchSpace:  # fmt: skip
    """The coordinates of `method`'s schedule.

    - Pruning methods (`keep_rate` per entry of `prune_layers`): one coordinate per layer of `search_layers` (default:
      [`default_prune_layers`] plus the layer after a sixth of the depth), its keep rate from 1 down by `keep_step` to
      `keep_step`; a layer at 1 is left out of `prune_layers`.
    - ToMe: `merge_groups` groups of consecutive layers, each one `r` from 0 up by 4 to 32.
    - Methods with a keep rate per layer (PiToMe): the same groups, each one keep rate from 1 down by 0.025 to the
      method's `min_keep_rate`.

    Raises:
        ValueError: for a search layer outside the model.
    """
    reducer = REDUCERS[method]
    groups = [list(g) for g in _split(list(range(num_layers)), min(merge_groups, num_layers))]
    if "tome_r" in reducer.settings_used:
        grid = list(range(0, 33, 4))

        def build(values):
            return {"pruning_method": method, "tome_r": [values[g] for g, group in enumerate(groups) for _ in group]}

        return SearchSpace(method, [grid] * len(groups), build, [f"r layers {g[0]}-{g[-1]}" for g in groups])
    if reducer.keep_rate_per_layer:
        grid = _keep_rate_grid(reducer)

        def build(values):
            rates = [values[g] for g, group in enumerate(groups) for _ in group]
            return {"pruning_method": method, "keep_rate": rates}

        return SearchSpace(method, [grid] * len(groups), build, [f"keep layers {g[0]}-{g[-1]}" for g in groups])
    layers = sorted(set(search_layers if search_layers else _default_search_layers(num_layers)))
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--search_layers {bad} are not layers of this model (0 to {num_layers - 1}).")
    count = int(round(1 / keep_step))
    grid = [round(1 - keep_step * i, 4) for i in range(count) if 1 - keep_step * i > 1e-9]

    def build(values):
        chosen = [(layer, rate) for layer, rate in zip(layers, values) if rate < 1]
        if not chosen:
            return {"pruning_method": None}
        return {"pruning_method": method, "prune_layers": [layer for layer, _ in chosen],
                "keep_rate": [rate for _, rate in chosen]}  # fmt: skip

    return SearchSpace(method, [grid] * len(layers), build, [f"keep layer {i}" for i in layers])


def uniform_space(method: str, num_layers: int, keep_step: float = 0.1) -> SearchSpace:
    """The fixed-schedule family of `method` as a one-coordinate space: the paper's schedule (one keep rate at
    [`default_prune_layers`], from 1 down by `keep_step / 2`), ToMe's (one `r` in every layer, 0 up by 2 to 32), one
    PiToMe keep rate in every layer (1 down by 0.025 to its `min_keep_rate`). The tuner walks it beside the
    per-layer search, so its choice is never a schedule the fixed family beats on calibration top-1 at the target.

    Returns:
        [`SearchSpace`] with one coordinate; its first value is no reduction (`{"pruning_method": None}`).

    Source: the fixed schedules of the paper (Igaue & Aizawa 2025, layers 4, 7, 10) and ToMe (Bolya et al. 2023,
    constant `r`); searched beside the per-layer path by our design (issue 30).
    """
    reducer = REDUCERS[method]
    if "tome_r" in reducer.settings_used:
        return SearchSpace(method, [list(range(0, 33, 2))],
                           lambda v: {"pruning_method": method, "tome_r": v[0]} if v[0] else {"pruning_method": None},
                           ["r every layer"])  # fmt: skip
    if reducer.keep_rate_per_layer:
        grid = _keep_rate_grid(reducer)
        return SearchSpace(method, [grid],
                           lambda v: {"pruning_method": method, "keep_rate": v[0]} if v[0] < 1 else
                           {"pruning_method": None}, ["keep every layer"])  # fmt: skip
    step = keep_step / 2
    grid = [round(1 - step * i, 4) for i in range(int(round(1 / step))) if 1 - step * i > 1e-9]
    layers = default_prune_layers(num_layers)

    def build(values):
        if values[0] >= 1:
            return {"pruning_method": None}
        return {"pruning_method": method, "keep_rate": values[0], "prune_layers": list(layers)}

    return SearchSpace(method, [grid], build, [f"keep at layers {','.join(map(str, layers))}"])


def _keep_rate_grid(reducer) -> list[float]:
    """Keep rates of a method with one per layer (PiToMe): 1 down by 0.025 to its `min_keep_rate`."""
    steps = round((1 - reducer.min_keep_rate) / 0.025)
    return [round(1 - 0.025 * i, 3) for i in range(steps + 1)]


def _default_search_layers(num_layers: int) -> list[int]:
    return sorted(set(default_prune_layers(num_layers)) | {max(1, round(num_layers / 6))})


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        out.append(items[start:end])
        start = end
    return out


@dataclass
class Point:
    """One schedule the search evaluated.

    Attributes:
        method (`str`), indices (`list[int]`): grid index per coordinate; settings (`dict`).
        predicted_ms (`float`), predicted_speedup (`float`), top1 (`float`): calibration top-1 in %.
        on_path (`bool`): a step the greedy search took.
    """

    method: str
    indices: list[int]
    settings: dict
    predicted_ms: float
    predicted_speedup: float
    top1: float
    on_path: bool = False


def greedy_search(space: SearchSpace, predict_ms, top1_of, target_ms: float, unpruned_ms: float,
                  overshoot: int = 1, progress=None) -> tuple[list[Point], list[Point]]:  # fmt: skip
    """Greedy coordinate search: from no reduction, advance the coordinate whose next grid value loses the least
    calibration top-1 per millisecond saved (a step that gains top-1 first; a value that saves no time, e.g. a keep
    rate that still keeps every token, is passed over to the next), until the predicted time reaches
    `target_ms`, then `overshoot` steps more (so the timing that verifies the choice has a point beyond it).

    Args:
        space ([`SearchSpace`]); predict_ms (`Callable[[dict], float]`); top1_of (`Callable[[dict], float]`): top-1 in
            % of the settings (cached by the caller); target_ms, unpruned_ms (`float`); overshoot (`int`);
            progress (*optional*): a tqdm bar advanced per evaluation.

    Returns:
        `(path, evaluated)`: the points taken, in order (the first is no reduction), and every point evaluated.
    """
    indices = [0] * len(space.grids)

    def settings_of(idx: list[int]) -> dict:
        return space.build([grid[i] for grid, i in zip(space.grids, idx)])

    def point(idx: list[int], settings: dict, ms: float) -> Point:
        top1 = top1_of(settings)
        if progress is not None:
            progress.update(1)
        return Point(space.method, list(idx), settings, ms, unpruned_ms / ms, top1)

    start = settings_of(indices)
    current = point(indices, start, predict_ms(start))
    current.on_path = True
    path, evaluated, beyond = [current], [current], 0
    while beyond <= overshoot:
        if current.predicted_ms <= target_ms:
            beyond += 1
            if beyond > overshoot:
                break
        moves = []
        for c, grid in enumerate(space.grids):
            step = indices[c] + 1  # the next value of this coordinate that saves time (a small step may save none)
            while step < len(grid):
                idx = [*indices[:c], step, *indices[c + 1 :]]
                settings = settings_of(idx)
                ms = predict_ms(settings)  # cheap: top-1 is measured only for a step that saves time
                if current.predicted_ms - ms > 0:
                    candidate = point(idx, settings, ms)
                    evaluated.append(candidate)
                    saving = current.predicted_ms - ms
                    moves.append(((current.top1 - candidate.top1) / saving, -saving, c, candidate))
                    break
                step += 1
        if not moves:
            break
        _, _, _, current = min(moves, key=lambda m: m[:3])
        indices = current.indices
        current.on_path = True
        path.append(current)
    return path, evaluated


# ---------------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------------


class TuneLog:
    """`tune_log.jsonl`: the header (what the cached numbers depend on), the latency models (one per batch size and
    device; the one of `batch_size` on `device` is used), every calibration top-1.

    Raises:
        ValueError: when the log was written for another model, data or calibration subset.
    """

    def __init__(self, path: Path, header: dict, batch_size: int, device: str):
        self.path, self.header = path, header
        self.top1: dict[str, float] = {}
        self.latency: dict | None = None
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if lines and lines[0].get("kind") == "header" and lines[0]["header"] != header:
                raise ValueError(
                    f"{path} was written by a tune of {lines[0]['header']}, not {header}: use another --output_dir "
                    "(or delete the log to start over)."
                )
            for line in lines[1:]:
                if line["kind"] == "top1":
                    self.top1[line["key"]] = line["top1"]
                elif line["kind"] == "latency" and (line["latency"]["batch_size"], line["latency"]["device"]) == (
                    batch_size,
                    device,
                ):
                    self.latency = line["latency"]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"kind": "header", "header": header})

    def _append(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def add_top1(self, key: str, top1: float) -> None:
        """Record the calibration top-1 (in %) of the setting [`setting_key`] `key`, in memory and on disk at once."""
        self.top1[key] = top1
        self._append({"kind": "top1", "key": key, "top1": top1})

    def add_latency(self, latency: LatencyModel) -> None:
        """Record the latency model measured for this log's batch size and device (read back on resumption)."""
        self.latency = asdict(latency)
        self._append({"kind": "latency", "latency": self.latency})


def setting_key(settings: dict) -> str:
    """The cache key of a setting (its JSON, keys sorted)."""
    return json.dumps(settings, sort_keys=True)


def load_split(args: TuneArguments, split: str, samples: int | None, model):
    """`(pixel_values (N, 3, H, W), labels (N,), fingerprints set)` of a split, preprocessed as the model expects."""
    import hashlib

    from .data import (
        TransformedImages,
        collate_skipping,
        load_image_data,
        load_preprocessing,
        open_rgb,
        resolve_label_mapping,
    )

    data = load_image_data(args.dataset_name, split, args.image_column, args.label_column, max_samples=samples,
                           seed=args.seed, data_dir=args.data_dir)  # fmt: skip
    label_ids = resolve_label_mapping(data.class_names, model.config.id2label, args.class_list)
    preprocessing = load_preprocessing(args.model_name_or_path, model.config.image_size)
    images = TransformedImages(data, preprocessing.eval_transform(), label_ids)
    loader = torch.utils.data.DataLoader(images, batch_size=args.eval_batch_size, num_workers=args.num_workers,
                                         collate_fn=collate_skipping)  # fmt: skip
    pixels, labels = [], []
    for batch_pixels, batch_labels, _ in tqdm(loader, desc=f"read {split}", unit="batch"):
        pixels.append(batch_pixels)
        labels.append(batch_labels)
    fingerprints = set()
    for row in data.dataset:
        image = row[data.image_column]
        raw = image.get("bytes") if isinstance(image, dict) else None
        if raw is None and isinstance(image, dict) and image.get("path"):
            raw = Path(image["path"]).read_bytes()
        if raw is None:
            raw = open_rgb(image).tobytes()
        fingerprints.add(hashlib.sha1(raw).hexdigest())
    return torch.cat(pixels), torch.cat(labels), fingerprints, data.source


def top1(model, pixels: torch.Tensor, labels: torch.Tensor, settings: dict, batch_size: int, device,
         dtype: str) -> float:  # fmt: skip
    """Top-1 in % of `model` under `settings` on preprocessed images; random pruning seeded (0) per pass."""
    from .measure import _autocast

    correct = 0
    torch.manual_seed(0)
    with torch.inference_mode(), _autocast(device, dtype), model.pruning(**settings):
        for start in range(0, len(labels), batch_size):
            logits = model(pixel_values=pixels[start : start + batch_size].to(device)).logits
            correct += int((logits.argmax(-1).cpu() == labels[start : start + batch_size]).sum())
    return 100 * correct / len(labels)


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
            timings, protocol = time_pruning_settings(
                model, variants, batch_size=args.batch_size, rounds=args.rounds, runs=3 if args.batch_size > 1 else 5,
                warmup=2, latency_runs=0, dtype=args.dtype, device=device, seed=args.seed + attempt,
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
    from .evaluation import check_output_dir
    from .loading import load_pruned_model

    out = check_output_dir(args.output_dir, args.overwrite_output_dir, TUNE_OUTPUTS).parent
    _check_model_type(args.model_name_or_path)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_pruned_model(args.model_name_or_path, pruning_method=None).to(device).eval()
    if args.report_split is not None and args.report_split == args.calibration_split:
        raise ValueError(
            f"--calibration_split and --report_split are both {args.report_split!r}: the split the search tunes on "
            "must be held apart from the one it reports on. Calibrate on train, report on validation (or test)."
        )
    pixels, labels, calibration_ids, calibration_source = load_split(
        args, args.calibration_split, args.calibration_samples, model
    )
    report = None
    if args.report_split is not None:
        report = load_split(args, args.report_split, args.report_samples, model)
        shared = calibration_ids & report[2]
        if shared:
            raise ValueError(
                f"{len(shared)} images of the calibration split {calibration_source} are also in the report split "
                f"{report[3]} (same file contents): the report would not be held apart. Use disjoint splits."
            )
    header = {"model": args.model_name_or_path, "calibration": calibration_source, "images": len(labels),
              "seed": args.seed, "dtype": args.dtype}  # fmt: skip
    log = TuneLog(
        Path(args.tune_log) if args.tune_log else out / "tune_log.jsonl", header, args.batch_size, str(device)
    )
    if latency_model is None and log.latency is not None:
        latency_model = LatencyModel(**log.latency)
    if latency_model is None:
        print(f"Measuring the latency model (batch {args.batch_size}, {args.dtype}, {device})")
        latency_model = measure_latency_model(model, args.methods, args.batch_size, args.dtype, device,
                                              args.rounds, args.seed)  # fmt: skip
        log.add_latency(latency_model)
    unpruned_ms = latency_model.unpruned_ms()
    target_ms = unpruned_ms / args.target_speedup if args.target_speedup else args.target_latency_ms
    best_ms = latency_model.fastest_ms()
    if target_ms < best_ms:
        raise ValueError(
            f"the target ({_target_text(args)}) is out of reach: even keeping one token per layer after the first "
            f"layer's attention would take {best_ms:.1f} ms, a speed-up of {unpruned_ms / best_ms:.2f}x over the "
            f"unpruned {unpruned_ms:.1f} ms at batch {args.batch_size} here. Ask for at most that."
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
    for m in args.methods:
        spaces[m] = search_space(m, num_layers, args.search_layers, args.keep_step, args.merge_groups)
        spaces[f"{m} (fixed)"] = uniform_space(m, num_layers, args.keep_step)
    targets = dict.fromkeys(spaces, target_ms)  # each path's predicted target, corrected after each timing
    speeds, evaluated, chosen = {}, [], {}
    protocol, check, corrections = None, None, 0
    while len(chosen) < len(spaces):
        paths = {}
        with tqdm(desc="tune: calibration top-1 of each schedule", unit="schedule") as bar:
            for name, space in spaces.items():  # cached top-1s: a repeated search costs only its new points
                if name not in chosen:
                    paths[name], points = greedy_search(space, predict, top1_of, targets[name], unpruned_ms,
                                                        progress=bar)  # fmt: skip
                    evaluated += points
        # The greedy path does not depend on the target (only where it stops), so each round walks the same path.
        candidates, optimistic = {}, []
        for name, path in paths.items():
            step = _next_step(path, speeds, targets[name], lambda t: _reached(t, args, unpruned_ms))
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
                ratios = [speeds[k].speedup / p.predicted_speedup
                          for p in paths[name] if (k := setting_key(p.settings)) in speeds]  # fmt: skip
                targets[name] *= min(1.0, sorted(ratios)[len(ratios) // 2]) * 0.98
        else:
            break
    # each method's choice: the better of its per-layer search and its fixed family (a tie: the faster)
    chosen = {
        method: max((chosen[n] for n in (method, f"{method} (fixed)") if n in chosen),
                    key=lambda c: (c[0].top1, c[1].speedup))
        for method in args.methods if method in chosen or f"{method} (fixed)" in chosen
    }  # fmt: skip
    if not chosen:
        measured = ", ".join(f"{k}: {t.speedup:.2f}x" for k, t in speeds.items())
        raise TuneError(
            f"no schedule reached {_target_text(args)} when timed, after {corrections} corrections of the latency "
            f"model ({measured}). Ask for a lower target, or allow more --refinements."
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
            "schedules_evaluated": len(log.top1),
        },  # fmt: skip
    }
    _write_outputs(out, model, result, evaluated, speeds, args, command)
    return result


def _reached(timing, args: TuneArguments, unpruned_ms: float) -> bool:
    """Whether a measured timing meets the target (speed-up, or milliseconds by the unpruned model's prediction)."""
    if args.target_speedup:
        return timing.speedup >= args.target_speedup
    return unpruned_ms / timing.speedup <= args.target_latency_ms


def _next_step(path: list[Point], speeds: dict, target_ms: float, reached) -> Point | list[Point]:
    """What the verification does next on one method's greedy path, given the timings so far.

    The choice is the earliest point of the path (the best calibration top-1 there) whose measured speed-up reaches
    the target, once the point before it has been timed and did not (or it is the first step). So:

    - a timed point reaches the target and the one before it was timed too (and did not), or it is the first step:
      returns that point, the choice;
    - a timed point reaches it but earlier points are untimed (the latency model was pessimistic: the device is faster
      than predicted): returns the two untimed points just before it, to time next;
    - none reaches it: returns the untimed points around the predicted crossing of `target_ms` (one before, the
      crossing, one after), or `[]` when they are all timed (the latency model was optimistic: correct the target).

    Args:
        path (`list[Point]`): the greedy path, its first point no reduction; speeds (`dict[str, InterleavedTiming]`):
            the measured timings by [`setting_key`]; target_ms (`float`): the predicted target of this round;
            reached (`Callable[[InterleavedTiming], bool]`).
    """
    timed = [i for i in range(1, len(path)) if setting_key(path[i].settings) in speeds]
    reaching = [i for i in timed if reached(speeds[setting_key(path[i].settings)])]
    if reaching:
        first = reaching[0]
        if first == 1 or first - 1 in timed:
            return path[first]
        return [p for p in path[max(first - 2, 1) : first] if setting_key(p.settings) not in speeds]
    crossing = next((i for i, p in enumerate(path) if p.predicted_ms <= target_ms), len(path) - 1)
    return [p for p in path[max(crossing - 1, 1) : crossing + 2] if setting_key(p.settings) not in speeds]


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
        return f"{args.target_speedup:g}x speed-up at batch {args.batch_size}, {args.dtype}"
    return f"{args.target_latency_ms:g} ms per batch of {args.batch_size}, {args.dtype}"


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
        temporary = out / f".{name}.partial"
        temporary.write_text(text)
        temporary.replace(out / name)

    chosen = result["chosen"]
    write("setting.json", json.dumps(chosen, indent=2) + "\n")
    with model.pruning(**chosen):
        model.save_pretrained(out / "model")
    unique = {setting_key(p.settings): p for p in evaluated}
    points = sorted(unique.values(), key=lambda p: (p.method, -p.predicted_ms))
    frontier = _pareto(points)
    lines = [f"Every schedule evaluated by `{command or 'hf-vitprune tune'}` ({result['protocol']['calibration']}, "
             f"{result['protocol']['calibration_images']} images; predicted speed-ups from the latency model at batch "
             f"{args.batch_size}, {args.dtype}; measured ones: {result['protocol']['timing']}).", "",
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


def _pareto(points: list[Point]) -> set[int]:
    """ids of the points no other point beats on both calibration top-1 and predicted speed-up."""
    frontier = set()
    for p in points:
        if not any(q.top1 >= p.top1 and q.predicted_speedup > p.predicted_speedup
                   or q.top1 > p.top1 and q.predicted_speedup >= p.predicted_speedup for q in points):  # fmt: skip
            frontier.add(id(p))
    return frontier


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `hf-vitprune tune`: parse `argv` (flags, or one .json / .yaml file) and run."""
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_arguments(TuneArguments, argv, prog="hf-vitprune tune", description=__doc__)
    return run_tune(args, command="hf-vitprune tune " + shlex.join(argv))


__all__ = ["LatencyModel", "SearchSpace", "TuneArguments", "greedy_search", "measure_latency_model", "run_tune",
           "search_space"]  # fmt: skip
