"""Run transformers' own common model tests (`ModelTesterMixin`, as `tests/models/vit/test_modeling_vit.py` uses
them) against `PrunedViTModel` / `PrunedViTForImageClassification`, the way an HF maintainer reviews a new model.

The common tests are not part of the transformers wheel: this script takes them from the source distribution of the
installed transformers version on PyPI (`pip download transformers==X --no-binary :all:`), writes a tester with the
tiny config of `ViTModelTester` (30 px images, 2 px patches, 2 layers, 4 heads, hidden 32, eager attention; pruning
layer 0), and runs it once per setting, the stock ViT classes first (to show the harness is sound). It prints a
Markdown table: setting, passed / failed / skipped, and the failing tests.

Two things the source distribution lacks are stubbed, and the table says so: `tests/exporters/test_export.py`
(`ExportTesterMixin`, the exporters' own suite; torch.export of every method is tested in `tests/test_export.py`) and
`tests/generation/test_utils.py` (`GenerationTesterMixin`: no generation here). The pruned classes are added to the
auto-model name tables in the test process only, as an in-tree model would be (the common tests read them to build
labels for the training tests).

Usage (needs the PyPI registry and `pip install parameterized`; about 1.5 min per setting on 2 CPU cores):

    python benchmarks/transformers_common_tests.py --workdir /tmp/hf-common-tests
"""

import argparse
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

SETTINGS = {
    "stock ViT (transformers' classes)": {"STOCK": "1"},
    "PrunedViT, pruning_method=None": {"PRUNE_METHOD": "none"},
    "PrunedViT, variance, keep 1.0": {"PRUNE_METHOD": "variance", "PRUNE_KEEP": "1.0"},
    "PrunedViT, variance, keep 0.7": {"PRUNE_METHOD": "variance", "PRUNE_KEEP": "0.7"},
    "PrunedViT, medad, keep 0.7": {"PRUNE_METHOD": "medad", "PRUNE_KEEP": "0.7"},
    "PrunedViT, evit, keep 0.7": {"PRUNE_METHOD": "evit", "PRUNE_KEEP": "0.7"},
    "PrunedViT, tome, r = 40": {"PRUNE_METHOD": "tome", "PRUNE_KEEP": "0.7"},
    "PrunedViT, bspf, keep 0.7": {"PRUNE_METHOD": "bspf", "PRUNE_KEEP": "0.7"},
}

HARNESS = '''"""transformers' ViTModelTest suite against PrunedViT (from benchmarks/transformers_common_tests.py)."""
import os
import unittest

from torch import nn
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch

from hf_vitprune import PrunedViTConfig, PrunedViTForImageClassification, PrunedViTModel

from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

# an in-tree model is listed in the auto mappings, which the common tests read to build labels
modeling_auto.MODEL_MAPPING_NAMES["pruned_vit"] = "PrunedViTModel"
modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES["pruned_vit"] = "PrunedViTForImageClassification"
STOCK = os.environ.get("STOCK") == "1"
if STOCK:
    from transformers import ViTConfig as PrunedViTConfig  # noqa: F811
    from transformers import ViTForImageClassification as PrunedViTForImageClassification  # noqa: F811
    from transformers import ViTModel as PrunedViTModel  # noqa: F811
METHOD = os.environ.get("PRUNE_METHOD", "variance")
KEEP = float(os.environ.get("PRUNE_KEEP", "1.0"))


class Tester:
    """`ViTModelTester`'s tiny config and inputs."""

    def __init__(self, parent, batch_size=13, image_size=30, patch_size=2, num_channels=3, is_training=True,
                 use_labels=True, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 type_sequence_label_size=10, initializer_range=0.02, encoder_stride=2, attn_implementation="eager"):
        for key, value in dict(locals()).items():
            if key != "self":
                setattr(self, key, value)
        num_patches = (image_size // patch_size) ** 2
        self.seq_length = num_patches + 1
        self.mask_length = num_patches
        self.mask_ratio = 0.5
        self.num_masks = int(self.mask_ratio * self.seq_length)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
        return self.get_config(), pixel_values, labels

    def get_config(self):
        extra = {}
        if not STOCK:
            method = None if METHOD == "none" else METHOD
            extra["pruning_method"] = method
            if method is not None:
                extra["prune_layers"] = [0]
                if method == "tome":
                    extra["tome_r"] = 40
                else:
                    extra["keep_rate"] = KEEP
        return PrunedViTConfig(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act, hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob, is_decoder=False,
            initializer_range=self.initializer_range, encoder_stride=self.encoder_stride,
            attn_implementation=self.attn_implementation, **extra,
        )

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


@require_torch
class PrunedViTModelTest(ModelTesterMixin, unittest.TestCase):
    """As `ViTModelTest` (without the masked-image-modelling class, which PrunedViT does not have)."""

    all_model_classes = (PrunedViTModel, PrunedViTForImageClassification)
    fx_compatible = False
    test_resize_embeddings = False
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = Tester(self)

    @unittest.skip(reason="ViT does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), (nn.Module))
            x = model.get_output_embeddings()
            self.assertTrue(x is None or isinstance(x, nn.Linear))
'''


def prepare(workdir: Path) -> Path:
    """Download and unpack the installed transformers version's source distribution, stub what it lacks and write
    the harness. Returns the source root (the folder holding `tests/`).

    Raises:
        RuntimeError: if the source distribution cannot be downloaded or has no `tests/test_modeling_common.py`.
    """
    import transformers

    version = transformers.__version__
    root = workdir / f"transformers-{version}"
    if not (root / "tests" / "test_modeling_common.py").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
             "--no-deps", "-d", str(workdir)],
            capture_output=True, text=True,
        )  # fmt: skip
        archive = workdir / f"transformers-{version}.tar.gz"
        if done.returncode != 0 or not archive.exists():
            raise RuntimeError(f"could not download the transformers {version} source distribution:\n{done.stderr}")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"transformers-{version}/tests/")]
            tar.extractall(workdir, members=members, filter="data")
        if not (root / "tests" / "test_modeling_common.py").exists():
            raise RuntimeError(f"{archive} has no tests/test_modeling_common.py")
    tests = root / "tests"
    for package in ("", "models", "models/pruned", "exporters", "generation"):
        (tests / package).mkdir(parents=True, exist_ok=True)
        (tests / package / "__init__.py").touch()
    stubs = {"exporters/test_export.py": "ExportTesterMixin", "generation/test_utils.py": "GenerationTesterMixin"}
    for path, name in stubs.items():
        if not (tests / path).exists() or "stub" in (tests / path).read_text():
            (tests / path).write_text(f"class {name}:  # stub: not in the source distribution\n    pass\n")
    (tests / "models" / "pruned" / "test_pruned_common.py").write_text(HARNESS)
    return root


def run_setting(root: Path, env: dict) -> dict:
    """Run the harness under one setting. Returns `{"passed", "failed", "skipped", "failing"}`."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/models/pruned/test_pruned_common.py"],
        cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|skipped)", summary)}
    # "FAILED path::Class::test_x - why" or "SUBFAILED[ModelClass] path::Class::test_x - why"
    failing = sorted({
        re.sub(r"^.*::", "", line.split(" ")[1]) for line in done.stdout.splitlines()
        if line.startswith(("FAILED ", "SUBFAILED"))
    })  # fmt: skip
    if not counts:
        raise RuntimeError(f"pytest gave no summary:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0), "failing": failing}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/hf-common-tests", help="Where the source distribution goes.")
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="Default: all.")
    args = parser.parse_args(argv)
    try:
        import parameterized  # noqa: F401  (the common tests import it)
    except ImportError:
        sys.exit("transformers' common tests need `parameterized`: pip install parameterized")
    import transformers

    root = prepare(Path(args.workdir))
    print(f"transformers {transformers.__version__} common model tests (ModelTesterMixin), source: {root}/tests")
    print("stubbed (not in the source distribution): ExportTesterMixin, GenerationTesterMixin\n")
    print("| setting | passed | failed | skipped | failing tests |\n|---|---|---|---|---|")
    for name in args.settings or SETTINGS:
        result = run_setting(root, SETTINGS[name])
        failing = ", ".join(result["failing"]) or "—"
        print(f"| {name} | {result['passed']} | {result['failed']} | {result['skipped']} | {failing} |", flush=True)


if __name__ == "__main__":
    main()
