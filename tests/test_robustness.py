"""Nothing leaked, nothing lost: secrets, numerical limits, clear errors, training that survives a kill."""

import json
import math
import shutil

import pytest
import torch
from conftest import (
    DEIT_TINY,
    IMAGENET1K_CLASSES,
    IMAGENETTE,
    make_image_folder,
    needs_shared,
    run_fresh_process,
    tiny_config_kwargs,
)
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification, prune
from hf_vitprune.cli import main as cli_main
from hf_vitprune.token_ops import renyi_entropy

TOKEN = "hf_" + "SeCrEt0123456789abcdefGHIJ"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
    ViTForImageClassification(ViTConfig(**base)).save_pretrained(root / "base")
    make_image_folder(root / "data" / "train", {"cat": 6, "dog": 6, "fox": 4})
    make_image_folder(root / "data" / "val", {"cat": 2, "dog": 2, "fox": 2})
    (root / "classes.txt").write_text("cat\ndog\nfox\n")  # the base model's outputs 0-2 stand for them
    return root


def _train_args(root, out, *extra):
    return ["train", "--model_name_or_path", str(root / "base"), "--dataset", str(root / "data"),
            "--ignore_mismatched_sizes", "--prune_layers", "1", "2", "--keep_rate", "0.5", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_steps", "4",
            "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "5", "--eval_strategy", "no",
            "--logging_steps", "1", "--dataloader_num_workers", "0", "--use_cpu", "--seed", "3",
            "--throughput_batch_size", "2", "--throughput_runs", "1", *extra]  # fmt: skip


def _files_containing(folder, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


# 1. Secrets -----------------------------------------------------------------------------------------------------------

LOAD_COPY = """
import sys, json
sys.modules["hf_vitprune"] = None
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    print(json.dumps(model(pixel_values=torch.load(sys.argv[2])).logits.tolist()))
"""


def _fake_hub(monkeypatch, pushed) -> list:
    """Stand-ins for the Hub calls of a push: the uploaded folder is copied to `pushed`; returns the calls made."""
    import huggingface_hub

    calls = []

    def create_repo(repo_id, token=None, exist_ok=False, **kwargs):
        calls.append(("create_repo", repo_id, token))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(repo_id, folder_path, token=None, ignore_patterns=(), **kwargs):
        calls.append(("upload_folder", repo_id, token))
        shutil.copytree(folder_path, pushed, ignore=shutil.ignore_patterns(*ignore_patterns))
        return "https://huggingface.co/commit/0"

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return calls


def test_a_hub_token_is_used_for_the_push_and_written_nowhere(workspace, tmp_path, monkeypatch):
    pushed = tmp_path / "pushed"
    calls = _fake_hub(monkeypatch, pushed)
    out = tmp_path / "run"
    # the dash spelling that --help lists, with a short token no pattern would catch: redacted by its parsed value
    token = "hf_X"
    args = _train_args(workspace, out, "--push_to_hub", "--hub_model_id", "someone/pruned", "--hub-token", token)
    assert cli_main(args) == 0
    assert calls == [("create_repo", "someone/pruned", token), ("upload_folder", "someone/pruned", token)]
    assert _files_containing(out, token.encode()) == [] and _files_containing(pushed, token.encode()) == []
    assert "--hub-token REDACTED" in json.loads((out / "pruning_results.json").read_text())["command"]
    assert "--hub-token REDACTED" in (pushed / "README.md").read_text()  # the model card, command line redacted
    assert not list(pushed.glob("checkpoint-*")) and list(out.glob("checkpoint-*"))
    # the pushed folder loads anywhere: a fresh process without the package, offline, trust_remote_code
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = PrunedViTForImageClassification.from_pretrained(out).eval()(pixel_values=x).logits
    assert torch.equal(torch.tensor(run_fresh_process(tmp_path, LOAD_COPY, pushed, tmp_path / "x.pt")), expected)


def test_redact_command():
    from hf_vitprune.checkpoints import redact_command

    assert redact_command(["--hub_token", TOKEN, "--x", "1"]) == ["--hub_token", "REDACTED", "--x", "1"]
    assert redact_command([f"--token={TOKEN}"]) == ["--token=REDACTED"]
    assert redact_command([f"--hub_model_id=me/{TOKEN}"]) == ["--hub_model_id=me/REDACTED"]  # token-shaped anywhere
    oauth = "hf_oauth_" + "0123456789abcdefGHIJklmn"
    assert redact_command(["--output_dir", f"runs/{oauth}"]) == ["--output_dir", "runs/REDACTED"]
    # a parsed value is redacted wherever it stands, however short and whatever flag carried it
    assert redact_command(["--hub-token", "hf_X", "--y", "a-hf_X-b"], ("hf_X",)) == [
        "--hub-token", "REDACTED", "--y", "a-REDACTED-b"
    ]  # fmt: skip
    assert redact_command(["--hub_token", "short"], (None, "")) == ["--hub_token", "REDACTED"]


OAUTH_TOKEN = "hf_oauth_" + "SeCrEt0123456789abcdefGHIJ"


@pytest.mark.parametrize(
    "spelling",
    [
        ["--hub_token", OAUTH_TOKEN],
        [f"--hub_token={OAUTH_TOKEN}"],
        ["--hub-token", OAUTH_TOKEN],
        [f"--hub-token={OAUTH_TOKEN}"],
        ["--hub_token", "plain-secret"],
        ["--hub-token=plain-secret"],
    ],
)
def test_every_spelling_of_the_hub_token_reaches_the_push_and_no_record(workspace, tmp_path, monkeypatch, spelling):
    """What `train` records (the command line of pruning_results.json and the model card) never holds the token,
    however the flag is spelled; the push still gets it."""
    import hf_vitprune.train as train

    seen = {}
    monkeypatch.setattr(
        train, "run_training", lambda m, d, t, command=None: seen.update(token=t.hub_token, cmd=command)
    )
    argv = _train_args(workspace, tmp_path / "run", "--push_to_hub", *spelling)[1:]
    train.main(argv)
    token = spelling[-1].split("=", 1)[-1]
    assert seen["token"] == token  # parsed: the push uses it
    assert token not in seen["cmd"] and "REDACTED" in seen["cmd"]


def test_a_hub_token_in_a_json_arguments_file_is_not_recorded(workspace, tmp_path, monkeypatch):
    """A real (tiny) run from a JSON arguments file holding an oauth token: the push gets the token, and no file of
    the run or of the pushed folder holds it."""
    pushed, out = tmp_path / "pushed", tmp_path / "run"
    calls = _fake_hub(monkeypatch, pushed)
    values = {"model_name_or_path": str(workspace / "base"), "dataset": str(workspace / "data"),
              "ignore_mismatched_sizes": True, "prune_layers": [1, 2], "keep_rate": 0.5, "output_dir": str(out),
              "per_device_train_batch_size": 4, "max_steps": 2, "save_strategy": "no", "eval_strategy": "no",
              "dataloader_num_workers": 0, "use_cpu": True, "throughput_batch_size": 2, "throughput_runs": 1,
              "push_to_hub": True, "hub_model_id": "someone/pruned", "hub_token": OAUTH_TOKEN}  # fmt: skip
    path = tmp_path / "args.json"
    path.write_text(json.dumps(values))
    assert cli_main(["train", str(path)]) == 0
    assert calls == [("create_repo", "someone/pruned", OAUTH_TOKEN), ("upload_folder", "someone/pruned", OAUTH_TOKEN)]
    assert _files_containing(out, OAUTH_TOKEN.encode()) == [] and _files_containing(pushed, OAUTH_TOKEN.encode()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--hub_tok", "hf_X"],  # an abbreviation of --hub_token
        ["evaluate", "--max_sampl", "3"],  # of --max_samples
        ["export", "--overwr", "--output", "m.onnx"],  # of --overwrite
    ],
)
def test_abbreviated_flags_are_refused(argv, capsys):
    """argparse would read a prefix as the flag it abbreviates (`--hub_tok X` as `--hub_token X`, which then escaped
    the flag-name redaction); every command refuses them, naming the flag."""
    assert cli_main(argv) == 2
    assert argv[1] in capsys.readouterr().err


# 2. Numerical limits --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [30.0, 50.0, 200.0, 1e4])
def test_renyi_entropy_of_large_orders_is_finite_and_right(alpha):
    p = torch.tensor([0.5, 0.25, 0.25])
    # by hand: log(0.5^a + 2 * 0.25^a) = a log 0.5 + log(1 + 2 * 0.5^a), which float64 holds for every a
    expected = (alpha * math.log(0.5) + math.log1p(2 * 0.5**alpha)) / (1 - alpha)
    assert renyi_entropy(p, alpha).item() == pytest.approx(expected, rel=1e-5)
    # float32 attention probabilities: p**30 underflows to 0 (log 0 = -inf) in the direct formula
    small = torch.tensor([1e-3] * 1000)
    assert small.pow(30).sum() == 0
    assert renyi_entropy(small, alpha).item() == pytest.approx(math.log(1000), rel=1e-4)


def test_min_entropy_and_zero_probabilities():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert renyi_entropy(p, float("inf")).item() == pytest.approx(math.log(2))
    p.requires_grad_(True)
    renyi_entropy(p, 3.0).backward()
    assert torch.isfinite(p.grad).all()


def test_entropy_pruning_with_a_large_order_gives_finite_logits():
    torch.manual_seed(0)
    config = PrunedViTConfig(**tiny_config_kwargs(pruning_method="entropy", renyi_alpha=50.0))
    model = PrunedViTForImageClassification(config).eval()
    with torch.no_grad():
        for alpha in (50.0, 1e3, float("inf")):
            with model.pruning(renyi_alpha=alpha):
                assert torch.isfinite(model(pixel_values=torch.randn(2, 3, 32, 32)).logits).all(), alpha


@needs_shared
def test_evaluate_stops_naming_the_variant_with_non_finite_logits(tmp_path, monkeypatch, capsys):
    from hf_vitprune.reducers import MedADPruner

    monkeypatch.setattr(MedADPruner, "score", lambda self, statistic, *a: statistic.mean(1) * float("nan"))
    data = tmp_path / "val" / "n01440764"
    data.mkdir(parents=True)
    for image in sorted((IMAGENETTE / "val" / "n01440764").iterdir())[:2]:
        (data / image.name).symlink_to(image)
    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(DEIT_TINY), "--data", str(tmp_path / "val"), "--class_list",
            str(IMAGENET1K_CLASSES), "--methods", "variance", "medad", "--keep_rates", "0.7", "--fusion", "on",
            "--num_workers", "0", "--skip_throughput", "--output_dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "variant medad@0.7+fusion gave non-finite logits" in err and "variance" not in err.split("variant")[1]
    assert not out.exists()


# 3. Bad checkpoints ---------------------------------------------------------------------------------------------------


def test_a_truncated_checkpoint_is_one_clear_line(workspace, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(workspace / "base", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["evaluate", "--model", str(broken), "--data", str(workspace / "data" / "val"), "--skip_throughput",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"{weights}" in err and "truncated or damaged" in err and "Traceback" not in err


def test_a_missing_local_path_is_neither_a_folder_nor_a_hub_id(workspace, tmp_path, capsys):
    for missing in (str(tmp_path / "no" / "such" / "model"), "./nowhere", "runs/train/never-run"):
        argv = ["evaluate", "--model", missing, "--data", str(workspace / "data" / "val"), "--skip_throughput",
                "--output_dir", str(tmp_path / "out")]  # fmt: skip
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert f"{missing!r} is neither a local folder nor a Hub model id" in err, err


# 4. Training that survives a kill -------------------------------------------------------------------------------------


def test_resume_latest_skips_an_incomplete_checkpoint_and_ends_as_the_uninterrupted_run(workspace, tmp_path):
    """The default recipe (RandomResizedCrop, RandAugment, Mixup / CutMix, RandomErasing): killed after checkpoint 2
    (and a checkpoint half written when the kill came), resumed with `latest`: the final weights are the
    uninterrupted run's, bit for bit."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert cli_main(_train_args(workspace, straight)) == 0
    assert cli_main(_train_args(workspace, stopped)) == 0
    for path in stopped.iterdir():  # as if killed after checkpoint-2 was saved ...
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    half = stopped / "checkpoint-4"  # ... while checkpoint-4 was being written
    half.mkdir()
    shutil.copy(straight / "checkpoint-4" / "config.json", half / "config.json")
    (half / "model.safetensors").write_bytes((straight / "checkpoint-4" / "model.safetensors").read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"skipping the incomplete checkpoint .*checkpoint-4 \(.*trainer_state"):
        assert cli_main(_train_args(workspace, stopped, "--resume_from_checkpoint", "latest")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    checkpoint = load_file(stopped / "checkpoint-2" / "model.safetensors")
    assert max((b[k] - checkpoint[k]).abs().max() for k in b) > 0  # steps 3 and 4 did train
    for key in a:
        assert torch.equal(b[key], a[key]), key


def test_resume_errors_are_clear(workspace, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    (out / "checkpoint-7").mkdir()
    assert cli_main(_train_args(workspace, out, "--resume_from_checkpoint", "latest")) == 2
    assert "holds no complete checkpoint-N folder" in capsys.readouterr().err
    assert cli_main(_train_args(workspace, out, "--resume_from_checkpoint", str(out / "checkpoint-7"))) == 2
    assert "is incomplete (no model weights" in capsys.readouterr().err


# 5. Overwrites --------------------------------------------------------------------------------------------------------


def test_evaluate_never_replaces_a_users_file(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("my notes")
    argv = ["evaluate", "--model", str(workspace / "base"), "--data", str(workspace / "data" / "val"), "--methods",
            "variance", "--keep_rates", "0.5", "--prune_layers", "1", "--skip_throughput", "--num_workers", "0",
            "--class_list", str(workspace / "classes.txt"), "--output_dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 2
    assert "already holds results.md: pass --overwrite" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "my notes"
    assert cli_main([*argv, "--overwrite"]) == 0 and (out / "results.json").exists()


# 6. Unreadable images -------------------------------------------------------------------------------------------------


def test_one_unreadable_image_stops_by_default_and_is_counted_when_skipped(workspace, tmp_path, capsys):
    data = tmp_path / "val"
    shutil.copytree(workspace / "data" / "val", data)
    (data / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["evaluate", "--model", str(workspace / "base"), "--data", str(data), "--methods", "variance",
            "--keep_rates", "0.5", "--prune_layers", "1", "--skip_throughput", "--num_workers", "0",
            "--class_list", str(workspace / "classes.txt"), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert cli_main([*argv, "--skip_unreadable"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert all(row["images"] == 6 and row["unreadable_skipped"] == 1 for row in rows)


# 7. Clear errors instead of raw torch errors -------------------------------------------------------------------------


@pytest.mark.parametrize("stock", [False, True], ids=["PrunedViT", "prune(ViT)"])
def test_bad_pixel_values_name_the_expected_shape(stock):
    torch.manual_seed(0)
    if stock:
        base = {k: v for k, v in tiny_config_kwargs().items() if k not in ("prune_layers", "keep_rate")}
        model = prune(ViTForImageClassification(ViTConfig(**base)).eval(), keep_rate=0.5, prune_layers=[1, 2])
    else:
        model = PrunedViTForImageClassification(PrunedViTConfig(**tiny_config_kwargs())).eval()
    cases = {
        "smaller than one 8x8 px patch": torch.randn(2, 3, 4, 4),
        r"expected 4 dimensions \(batch, 3, height, width\).*unsqueeze\(0\)": torch.randn(3, 32, 32),
        "holds no image": torch.randn(0, 3, 32, 32),
    }
    for message, pixel_values in cases.items():
        with pytest.raises(ValueError, match=message), torch.no_grad():
            model(pixel_values=pixel_values)


def test_the_package_never_unpickles_a_users_file():
    """No `pickle.load(s)`, `torch.load` without `weights_only=True` (torch's restricted unpickler: tensors and plain
    data only; the resume check of checkpoints.check_pickled_files) or `numpy.load(allow_pickle=...)` anywhere in the
    package (ast, not text): checkpoints are read with safetensors, configs and results with json."""
    import ast
    from pathlib import Path

    from conftest import REPO

    calls = []
    for path in sorted((REPO / "hf_vitprune").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                weights_only = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if (owner, node.func.attr) in {("pickle", "load"), ("pickle", "loads")} or (
                    (owner, node.func.attr) == ("torch", "load") and not weights_only
                ):
                    calls.append(f"{Path(path).name}:{node.lineno}")
                if node.func.attr == "load" and any(k.arg == "allow_pickle" for k in node.keywords):
                    calls.append(f"{Path(path).name}:{node.lineno}")
    assert calls == []
