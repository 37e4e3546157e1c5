"""The schedule search of `hf-vitprune tune`, as pure functions: the spaces of each method's schedule, the greedy
coordinate search over a latency model, the verification's next step and the Pareto frontier.

No device, model or file here: the search takes `predict_ms` and `top1_of` callables (the latency model of
[`measure.LatencyModel`] and the command's cached calibration top-1), so it is tested under fake clocks and fake logs.
Our design, for this project (issue 30): greedy search over a measured latency model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .reducers import REDUCERS
from .token_reduction import default_prune_layers


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
    groups = [list(g) for g in split_layers(list(range(num_layers)), min(merge_groups, num_layers))]
    if reducer.amount_setting == "tome_r":
        grid = list(range(0, 33, 4))

        def build(values):
            return {"pruning_method": method, "tome_r": [values[g] for g, group in enumerate(groups) for _ in group]}

        return SearchSpace(method, [grid] * len(groups), build, [f"r layers {g[0]}-{g[-1]}" for g in groups])
    if reducer.keep_rate_per_layer:
        grid = keep_rate_grid(reducer)

        def build(values):
            rates = [values[g] for g, group in enumerate(groups) for _ in group]
            return {"pruning_method": method, "keep_rate": rates}

        return SearchSpace(method, [grid] * len(groups), build, [f"keep layers {g[0]}-{g[-1]}" for g in groups])
    layers = sorted(set(search_layers if search_layers else default_search_layers(num_layers)))
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
    if reducer.amount_setting == "tome_r":
        return SearchSpace(method, [list(range(0, 33, 2))],
                           lambda v: {"pruning_method": method, "tome_r": v[0]} if v[0] else {"pruning_method": None},
                           ["r every layer"])  # fmt: skip
    if reducer.keep_rate_per_layer:
        grid = keep_rate_grid(reducer)
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


def keep_rate_grid(reducer) -> list[float]:
    """Keep rates of a method with one per layer (PiToMe): 1 down by 0.025 to its `min_keep_rate`."""
    steps = round((1 - reducer.min_keep_rate) / 0.025)
    return [round(1 - 0.025 * i, 3) for i in range(steps + 1)]


def default_search_layers(num_layers: int) -> list[int]:
    return sorted(set(default_prune_layers(num_layers)) | {max(1, round(num_layers / 6))})


def split_layers(items: list, parts: int) -> list[list]:
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


def setting_key(settings: dict) -> str:
    """The cache key of a setting (its JSON, keys sorted)."""
    return json.dumps(settings, sort_keys=True)


def next_step(path: list[Point], speeds: dict, target_ms: float, reached) -> Point | list[Point]:
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


def pareto(points: list[Point]) -> set[int]:
    """ids of the points no other point beats on both calibration top-1 and predicted speed-up."""
    frontier = set()
    for p in points:
        if not any(q.top1 >= p.top1 and q.predicted_speedup > p.predicted_speedup
                   or q.top1 > p.top1 and q.predicted_speedup >= p.predicted_speedup for q in points):  # fmt: skip
            frontier.add(id(p))
    return frontier


__all__ = ["Point", "SearchSpace", "greedy_search", "next_step", "pareto", "search_space", "setting_key",
           "uniform_space"]  # fmt: skip
