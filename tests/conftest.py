"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on tiny random configs, local folders and ../shared."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_VITPRUNE_SHARED", REPO.parent / "shared"))
DEIT_TINY = SHARED / "models" / "deit-tiny-patch16-224"
IMAGENETTE = SHARED / "data" / "imagenette"
IMAGENET1K_CLASSES = SHARED / "data" / "imagenet1k_classes.tsv"

needs_shared = pytest.mark.skipif(
    not (DEIT_TINY / "model.safetensors").exists() or not IMAGENETTE.exists(),
    reason=f"real checkpoint / images not found under {SHARED} (the project's ../shared folder); "
    "set HF_VITPRUNE_SHARED to its location to run these tests",
)


def _registered_methods():
    from hf_vitprune.reducers import REDUCERS

    return tuple(REDUCERS)


METHODS = _registered_methods()
"""Every registered method (`REDUCERS`): a method added is tested everywhere by default."""

SAME_OPERATIONS = {"evit": "variance", "random": "variance"}
"""Methods whose forward pass runs another's operations, only their scores' elementwise arithmetic differing (EViT:
the mean over heads of the statistic variance also averages; random: uniform draws in place of the scores). The slow
matrices (ONNX, compiled backbones) run the other method for them; every other test runs them too."""

METHODS_WITH_DISTINCT_OPERATIONS = tuple(m for m in METHODS if m not in SAME_OPERATIONS)


def _merging_methods():
    from hf_vitprune.reducers import REDUCERS, TokenMerger

    return tuple(m for m in METHODS if issubclass(REDUCERS[m], TokenMerger))


MERGING_METHODS = _merging_methods()
"""The methods that merge tokens in every layer (ToMe, PiToMe); the others prune at their pruning layers."""


def tiny_config_kwargs(**overrides):
    """A 4-layer, 4-head, 32-px ViT with 8-px patches (16 patches): fast, and an even head count for MedAD."""
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
        layer_norm_eps=1e-6,
        prune_layers=[1, 2],
        keep_rate=0.5,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_config():
    from hf_vitprune import PrunedViTConfig

    return PrunedViTConfig(**tiny_config_kwargs())


@pytest.fixture
def pixel_values():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def make_image_folder(root: Path, classes: dict[str, int], size=(40, 30)) -> Path:
    """A folder with one sub-folder per class holding `n` small random RGB JPEGs each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            array = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"img_{i}.jpg")
    return root


def run_fresh_process(tmp_path: Path, script: str, model_dir, inputs):
    """Run `script` (Python source, given `model_dir` and `inputs` as argv) in a fresh interpreter, offline, with an
    empty remote-code module cache and without this package on the path, as a Hub user loading a
    `trust_remote_code` checkpoint would; return the JSON value its last stdout line prints. A non-zero exit fails
    the test with the end of the process's stderr."""
    import json
    import subprocess
    import sys

    path = tmp_path / "fresh_process.py"
    path.write_text(script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(path), str(model_dir), str(inputs)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_benchmark(name: str):
    """The module `benchmarks/<name>.py` (the benchmark scripts are not a package), freshly executed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def speed_benchmark():
    """`benchmarks/speed.py` as a module; torch's thread count is restored afterwards, since its `--threads` sets it for
    the whole process (later tests would otherwise run on one thread)."""
    threads = torch.get_num_threads()
    yield load_benchmark("speed")
    torch.set_num_threads(threads)
