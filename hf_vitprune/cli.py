"""The `hf-vitprune` command: `hf-vitprune <command> [flags]`, `hf-vitprune <command> --help` for each."""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "evaluate": ("hf_vitprune.evaluation", "top-1, GMACs and images/s of pruning variants of a model on images"),
    "sweep": ("hf_vitprune.sweep", "the trade-off curves of every method (tables, plots, matched-GMACs table)"),
    "visualize": ("hf_vitprune.visualize", "draw which patches each pruning layer keeps on images (PNG)"),
    "train": ("hf_vitprune.train", "fine-tune with pruning switched on (HF Trainer; accelerate launch -m works too)"),
    "export": ("hf_vitprune.export", "export a pruned model to ONNX (onnxruntime) or a torch.export program"),
    "tune": ("hf_vitprune.tune", "choose the reduction schedule by latency measured on this device (greedy search)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch `argv[0]` to its command's `main(argv[1:])`.

    Returns:
        The process exit status: 0 on success, 2 on a usage error or a bad argument (printed, without a traceback).
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: hf-vitprune <command> [flags]\n\ncommands:\n" + "\n".join(
            f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hf-vitprune: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    from huggingface_hub.errors import StrictDataclassError

    from .measure import CompilerUnavailableError
    from .tune import TuneError

    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        module.main(argv[1:])
    except SystemExit as exit:  # argparse: --help (0) or a flag it could not read (2, already printed)
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(f"hf-vitprune {argv[0]}: error: {exit.code}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, StrictDataclassError, CompilerUnavailableError, TuneError) as error:
        if os.environ.get("HF_VITPRUNE_TRACEBACK"):
            raise
        print(f"hf-vitprune {argv[0]}: error: {error}", file=sys.stderr)
        print("(set HF_VITPRUNE_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
