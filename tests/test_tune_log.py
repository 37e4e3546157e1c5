"""`hf-vitprune tune` reuses only what was measured on the same contents and conditions, keeps going when one
method cannot take a step, and refuses damaged logs and bad flags with one line (issue 44)."""

import json
import warnings
from dataclasses import asdict, replace

import pytest
import torch
from conftest import make_image_folder
from test_tune import LATENCY, _args, _setup, fake_timing  # noqa: F401 - the fixture, used below by name

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification
from hf_vitprune import tune as tune_module
from hf_vitprune.cli import main as cli_main
from hf_vitprune.tune import TuneArguments, TuneLog, run_tune

pytestmark = pytest.mark.usefixtures("fake_timing")  # the verification's timer answers with LATENCY's predictions

QUIET = replace(LATENCY, machine="cpu (test)", threads=2, rounds=5, quiet=True)
CONDITIONS = QUIET.conditions()


def test_weights_replaced_in_the_same_folder_are_not_mistaken_for_the_cached_ones(tmp_path):
    model, data = _setup(tmp_path)
    run_tune(_args(model, data, tmp_path / "tune"), latency_model=LATENCY)
    torch.manual_seed(1)  # other weights, saved over the same folder
    config = PrunedViTConfig.from_pretrained(model)
    PrunedViTForImageClassification(config).save_pretrained(model)
    with pytest.raises(ValueError, match=r"tune_log.jsonl was written for other model \("):
        run_tune(_args(model, data, tmp_path / "tune", overwrite_output_dir=True), latency_model=LATENCY)


def test_images_replaced_in_the_same_folder_are_not_mistaken_for_the_cached_ones(tmp_path):
    model, data = _setup(tmp_path)
    run_tune(_args(model, data, tmp_path / "tune"), latency_model=LATENCY)
    for path in (data / "train").rglob("*.jpg"):  # new pixels under the same file names
        path.unlink()
    make_image_folder(data / "train", {"a": 6, "b": 6}, size=(44, 33))
    with pytest.raises(ValueError, match="was written for other calibration"):
        run_tune(_args(model, data, tmp_path / "tune", overwrite_output_dir=True), latency_model=LATENCY)


def test_the_same_checkpoint_in_another_folder_reuses_the_log(tmp_path, monkeypatch):
    model, data = _setup(tmp_path)
    log = tmp_path / "shared_log.jsonl"
    first = run_tune(_args(model, data, tmp_path / "a", tune_log=str(log)), latency_model=LATENCY)
    copy = tmp_path / "copy"
    PrunedViTForImageClassification.from_pretrained(model).save_pretrained(copy)
    calls = []
    original = tune_module.top1
    monkeypatch.setattr(tune_module, "top1", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    again = run_tune(_args(copy, data, tmp_path / "b", tune_log=str(log), report_split=None), latency_model=LATENCY)
    assert calls == [] and again["chosen"] == first["chosen"]  # every calibration top-1 came from the log
    # this run's own count, not the shared log's
    assert again["protocol"]["schedules_evaluated"] == first["protocol"]["schedules_evaluated"]


def _log(tmp_path, *records):
    path = tmp_path / "tune_log.jsonl"
    log = TuneLog(path, {"model": "m"}, {"model": "folder"})
    for record in records:
        log.add_latency(record)
    return TuneLog(path, {"model": "m"})


def test_a_busy_latency_model_is_not_reused(tmp_path):
    log = _log(tmp_path, replace(QUIET, quiet=False))
    latency, why = log.latency_for(CONDITIONS, ["variance"])
    assert latency is None and why == "the log holds one measured on a busy machine"


def test_a_latency_model_without_a_method_asked_is_not_reused(tmp_path):
    log = _log(tmp_path, replace(QUIET, overhead_ms={"variance": 0.5}))
    latency, why = log.latency_for(CONDITIONS, ["variance", "pitome"])
    assert latency is None and why == "the log holds one without the work of pitome"
    assert log.latency_for(CONDITIONS, ["variance"])[0] == replace(QUIET, overhead_ms={"variance": 0.5})


def test_a_latency_model_of_other_conditions_is_not_reused(tmp_path):
    log = _log(tmp_path, QUIET)
    for change in ({"rounds": 30}, {"batch_size": 64}, {"threads": 1}, {"machine": "another cpu"}):
        latency, why = log.latency_for({**CONDITIONS, **change}, ["variance"])
        assert latency is None and why == f"the log holds one for other {next(iter(change))}"
    assert log.latency_for(CONDITIONS, ["variance"])[0] == QUIET


def test_an_empty_log_gets_its_header_and_a_log_without_one_is_refused(tmp_path):
    path = tmp_path / "tune_log.jsonl"
    path.write_text("")
    TuneLog(path, {"model": "m"})
    assert json.loads(path.read_text().splitlines()[0])["kind"] == "header"
    headless = tmp_path / "headless.jsonl"
    headless.write_text(json.dumps({"kind": "top1", "key": "{}", "top1": 50.0}) + "\n")
    with pytest.raises(ValueError, match="headless.jsonl has no header"):
        TuneLog(headless, {"model": "m"})


def test_a_damaged_log_names_its_file_and_line_and_a_truncated_last_record_is_dropped(tmp_path):
    path = tmp_path / "tune_log.jsonl"
    log = TuneLog(path, {"model": "m"})
    log.add_top1('{"pruning_method": null}', 72.5)
    good = path.read_text()
    path.write_text(good + '{"kind": "top1", "key": "{\\"pruning')  # a run killed while writing
    with pytest.warns(UserWarning, match=r"tune_log.jsonl:3: an unfinished last record"):
        again = TuneLog(path, {"model": "m"})
    assert again.top1 == {'{"pruning_method": null}': 72.5} and path.read_text() == good
    again.add_top1("{}", 1.0)  # appends stay valid JSON lines
    assert len(TuneLog(path, {"model": "m"}).top1) == 2
    path.write_text(good.replace("72.5}", "72.5") + "\n")  # a damaged line that is not the last
    with pytest.raises(ValueError, match=r"tune_log.jsonl:2: not a JSON record"):
        TuneLog(path, {"model": "m"})
    path.write_text(good + json.dumps({"kind": "top1", "key": "{}"}) + "\n")  # a record missing a field
    with pytest.raises(ValueError, match=r"tune_log.jsonl:3: not a record this version writes"):
        TuneLog(path, {"model": "m"})


def test_a_method_that_cannot_take_a_step_is_reported_and_the_others_stand(tmp_path, capsys):
    """ToMe's reduction work (1 s) costs more than any merge saves: its search never takes a step; variance is still
    chosen, and the results say why ToMe has no choice."""
    model, data = _setup(tmp_path)
    costly = replace(LATENCY, overhead_ms={**LATENCY.overhead_ms, "tome": 1000.0})
    result = run_tune(_args(model, data, tmp_path / "tune", report_split=None), latency_model=costly)
    assert result["chosen"]["pruning_method"] == "variance"
    assert "tome" not in {row["method"] for row in result["rows"]}
    assert result["protocol"]["not_chosen"] == {
        "tome": "no step of its schedule saves time on this device (its reduction work costs more)"
    }
    assert "| tome | no choice: no step of its schedule saves time" in (tmp_path / "tune" / "results.md").read_text()
    assert "tune: tome: no choice" in capsys.readouterr().err


def test_flags_are_checked_when_parsed(capsys):
    with pytest.raises(ValueError, match="--device cuda: this machine has no CUDA GPU"):
        TuneArguments(target_speedup=1.5, device="cuda")
    with pytest.raises(ValueError, match="--device 'gpu0' is not a device torch knows"):
        TuneArguments(target_speedup=1.5, device="gpu0")
    with pytest.raises(ValueError, match="--batch_size 64: tune's two batch sizes have their own flags"):
        TuneArguments(target_speedup=1.5, batch_size=64)
    assert TuneArguments(target_speedup=1.5, report_split="none").report_split is None
    with pytest.raises(ValueError, match="--calibration_split and --report_split are both 'train'"):
        TuneArguments(target_speedup=1.5, calibration_split="train", report_split="train")
    with pytest.raises(ValueError, match="--report_samples must be at least 1, got 0"):
        TuneArguments(target_speedup=1.5, report_samples=0)
    for command in ("tune", "evaluate"):
        extra = ["--target_speedup", "1.5"] if command == "tune" else []
        assert cli_main([command, "--device", "cuda", *extra]) == 2
        err = capsys.readouterr().err
        assert "--device cuda: this machine has no CUDA GPU torch can use; use --device cpu." in err
        assert "Traceback" not in err


def test_split_errors_name_the_flag_tune_has(tmp_path):
    model, data = _setup(tmp_path)
    with pytest.raises(ValueError, match=r"pass --calibration_split naming one of them") as error:
        run_tune(_args(model, data, tmp_path / "tune", calibration_split="test"), latency_model=LATENCY)
    assert "--train_split" not in str(error.value) and "--split " not in str(error.value)
    (data / "val" / "a" / "img_0.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"img_0.jpg.*\(repair or remove it\)") as error:
        run_tune(_args(model, data, tmp_path / "tune2"), latency_model=LATENCY)
    assert "--skip_unreadable" not in str(error.value)


def test_asdict_round_trip_of_the_latency_model():
    assert type(QUIET)(**asdict(QUIET)) == QUIET
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert QUIET.conditions()["rounds"] == 5
