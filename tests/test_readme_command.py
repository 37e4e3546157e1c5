"""README's first command, run offline on ../shared: the same flags, the model and data pointed at the local copies."""

import json
import shlex
import warnings

import pytest
from conftest import DEIT_TINY, IMAGENETTE, REPO, needs_shared

from hf_vitprune.cli import main
from hf_vitprune.token_reduction import UnreadSettingWarning

HUB_ONLY = {"--data_dir", "--data_revision"}  # a local folder has no repository folder or branch


def readme_first_command() -> list[str]:
    """The argv of the command between README's `first-command` markers (after `hf-vitprune`)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- first-command-start -->") : text.index("<!-- first-command-end -->")]
    command = block.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[0] == "hf-vitprune"
    return argv[1:]


def offline(argv: list[str], output_dir: str, max_samples: int) -> list[str]:
    """`argv` with the Hub model and data replaced by ../shared, the Hub-only flags dropped, and a smaller budget."""
    replacements = {"--model_name_or_path": str(DEIT_TINY), "--dataset_name": str(IMAGENETTE),
                    "--output_dir": output_dir, "--max_samples": str(max_samples)}  # fmt: skip
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in HUB_ONLY:
            skip = True
            continue
        out.append(token)
        if token in replacements:
            out.append(replacements[token])
            skip = True
    return out + ["--throughput_batch_size", "8", "--throughput_rounds", "2", "--throughput_runs", "1",
                  "--throughput_warmup", "0", "--latency_runs", "2", "--num_workers", "0"]  # fmt: skip


def test_the_readme_command_names_the_hub_sources():
    argv = readme_first_command()
    assert argv[0] == "sweep"
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert flags["--model_name_or_path"] == "facebook/deit-tiny-patch16-224"
    assert flags["--dataset_name"] == "frgfm/imagenette"
    assert flags["--class_list"] == "imagenet1k" and flags["--split"] == "validation"


@pytest.mark.slow
@needs_shared
def test_the_readme_command_runs_offline_on_shared(tmp_path):
    """It runs, and without an `UnreadSettingWarning`: the grid crosses each method only with the settings it reads
    (ToMe's `--tome_r` never meets the pruning methods, the keep rates never meet ToMe)."""
    argv = offline(readme_first_command(), str(tmp_path / "out"), max_samples=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadSettingWarning)
        assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "sweep.json").read_text())
    series = {row["series"] for row in report["rows"]}
    assert series == {"unpruned", "evit + fusion", "variance + fusion", "medad + fusion", "entropy (α=1) + fusion",
                      "random + fusion", "ToMe"}  # fmt: skip
    assert report["protocol"]["images"] == 24 and report["rows"][0]["top1"] > 50  # DeiT-Tiny on Imagenette: ~73 %
    assert {(r["pruning_method"], r["keep_rate"]) for r in report["rows"] if r["pruning_method"] == "variance"} == {
        ("variance", 0.7),
        ("variance", 0.5),
    }
    for name in ("sweep.md", "top1_vs_gmacs.png", "top1_vs_images_per_s.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
