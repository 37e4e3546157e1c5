"""GMACs against the paper's Table 1 (fvcore) and the throughput protocol."""

import json
import statistics

import pytest
import torch
from conftest import tiny_config_kwargs

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune.measure import TimedStep, count_gmacs, time_interleaved, time_pruning_settings


@pytest.fixture(scope="module")
def deit_small():
    """A random-init DeiT-S-shaped model (hidden 384, 6 heads, 12 layers, 224 px, 16 px patches)."""
    config = PrunedViTConfig(
        hidden_size=384, num_attention_heads=6, intermediate_size=1536, num_labels=1000, layer_norm_eps=1e-6
    )
    return PrunedViTForImageClassification(config).eval()


def test_unpruned_deit_small_reads_4_61_gmacs(deit_small):
    deit_small.set_pruning(pruning_method=None)
    assert count_gmacs(deit_small) == pytest.approx(4.61, abs=0.005)


# arXiv:2507.19175, Table 1 (DeiT-S, 224 px, pruning at blocks 4, 7, 10): GFLOPs (fvcore) without / with fusion
@pytest.mark.parametrize(
    "keep_rate, without_fusion, with_fusion",
    [(0.9, 4.00, 4.03), (0.8, 3.45, 3.48), (0.7, 3.00, 3.04), (0.6, 2.61, 2.64), (0.5, 2.29, 2.31),
     (0.4, 2.03, 2.05), (0.3, 1.80, 1.82)],
)  # fmt: skip
def test_pruned_deit_small_matches_table_1(deit_small, keep_rate, without_fusion, with_fusion):
    deit_small.set_pruning(pruning_method="variance", keep_rate=keep_rate, fuse_pruned=False)
    assert count_gmacs(deit_small) == pytest.approx(without_fusion, abs=0.03)
    deit_small.set_pruning(fuse_pruned=True)
    assert count_gmacs(deit_small) == pytest.approx(with_fusion, abs=0.03)


def test_gmacs_do_not_depend_on_the_attention_implementation_and_restore_training_mode():
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs()))
    model.train()
    sdpa = count_gmacs(model)
    assert model.training
    model.set_attn_implementation("eager")
    assert count_gmacs(model) == pytest.approx(sdpa, rel=1e-9)


def test_timing_pruning_settings_reports_its_protocol():
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs()))
    settings = [("unpruned", {"pruning_method": None}), ("keep 0.5", {"keep_rate": 0.5})]
    timings, protocol = time_pruning_settings(model, settings, batch_size=4, rounds=1, runs=3, warmup=1, latency_runs=0)
    assert all(t.images_per_s_min <= t.images_per_s <= t.images_per_s_max and t.images_per_s > 0 for t in timings)
    assert protocol.startswith("batch 4, 32 px, fp32, sdpa attention, cpu")
    assert f"{torch.get_num_threads()} threads, torch {torch.__version__}" in protocol
    assert "1 interleaved rounds" in protocol and "of 3 timed batch passes per variant after 1 warm-up" in protocol
    assert timings[0].latency_ms is None  # latency_runs=0: not measured
    bf16, protocol = time_pruning_settings(model, settings, batch_size=2, dtype="bf16", rounds=1, runs=1, warmup=0)
    assert ", bf16, " in protocol
    with pytest.raises(ValueError, match="dtype"):
        time_pruning_settings(model, settings, dtype="int8")


def test_the_timer_times_plain_callables_against_the_first(monkeypatch):
    """`time_interleaved` over callables (what speed.py's tables time): on a fake clock, each step's speed-up is its
    exact cost ratio to the reference, images/s count `images_per_run`, each step's context is entered around its
    passes, and warm-up calls are not timed."""
    import types

    from hf_vitprune import measure

    clock = {"now": 0.0}
    calls, entered = [], []

    def step(name, cost):
        def run():
            calls.append(name)
            clock["now"] += cost

        return run

    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    class Context:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            entered.append(self.name)

        def __exit__(self, *exc):
            return False

    steps = [TimedStep(name, step(name, cost), context=lambda n=name: Context(n))
             for name, cost in (("reference", 2.0), ("half", 1.0), ("quarter", 0.5))]  # fmt: skip
    timings = time_interleaved(steps, images_per_run=8, rounds=2, runs=1, warmup=3, bracket=1)
    assert [t.name for t in timings] == ["reference", "half", "quarter"]
    assert [t.speedup for t in timings] == [1.0, 2.0, 4.0] and timings[2].speedups == [4.0, 4.0]
    assert [t.images_per_s for t in timings] == [4.0, 8.0, 16.0]
    assert calls.count("half") == 3 + 2 and calls.count("reference") == 3 + 2 * 3  # warm-up, then bracketing
    assert entered.count("half") == 1 + 2  # once for the warm-up, once per round
    with pytest.raises(ValueError, match="at least one round"):
        time_interleaved(steps, rounds=0)
    with pytest.raises(ValueError, match="warmup and latency_runs"):
        time_interleaved(steps, warmup=-1)


def test_interleaved_timing_cancels_drift_inside_a_long_round(monkeypatch):
    """A machine that slows down steadily while a round of many variants runs (linear drift, on a fake clock): with
    the reference bracketing every group of variants and interpolated to each variant's place, every speed-up (batch
    and batch-1) is exactly the true cost ratio, for the default group size, one variant per group and one group per
    round."""
    import types

    from hf_vitprune import measure

    clock = {"now": 0.0, "calls": 0}
    cost = {None: 1.0, **{keep: keep for keep in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)}}  # seconds, before drift

    class DriftingForward:  # stands in for LogitsOnly: one call advances the clock by the setting's cost x drift
        def __init__(self, model, interpolate_pos_encoding=False):
            self.model = model

        def __call__(self, x):
            config = self.model.config
            clock["calls"] += 1
            clock["now"] += cost[config.keep_rate if config.pruning_method else None] * (1 + 0.02 * clock["calls"])

    monkeypatch.setattr(measure, "LogitsOnly", DriftingForward)
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs())).eval()
    settings = [("unpruned", {"pruning_method": None})] + [
        (f"keep {keep}", {"pruning_method": "variance", "keep_rate": keep}) for keep in cost if keep is not None
    ]

    def errors(timings):
        keeps = [fields["keep_rate"] for _, fields in settings[1:]]
        return [abs(value * keep - 1) for t, keep in zip(timings[1:], keeps)
                for value in (t.speedup_min, t.speedup_max, t.latency_speedup)]  # fmt: skip

    for bracket, group in ((4, 4), (1, 1), (100, 7)):
        timings, protocol = measure.time_pruning_settings(
            model, settings, batch_size=2, rounds=3, runs=1, warmup=0, latency_runs=1, bracket=bracket
        )
        assert max(errors(timings)) < 1e-9, (bracket, errors(timings))
        expected = "every variant" if group == 1 else f"every group of at most {group} variants"
        assert f"unpruned timed before and after {expected}, speed-ups per round" in protocol

    with pytest.raises(ValueError, match="bracket must be at least 1"):
        measure.time_pruning_settings(model, settings, rounds=1, bracket=0)


def test_interleaved_timing_reports_every_variant_against_the_first():
    torch.manual_seed(0)
    model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs())).eval()
    settings = [("unpruned", {"pruning_method": None}), ("keep 0.5", {"keep_rate": 0.5}),
                ("tome", {"pruning_method": "tome", "tome_r": 3})]  # fmt: skip
    timings, protocol = time_pruning_settings(model, settings, batch_size=4, rounds=3, runs=2, warmup=1, latency_runs=3)
    assert [t.name for t in timings] == ["unpruned", "keep 0.5", "tome"]
    reference = timings[0]
    assert reference.speedup == reference.speedup_min == reference.speedup_max == 1.0
    assert reference.latency_speedup == 1.0
    for t in timings:
        assert t.images_per_s_min <= t.images_per_s <= t.images_per_s_max and t.images_per_s > 0
        assert t.speedup_min <= t.speedup <= t.speedup_max
        assert 0 < t.latency_ms <= t.latency_p90_ms
        # every round's speed-up is kept (the reference: one 1.0 per group of variants; here one group per round)
        assert len(t.speedups) == len(t.latency_speedups) == 3
        assert statistics.median(t.speedups) == t.speedup and statistics.median(t.latency_speedups) == t.latency_speedup
        assert (min(t.speedups), max(t.speedups)) == (t.speedup_min, t.speedup_max)
    assert reference.speedups == reference.latency_speedups == [1.0, 1.0, 1.0]
    assert "3 interleaved rounds" in protocol and "against unpruned interpolated between" in protocol
    assert (model.config.pruning_method, model.config.keep_rate) == ("variance", 0.5)  # the model's own setting
    with pytest.raises(ValueError, match="at least one round"):
        time_pruning_settings(model, settings, rounds=0)


@pytest.mark.slow
def test_speed_benchmark_runs_its_tables(tmp_path, speed_benchmark):
    speed = speed_benchmark
    argv = ["--shapes", "deit-tiny", "--methods", "variance", "--keep_rates", "0.5", "--tome_r", "--rounds", "1",
            "--runs", "1", "--latency_runs", "2", "--batch_size", "2", "--layer_tokens", "99", "--tables", "speed",
            "overhead", "training", "layer", "profile", "memory", "--train_batch_size", "2", "--bracket", "1",
            "--threads", "1", "--output", str(tmp_path / "b.md")]  # fmt: skip
    calls = []  # the "+ teacher" step computes the distillation loss from the teacher's logits
    speed.distillation_loss = lambda student, teacher, tau: calls.append(teacher.shape) or student.sum(-1) * 0
    text = speed.main(argv)  # --threads 1: the fixture restores the process's thread count
    assert calls and set(calls) == {torch.Size([2, 1000])}
    training = text.split("### 4. Training step")[1].split("###")[0]
    assert [line.split(" | ")[1] for line in training.splitlines() if line.startswith("| deit-tiny")] == [
        "unpruned", "variance 0.5", "variance 0.5 + teacher"]  # fmt: skip
    assert "| deit-tiny | unpruned | 1.258 | 1.00× |" in text
    assert "| deit-tiny | variance 0.5 | 0.632 | 1.99× |" in text  # the GMACs of keep 0.5 with fusion
    assert "aten::" in text and (tmp_path / "b.md").read_text().strip() == text.strip()
    assert text.startswith("Machine: cpu") and ", 1 threads," in text.splitlines()[0]  # --threads
    assert "unpruned timed before and after every variant," in text  # --bracket 1
    rounds = json.loads((tmp_path / "b.rounds.json").read_text())  # table 1's per-round speed-ups, beside --output
    assert rounds["command"].startswith("python benchmarks/speed.py --shapes deit-tiny") and rounds["batch_size"] == 2
    assert [(r["model"], r["method"], r["speedups"][0]) for r in rounds["rows"]][0] == ("deit-tiny", "unpruned", 1.0)
    variance = rounds["rows"][1]
    assert variance["method"] == "variance 0.5" and len(variance["speedups"]) == len(variance["latency_speedups"]) == 1
    assert f"| {variance['speedups'][0]:.2f}× ({variance['speedups'][0]:.2f}–" in text  # one round: its own median
    memory = [line for line in text.splitlines() if line.startswith("| deit-tiny | ") and line.endswith(" |")][-2:]
    assert [line.split(" | ")[1] for line in memory] == ["unpruned", "variance 0.5"]  # the memory table's rows
    inference, training = (float(memory[0].split(" | ")[i]) for i in (2, 3))
    assert training > max(inference, 0)  # the backward pass keeps activations: a larger peak


@pytest.mark.slow
def test_speed_benchmark_pools_fresh_processes(tmp_path, speed_benchmark):
    """`--processes 2`: table 1 timed in two fresh processes (seeds 5 and 6), their rounds pooled in the table, the
    per-round file and the protocol line; a failing process stops the run with its command."""
    speed = speed_benchmark
    argv = ["--shapes", "deit-tiny", "--methods", "variance", "--keep_rates", "0.5", "0.7", "--tome_r", "--no_ceiling",
            "--rounds", "1", "--runs", "1", "--latency_runs", "1", "--batch_size", "2", "--tables", "speed",
            "--threads", "1", "--bracket", "1", "--processes", "2", "--seed", "5", "--output",
            str(tmp_path / "b.md")]  # fmt: skip
    text = speed.main(argv)
    protocol = next(line for line in text.splitlines() if line.startswith("Protocol: "))  # written by the processes
    assert "; all of it in each of 2 fresh processes one after another (shuffling seeds 5-6)" in protocol
    assert "(variants in shuffled order) of 1 timed batch passes" in protocol  # no single seed named
    assert ", 1 threads, " in protocol and "unpruned timed before and after every variant," in protocol  # flags reached
    rows = json.loads((tmp_path / "b.rounds.json").read_text())["rows"]
    assert [(row["method"], row["rounds_per_process"], len(row["latency_speedups"])) for row in rows] == [
        ("unpruned", [2, 2], 4), ("variance 0.5", [1, 1], 2), ("variance 0.7", [1, 1], 2)]  # fmt: skip
    # (the reference: 1.0 per group of variants, two groups per round with --bracket 1)
    pooled = rows[1]["speedups"]
    low, high = sorted(pooled)
    assert f"| deit-tiny | variance 0.5 | 0.632 | 1.99× | {rows[1]['images_per_s']:.1f} | " in text
    assert f" | {(low + high) / 2:.2f}× ({low:.2f}–{high:.2f}) | " in text  # the median of the two processes' rounds
    with pytest.raises(SystemExit, match="--processes must be at least 1"):
        speed.main([*argv[:-2], "--processes", "0", "--output", str(tmp_path / "c.md")])
    args = speed.parse_args(argv)
    args.batch_size, args.dtype = 2, "bf16x"  # a dtype the fresh process's flags reject
    with pytest.raises(SystemExit, match="process 1 of --processes failed .*--dtype bf16x"):
        speed.speed_rows_of_processes(args, "deit-tiny")


def test_compile_where_the_compiler_cannot_run(tmp_path, monkeypatch, capsys):
    """`--compile` on a machine where torch.compile fails stops with the reason before timing; eager is timed
    instead only when asked (`--compile_fallback_eager`), and the protocol says so."""
    from conftest import make_image_folder

    from hf_vitprune.cli import main
    from hf_vitprune.measure import CompilerUnavailableError, check_compiler

    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(num_labels=2, id2label={0: "cat", 1: "dog"}))
    PrunedViTForImageClassification(config).save_pretrained(tmp_path / "model")
    make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2})

    def no_compiler(*args, **kwargs):  # what inductor does on a machine without a C++ compiler
        raise RuntimeError("InductorError: CppCompileError: no working C++ compiler found in PATH")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.raises(CompilerUnavailableError, match="torch.compile cannot run on cpu here .*no working C"):
        check_compiler("cpu")
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--methods",
            "variance", "--keep_rates", "0.5", "--fusion", "on", "--num_workers", "0", "--throughput_batch_size",
            "2", "--throughput_rounds", "1", "--throughput_runs", "1", "--latency_runs", "0", "--compile"]  # fmt: skip
    assert main([*argv, "--output_dir", str(tmp_path / "stopped")]) == 2
    assert "pass --compile_fallback_eager" in capsys.readouterr().err
    assert not (tmp_path / "stopped" / "results.json").exists()
    assert main([*argv, "--compile_fallback_eager", "--output_dir", str(tmp_path / "eager")]) == 0
    protocol = json.loads((tmp_path / "eager" / "results.json").read_text())["protocol"]["throughput"]
    assert "torch.compile could not run here: eager" in protocol and "torch.compile(mode" not in protocol


def test_speed_benchmark_never_replaces_an_output_file(tmp_path, speed_benchmark):
    speed = speed_benchmark
    (tmp_path / "b.md").write_text("a user's notes")
    with pytest.raises(SystemExit, match="already exists: pass --overwrite"):
        speed.main(["--tables", "layer", "--output", str(tmp_path / "b.md")])
    assert (tmp_path / "b.md").read_text() == "a user's notes"
    (tmp_path / "c.rounds.json").write_text("a user's rounds")  # the per-round file beside c.md is kept too
    with pytest.raises(SystemExit, match="c.rounds.json already exists: pass --overwrite"):
        speed.main(["--tables", "layer", "--output", str(tmp_path / "c.md")])
    assert not (tmp_path / "c.md").exists() and (tmp_path / "c.rounds.json").read_text() == "a user's rounds"
    # with --overwrite, a run without table 1 replaces the pair: the Markdown, and no per-round file
    speed.main(["--tables", "layer", "--shapes", "deit-tiny", "--batch_size", "1", "--layer_tokens", "28", "--output",
                str(tmp_path / "c.md"), "--overwrite"])  # fmt: skip
    assert "### 5. One ViT layer" in (tmp_path / "c.md").read_text() and not (tmp_path / "c.rounds.json").exists()


def test_the_machine_line_names_the_last_level_cache(tmp_path):
    """Virtual machines report one generic CPU model for different hosts: the last-level cache from sysfs tells them
    apart (the largest level wins; unreadable entries are left out)."""
    from hf_vitprune.measure import _last_level_cache

    for index, (level, size) in enumerate([("1", "48K"), ("1", "64K"), ("2", "2048K"), ("3", "491520K"), ("4", "?")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(level + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert _last_level_cache(str(tmp_path)) == "480 MiB L3"
    (tmp_path / "index5").mkdir()
    (tmp_path / "index5" / "level").write_text("4")
    (tmp_path / "index5" / "size").write_text("1M")
    assert _last_level_cache(str(tmp_path)) == "1 MiB L4"
    assert _last_level_cache(str(tmp_path / "absent")) is None


def test_the_machine_line_of_a_cpu(monkeypatch):
    from hf_vitprune import measure

    monkeypatch.setattr(measure, "_last_level_cache", lambda: "480 MiB L3")
    assert measure.device_name(torch.device("cpu")).endswith(" cores, 480 MiB L3)")
    monkeypatch.setattr(measure, "_last_level_cache", lambda: None)  # sysfs does not say: the line without it
    assert measure.device_name(torch.device("cpu")).endswith(" cores)")


def _fake_clock_timings(monkeypatch, costs, latency_runs=0):
    """Time steps on a fake clock where each call of a step costs the next value of its cost list (cycled)."""
    import itertools
    import types

    from hf_vitprune import measure

    clock = {"now": 0.0}

    def step(cycle):
        def run():
            clock["now"] += next(cycle)

        return run

    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    steps = [TimedStep(name, step(itertools.cycle(c)), step(itertools.cycle(c))) for name, c in costs.items()]
    return time_interleaved(steps, rounds=4, runs=1, warmup=0, latency_runs=latency_runs, bracket=1)


def test_a_quiet_machine_passes_the_check(monkeypatch):
    from hf_vitprune.measure import check_timings

    timings = _fake_clock_timings(monkeypatch, {"unpruned": [2.0, 2.1], "half": [1.0, 1.05]}, latency_runs=3)
    check = check_timings(timings)
    assert check.quiet and check.reasons == [] and check.message() == ""
    # the reference is timed before and after the variant in each of 4 rounds, costs alternating 2.0 / 2.1
    assert check.reference_jitter == pytest.approx((1 / 2.0 - 1 / 2.1) / ((1 / 2.0 + 1 / 2.1) / 2), rel=1e-6)


def test_slow_drift_is_not_a_busy_machine(monkeypatch):
    """The machine slows by a third over the run (the reference's images/s span 30 % of their median) while the
    variant keeps its 2x: the interleaving cancels drift, so the check does not flag it."""
    from hf_vitprune.measure import check_timings

    reference = [2.0 + 0.1 * i for i in range(8)]
    variant = [(reference[2 * k] + reference[2 * k + 1]) / 4 for k in range(4)]
    timings = _fake_clock_timings(monkeypatch, {"unpruned": reference, "half": variant})
    check = check_timings(timings)
    assert check.quiet and (timings[0].images_per_s_max - timings[0].images_per_s_min) / timings[0].images_per_s > 0.25
    assert timings[1].speedup == pytest.approx(2.0, rel=0.01) and check.reference_jitter < 0.05


def test_a_busy_machine_is_said_not_measured(monkeypatch):
    """The reference's own timings scatter 3x (another job took the cores in some rounds): flagged, with the reason;
    batch-1 passes with a long tail are flagged too."""
    from hf_vitprune.measure import check_timings

    timings = _fake_clock_timings(monkeypatch, {"unpruned": [2.0, 6.0, 2.0], "half": [1.0]})
    check = check_timings(timings)
    assert not check.quiet and "two timings of the reference in a row differed by" in check.message()
    assert "not reliable" in check.message()
    tail = _fake_clock_timings(monkeypatch, {"unpruned": [2.0] * 9 + [8.0], "half": [1.0]}, latency_runs=10)
    tail_check = check_timings(tail, limits={"reference_jitter": 10.0, "speedup_spread": 10.0})
    assert not tail_check.quiet and tail_check.latency_tail > 1.6 and "90th percentile" in tail_check.reasons[0]
    with pytest.raises(ValueError, match="at least the reference"):
        check_timings([])


def test_time_pruning_settings_warns_and_says_so_in_the_protocol(monkeypatch, tiny_config):
    from hf_vitprune import measure

    model = PrunedViTForImageClassification(tiny_config)
    busy = measure.TimingCheck(False, 2.0, 0.0, None, ["two timings of the reference in a row differed by 200 %"])
    monkeypatch.setattr(measure, "check_timings", lambda timings: busy)
    with pytest.warns(measure.BusyMachineWarning, match="not reliable"):
        _, protocol = measure.time_pruning_settings(model, [("unpruned", {"pruning_method": None})], batch_size=2,
                                                    rounds=1, runs=1, warmup=0, latency_runs=0)  # fmt: skip
    assert protocol.endswith(busy.message()) and "WARNING" in protocol
