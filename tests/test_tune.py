"""`hf-vitprune tune`: the latency model's arithmetic, the greedy search under a known latency model (a fake clock),
the whole command on a tiny model with its outputs, its resumption, and its refusals."""

import json

import pytest
import torch
from conftest import make_image_folder, tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune import measure as measure_module
from hf_vitprune import tune as tune_module
from hf_vitprune.cli import main as cli_main
from hf_vitprune.measure import InterleavedTiming, LatencyModel, TimingCheck
from hf_vitprune.schedule_search import SearchSpace, greedy_search, search_space, setting_key, uniform_space
from hf_vitprune.token_reduction import default_prune_layers
from hf_vitprune.tune import TuneArguments, run_tune

# a 4-layer model, 1 prefix token + 16 patches; one layer costs 1 ms per token, the rest of the model 3 ms
LATENCY = LatencyModel(tokens=[2, 5, 9, 17], layer_ms=[2.0, 5.0, 9.0, 17.0], fixed_ms=3.0,
                       overhead_ms={"variance": 0.5, "tome": 1.0, "pitome": 1.0, "evit": 0.5}, num_layers=4,
                       num_prefix_tokens=1, hidden_size=32, intermediate_size=64)  # fmt: skip


def test_the_latency_model_by_hand():
    assert LATENCY.layer(7) == 7.0 and LATENCY.layer(1) == 1.0 and LATENCY.layer(21) == 21.0
    share = LATENCY.attention_share(17)  # (4*17*32*32 + 2*17*17*32) / (... + 2*17*32*64)
    assert share == pytest.approx((4 * 17 * 32 * 32 + 2 * 17 * 17 * 32) / (4 * 17 * 32 * 32 + 2 * 17 * 17 * 32
                                                                          + 2 * 17 * 32 * 64))  # fmt: skip
    assert LATENCY.unpruned_ms() == 3.0 + 4 * 17.0
    # layer 1 reduces 17 -> 9 tokens: its attention on 17, its MLP on 9, plus the method's work at 17 of 17 tokens
    counts = [(17, 17), (17, 9), (9, 9), (9, 9)]
    expected = 3.0 + 17 + share * 17 + (1 - share) * 9 + 0.5 + 9 + 9
    assert LATENCY.predict(counts, "variance") == pytest.approx(expected)
    assert LATENCY.fastest_ms() == pytest.approx(3.0 + share * 17 + (1 - share) * 2 + 3 * 2)


def test_greedy_search_takes_the_cheapest_steps_under_a_known_clock():
    """Two coordinates: lowering the first saves 10 ms per step and costs 1 point, the second saves 10 ms and costs 3
    points, so the search lowers the first until it runs out (two steps), then the second; (2, 1) is the first point
    at the 75 ms target, and it takes one step past it (overshoot 1)."""
    space = SearchSpace("variance", [[0, 1, 2], [0, 1, 2]], lambda v: {"a": v[0], "b": v[1]}, ["a", "b"])
    evaluations = []

    def predict(settings):
        return 100 - 10 * settings["a"] - 10 * settings["b"]

    def top1(settings):
        evaluations.append(dict(settings))
        return 90 - 1 * settings["a"] - 3 * settings["b"]

    path, evaluated = greedy_search(space, predict, top1, target_ms=75, unpruned_ms=100)
    assert [(p.settings["a"], p.settings["b"]) for p in path] == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert [p.predicted_speedup for p in path] == [1.0, 100 / 90, 100 / 80, 100 / 70, 100 / 60]
    assert path[3].top1 == 90 - 2 - 3 and all(p.on_path for p in path)
    assert len(evaluated) == 1 + 2 + 2 + 1 + 1  # start, two moves at each of two steps, then one left at the others


def test_search_spaces_of_each_kind():
    pruner = search_space("variance", 12)
    assert pruner.names == ["keep layer 2", "keep layer 3", "keep layer 6", "keep layer 9"]
    assert pruner.grids[0][:3] == [1.0, 0.9, 0.8] and pruner.grids[0][-1] == 0.1
    assert pruner.build([1.0, 0.7, 1.0, 0.5]) == {"pruning_method": "variance", "prune_layers": [3, 9],
                                                  "keep_rate": [0.7, 0.5]}  # fmt: skip
    assert pruner.build([1.0] * 4) == {"pruning_method": None}
    tome = search_space("tome", 12)
    assert tome.build([2, 4, 6])["tome_r"] == [2] * 4 + [4] * 4 + [6] * 4
    pitome = search_space("pitome", 12, merge_groups=2)
    assert pitome.grids[0][0] == 1.0 and pitome.grids[0][-1] == 0.5
    assert pitome.build([0.9, 1.0])["keep_rate"] == [0.9] * 6 + [1.0] * 6
    with pytest.raises(ValueError, match="not layers of this model"):
        search_space("variance", 12, search_layers=[12])


def _setup(tmp_path, overlap=False):
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(num_labels=2, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1},
                                                  pruning_method=None))  # fmt: skip
    PrunedViTForImageClassification(config).save_pretrained(tmp_path / "model")
    make_image_folder(tmp_path / "data" / "train", {"a": 6, "b": 6})
    make_image_folder(tmp_path / "data" / "val", {"a": 3, "b": 3}, size=(40, 30) if overlap else (36, 36))
    return tmp_path / "model", tmp_path / "data"


def _args(model, data, out, **changes):
    values = dict(model_name_or_path=str(model), dataset_name=str(data), calibration_split="train",
                  calibration_samples=12, report_split="val", pruning_method=["variance", "tome"], target_speedup=1.3,
                  throughput_batch_size=2, rounds=1, num_workers=0, eval_batch_size=4, output_dir=str(out))  # fmt: skip
    return TuneArguments(**{**values, **changes})


@pytest.fixture
def fake_timing(monkeypatch):
    """The verification's timer answers with the latency model's own predictions (a quiet machine)."""

    def timed(model, variants, **kwargs):
        timings = []
        unpruned = LATENCY.unpruned_ms()
        for name, settings in variants:
            ms = LATENCY.predict(measure_module.token_counts(model, settings), settings.get("pruning_method"))
            speedup = unpruned / ms
            timings.append(InterleavedTiming(name, 1e3 / ms, 1e3 / ms, 1e3 / ms, speedup, speedup, speedup))
        return timings, "fake clock"

    monkeypatch.setattr(tune_module, "time_pruning_settings", timed)


def test_tune_chooses_writes_and_resumes(tmp_path, fake_timing, monkeypatch):
    model, data = _setup(tmp_path)
    out = tmp_path / "tune"
    result = run_tune(_args(model, data, out), command="hf-vitprune tune ...", latency_model=LATENCY)
    chosen = json.loads((out / "setting.json").read_text())
    assert chosen == result["chosen"] and chosen["pruning_method"] in ("variance", "tome")
    for name in ("pareto.md", "pareto.png", "results.md", "results.json", "tune_log.jsonl", "model/config.json"):
        assert (out / name).exists(), name
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["unpruned"]["measured_speedup"] == 1.0
    for method in ("variance", "tome"):
        if method in rows:  # its measured (here: predicted) speed-up reached the target
            assert rows[method]["measured_speedup"] >= 1.3 and "report_top1" in rows[method]
    # the chosen setting loads as a model setting, and the saved model carries it
    loaded = PrunedViTForImageClassification.from_pretrained(model, **chosen)
    assert loaded.config.pruning_method == chosen["pruning_method"]
    saved = PrunedViTForImageClassification.from_pretrained(out / "model")
    assert saved.config.pruning_method == chosen["pruning_method"]
    # resumed from its log: no schedule is evaluated again
    calls = []
    original = tune_module.top1
    monkeypatch.setattr(tune_module, "top1", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    again = run_tune(_args(model, data, out, overwrite_output_dir=True), latency_model=LATENCY)
    assert again["chosen"] == chosen
    assert calls == [row["settings"] for row in again["rows"]]  # the report passes only
    # a finished tune is not overwritten without asking
    with pytest.raises(FileExistsError):
        run_tune(_args(model, data, out), latency_model=LATENCY)


def test_tune_refuses_to_choose_on_a_busy_machine(tmp_path, fake_timing, monkeypatch):
    model, data = _setup(tmp_path)
    busy = TimingCheck(False, 1.0, 0.0, None, ["two timings of the reference in a row differed by 100 %"])
    monkeypatch.setattr(tune_module, "check_timings", lambda timings: busy)
    with pytest.raises(tune_module.TuneError, match="stayed busy through 2 timings"):
        run_tune(_args(model, data, tmp_path / "tune", remeasure=1), latency_model=LATENCY)
    assert not (tmp_path / "tune" / "setting.json").exists()


def test_tune_bad_input(tmp_path, capsys):
    model, data = _setup(tmp_path, overlap=True)
    with pytest.raises(ValueError, match=r"out of reach: .* a speed-up of \d+\.\d\dx"):
        run_tune(_args(model, data, tmp_path / "a", target_speedup=50.0, report_split=None), latency_model=LATENCY)
    with pytest.raises(ValueError, match="must be held apart"):
        run_tune(_args(model, data, tmp_path / "b", report_split="train"), latency_model=LATENCY)
    with pytest.raises(ValueError, match="also in the report split"):  # val holds copies of train's images
        run_tune(_args(model, data, tmp_path / "c"), latency_model=LATENCY)
    with pytest.raises(ValueError, match="exactly one of --target_speedup"):
        _args(model, data, tmp_path / "d", target_latency_ms=5.0)
    with pytest.raises(ValueError, match="must be above 1"):
        _args(model, data, tmp_path / "d", target_speedup=0.8)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert cli_main(["tune", "--model_name_or_path", str(bert), "--dataset_name", str(data), "--target_speedup",
                     "1.5", "--output_dir", str(tmp_path / "e")]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "'bert' model" in error and "['vit', 'deit', 'pruned_vit', 'pruned_deit']" in error


def test_a_step_that_saves_no_time_is_passed_over():
    """A keep rate that still keeps every token saves nothing: the search goes on to the next value of that
    coordinate instead of stopping."""
    space = SearchSpace("variance", [[1.0, 0.9, 0.8, 0.7]], lambda v: {"keep": v[0]}, ["keep"])

    def predict(settings):  # 0.9 keeps every token; 0.8 and below save 20 ms per step
        return 100 if settings["keep"] >= 0.9 else 100 - 20 * round((0.9 - settings["keep"]) * 10)

    path, evaluated = greedy_search(space, predict, lambda s: 80.0, target_ms=70, unpruned_ms=100, overshoot=0)
    assert [p.settings["keep"] for p in path] == [1.0, 0.8, 0.7]
    assert [p.settings["keep"] for p in evaluated] == [1.0, 0.8, 0.7]  # no top-1 pass for 0.9, which saves nothing


def test_an_optimistic_latency_model_is_corrected_by_the_timing(tmp_path, monkeypatch):
    """The device delivers 85 % of every predicted speed-up: the first verification finds no schedule at the target,
    and the search goes further by the measured / predicted ratio until one reaches it when timed."""
    model, data = _setup(tmp_path)
    calls = []

    def timed(model_, variants, **kwargs):
        calls.append(len(variants))
        unpruned, timings = LATENCY.unpruned_ms(), []
        for name, settings in variants:
            ms = LATENCY.predict(measure_module.token_counts(model_, settings), settings.get("pruning_method"))
            speedup = 0.85 * unpruned / ms if settings.get("pruning_method") else 1.0
            timings.append(InterleavedTiming(name, 1.0, 1.0, 1.0, speedup, speedup, speedup, rates=[1.0, 1.0]))
        return timings, "fake clock"

    monkeypatch.setattr(tune_module, "time_pruning_settings", timed)
    result = run_tune(_args(model, data, tmp_path / "tune", pruning_method=["variance"]), latency_model=LATENCY)
    assert len(calls) >= 2  # timed again after the correction
    row = result["rows"][1]
    assert row["measured_speedup"] >= 1.3 and row["predicted_speedup"] >= 1.3 / 0.85 - 1e-9
    with pytest.raises(tune_module.TuneError, match="after 0 corrections"):
        run_tune(
            _args(model, data, tmp_path / "again", pruning_method=["variance"], refinements=0), latency_model=LATENCY
        )


def test_a_pessimistic_latency_model_times_earlier_points(tmp_path, monkeypatch):
    """The device delivers 130 % of every predicted speed-up: the points around the predicted crossing all reach the
    target when timed, so the verification walks back along the path to the first that falls short, and chooses the
    one after it (the best calibration top-1 that reaches the target when measured)."""
    model, data = _setup(tmp_path)
    measured = {}

    def timed(model_, variants, **kwargs):
        unpruned, timings = LATENCY.unpruned_ms(), []
        for name, settings in variants:
            ms = LATENCY.predict(measure_module.token_counts(model_, settings), settings.get("pruning_method"))
            speedup = 1.3 * unpruned / ms if settings.get("pruning_method") else 1.0
            measured[name] = speedup
            timings.append(InterleavedTiming(name, 1.0, 1.0, 1.0, speedup, speedup, speedup, rates=[1.0, 1.0]))
        return timings, "fake clock"

    def predicted_ms(model_, settings):
        return LATENCY.predict(measure_module.token_counts(model_, settings), settings.get("pruning_method"))

    monkeypatch.setattr(tune_module, "time_pruning_settings", timed)
    # a known calibration top-1 (the predicted time), so the test can walk the search's path itself
    monkeypatch.setattr(
        tune_module, "top1", lambda model_, _pixels, _labels, settings, *_: predicted_ms(model_, settings)
    )
    result = run_tune(_args(model, data, tmp_path / "tune", pruning_method=["variance"], target_speedup=1.4),
                      latency_model=LATENCY)  # fmt: skip
    row = result["rows"][1]
    assert row["measured_speedup"] >= 1.4 and row["predicted_speedup"] < 1.4  # chosen before the predicted crossing
    # on the search's own path (per-layer or the fixed family), the point before the choice was timed and fell short
    tiny = PrunedViTForImageClassification.from_pretrained(model)
    layers = tiny.config.num_hidden_layers
    for space in (search_space("variance", layers), uniform_space("variance", layers)):
        path, _ = greedy_search(space, lambda s: predicted_ms(tiny, s), lambda s: predicted_ms(tiny, s), target_ms=0.0,
                                unpruned_ms=LATENCY.unpruned_ms(), overshoot=0)  # fmt: skip
        keys = [setting_key(p.settings) for p in path]
        if setting_key(row["settings"]) in keys:
            at = keys.index(setting_key(row["settings"]))
            assert at > 1 and measured[keys[at - 1]] < 1.4, [measured.get(k) for k in keys]
            break
    else:
        raise AssertionError(f"the choice {row['settings']} is on neither path")


def test_the_fixed_family_is_searched_beside_the_per_layer_schedules(tmp_path, fake_timing, monkeypatch):
    """Where the paper's fixed schedule (one keep rate at its layers) has the better calibration top-1, the tuner
    chooses it: a per-layer search never returns a schedule the fixed family beats at the target."""
    model, data = _setup(tmp_path)

    def known_top1(model_, _pixels, _labels, settings, *_):  # per-layer keep rates lose 10 points
        ms = LATENCY.predict(measure_module.token_counts(model_, settings), settings.get("pruning_method"))
        return ms - (10 if isinstance(settings.get("keep_rate"), list) else 0)

    monkeypatch.setattr(tune_module, "top1", known_top1)
    result = run_tune(_args(model, data, tmp_path / "tune", pruning_method=["variance"]), latency_model=LATENCY)
    chosen = result["chosen"]
    assert chosen["pruning_method"] == "variance" and isinstance(chosen["keep_rate"], float)
    assert chosen["prune_layers"] == list(default_prune_layers(4)) and result["rows"][1]["measured_speedup"] >= 1.3


def test_the_latency_model_times_a_reduction_without_switching_the_setting(monkeypatch):
    """A reducing step's timed pass is the layer's own work (its TokenReduction and the reduced layer): the setting is
    switched once per method, outside the timing, as a forward pass never switches it. Under a fake clock the
    method's work is its step's time less the layer at its tokens (attention on those entering, MLP on those left)."""
    torch.manual_seed(0)
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs(pruning_method=None))).eval()
    switches, timed_switches, reduced = [], [], []
    pruning = model.pruning

    def counting_pruning(**settings):
        switches.append(settings)
        return pruning(**settings)

    monkeypatch.setattr(model, "pruning", counting_pruning)
    layer = model.base_model.layers[0]
    layer_forward = layer.forward

    def watched(hidden_states, *args, **kwargs):
        out = layer_forward(hidden_states, *args, **kwargs)
        if kwargs.get("token_reduction") is not None:
            reduced.append((hidden_states.shape[1], out.shape[1]))
        return out

    monkeypatch.setattr(layer, "forward", watched)
    ms = {"model": 20.0, "layer@2": 1.0, "layer@3": 1.5, "layer@5": 2.0, "layer@9": 3.0, "layer@13": 4.0,
          "layer@17": 5.0, "reduce:variance": 5.5, "reduce:tome": 6.0}  # fmt: skip

    def fake_time_interleaved(steps, images_per_run, **kwargs):
        for step in steps:
            before = len(switches)
            step.run()
            timed_switches.append(len(switches) - before)
        return [InterleavedTiming(s.name, 1e3 / ms[s.name], 0, 0, 1.0, 1.0, 1.0) for s in steps]

    monkeypatch.setattr(measure_module, "time_interleaved", fake_time_interleaved)
    latency = measure_module.measure_latency_model(model, ["variance", "tome"], batch_size=2, dtype="fp32",
                                                device="cpu", rounds=1)  # fmt: skip
    assert timed_switches == [0] * len(ms)  # no timed pass switched the setting
    # variance keeps ceil(0.7 * 16) = 12 patches + the fused token + the class token; ToMe merges r = 8 (half of 16)
    assert reduced == [(17, 1 + 12 + 1), (17, 1 + 16 - 8)]
    assert latency.tokens == [2, 3, 5, 9, 13, 17] and latency.fixed_ms == pytest.approx(20.0 - 4 * 5.0)
    share = latency.attention_share(17)
    assert latency.overhead_ms["variance"] == pytest.approx(5.5 - (share * 5.0 + (1 - share) * 4.25))
    assert latency.overhead_ms["tome"] == pytest.approx(6.0 - (share * 5.0 + (1 - share) * 3.0))
