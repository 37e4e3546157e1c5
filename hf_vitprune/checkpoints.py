"""What `hf-vitprune train` writes and reads back: the output folder's checks, resuming from checkpoints, the
redaction of secrets from anything recorded, and the push to the Hub."""

from __future__ import annotations

import json
import os
import re
import warnings

SECRET_FLAGS = ("--hub_token", "--hub-token", "--token")


_TOKEN_PATTERN = re.compile(r"hf_(?:oauth_)?[A-Za-z0-9]{20,}")


def redact_command(argv: list[str], secrets: tuple[str | None, ...] = ()) -> list[str]:
    """`argv` with secrets replaced by `REDACTED`, so that a command line can be recorded in results and model cards.

    Redacted: every occurrence of each value in `secrets` (the token as it was *parsed*, so every spelling that
    reaches it, `--hub_token X`, `--hub-token=X`, ..., is covered, whatever the flag looks like); the value after a
    flag of `SECRET_FLAGS`; and anything shaped like a Hugging Face access token (`hf_` or `hf_oauth_` followed by 20
    or more letters or digits).

    Args:
        argv (`list[str]`): the command line's arguments.
        secrets (`tuple[str | None, ...]`): values that must not be recorded (`None` / empty ones are ignored).

    Returns:
        `list[str]` of the same length as `argv`.
    """
    values = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first: no partial leftovers
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("REDACTED")
            hide_next = False
            continue
        flag, equals, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            redacted.append(f"{flag}=REDACTED" if equals else arg)
            hide_next = not equals
            continue
        for value in values:
            arg = arg.replace(value, "REDACTED")
        redacted.append(_TOKEN_PATTERN.sub("REDACTED", arg))
    return redacted


CHECKPOINT_FILES = ("trainer_state.json",)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")


def checkpoint_problems(path: str, save_only_model: bool = False) -> list[str]:
    """What a `checkpoint-N` folder lacks to be resumed from (empty when complete).

    A Trainer checkpoint is complete when its weights, optimizer and scheduler states (unless `save_only_model`) and,
    written last, a readable `trainer_state.json` are there; a run killed while saving leaves some of them out.
    """
    problems = []
    if not any(os.path.exists(os.path.join(path, name)) for name in WEIGHT_FILES):
        problems.append("no model weights")
    if not save_only_model:
        problems += [f"no {name}" for name in OPTIMIZER_FILES if not os.path.exists(os.path.join(path, name))]
    state = os.path.join(path, "trainer_state.json")
    try:
        with open(state) as f:
            json.load(f)
    except (OSError, ValueError):
        problems.append("no readable trainer_state.json")
    return problems


def resolve_resume_checkpoint(training_args) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` means: for `latest` / `true`, the last complete
    `checkpoint-N` of `--output_dir` (incomplete ones skipped with a warning); a given folder is checked.

    Raises:
        FileNotFoundError: for `latest` without any complete checkpoint, or a folder that does not exist.
        ValueError: for a given folder that is incomplete (naming what it lacks), or a checkpoint holding a pickled
            file `torch.load(weights_only=True)` refuses ([`check_pickled_files`], naming the file).
    """
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", ""):
        return None
    only_model = training_args.save_only_model
    if str(value).lower() in ("true", "latest", "last"):
        output_dir = training_args.output_dir
        found = [n for n in (os.listdir(output_dir) if os.path.isdir(output_dir) else []) if _CHECKPOINT.match(n)]
        for name in sorted(found, key=lambda n: int(_CHECKPOINT.match(n).group(1)), reverse=True):
            problems = checkpoint_problems(os.path.join(output_dir, name), only_model)
            if not problems:
                check_pickled_files(os.path.join(output_dir, name))
                return os.path.join(output_dir, name)
            message = f"skipping the incomplete checkpoint {output_dir}/{name} ({', '.join(problems)})."
            warnings.warn(message, stacklevel=2)
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint-N folder to resume from "
            f"({len(found)} incomplete). Start the run again without --resume_from_checkpoint "
            "(add --overwrite_output_dir)."
        )
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    problems = checkpoint_problems(value, only_model)
    if problems:
        raise ValueError(
            f"--resume_from_checkpoint {value} is incomplete ({', '.join(problems)}; a run killed while saving leaves "
            "such a folder): resume from an earlier checkpoint, or pass `latest` to take the last complete one."
        )
    check_pickled_files(value)
    return value


PICKLED_FILES = ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
"""The files of a checkpoint that `torch.load` reads on resume (`rng_state_N.pth` too, one per process)."""


def refused_pickle_error(path: str, error: Exception) -> ValueError:
    """The one-line error for a file `torch.load(weights_only=True)` refused: which file, and the reason torch gives
    (e.g. `Trying to load unsupported GLOBAL posix.system ...`), without torch's advice to retry with
    `weights_only=False`, which would run whatever the file holds.

    Args:
        path (`str`): the refused file; error (`Exception`): torch's `pickle.UnpicklingError`.

    Returns:
        `ValueError` to raise (`from None`: torch's advice stays out of the traceback too).
    """
    lines = str(error).splitlines()
    reason = next((line.strip() for line in lines if "unsupported" in line.lower() and "weights_only" not in line), "")
    return ValueError(
        f"refused to load {path}: it holds Python objects that are not tensors or plain data"
        + (f" ({reason})" if reason else "")
        + ". Loading such a file can run code it carries: use files from a source you trust, or delete it (a "
        "checkpoint: resume from another one, or start again)."
    )


def check_pickled_files(folder: str) -> None:
    """Load every pickled file of a checkpoint folder ([`PICKLED_FILES`]) as the Trainer will on resume
    (`torch.load(weights_only=True)` under transformers' `safe_globals`, on the CPU), before training starts: each file
    is read into memory once more (an optimizer state is about twice the model's weights).

    Raises:
        ValueError: naming the first file torch refuses ([`refused_pickle_error`]).
    """
    import glob
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    names = [*PICKLED_FILES, *(os.path.basename(p) for p in glob.glob(os.path.join(folder, "rng_state_*.pth")))]
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise refused_pickle_error(path, error) from None


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_training_output_dir(training_args) -> None:
    """Refuse to train into a folder that already holds a trained model or checkpoints, unless told what to do.

    Raises:
        FileExistsError: if `output_dir` holds `checkpoint-*`, `config.json`, `model.safetensors` or
            `pruning_results.json` and neither `--resume_from_checkpoint` nor `--overwrite_output_dir` is given.
    """
    output_dir = training_args.output_dir
    existing = [
        name
        for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
        if name.startswith("checkpoint-") or name in ("config.json", "model.safetensors", "pruning_results.json")
    ]
    if existing and not training_args.resume_from_checkpoint and not training_args.overwrite_output_dir:
        raise FileExistsError(
            f"{output_dir} already holds {sorted(existing)[:3]}: pass --resume_from_checkpoint to continue that run, "
            "--overwrite_output_dir to replace it, or another --output_dir."
        )


def push_output_dir(output_dir: str, repo_id: str, token: str | None = None) -> str:
    """Upload the final model folder (weights, config with `auto_map`, modeling code, image processor, metrics, model
    card) to the Hub with `huggingface_hub.upload_folder`, leaving out intermediate checkpoints.

    The Trainer's own `push_to_hub` would replace the model card with a generic one, hence this.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import create_repo, upload_folder

    repo = create_repo(repo_id, token=token, exist_ok=True)
    commit = upload_folder(
        repo_id=repo.repo_id,
        folder_path=output_dir,
        token=token,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "*.pth"],
        commit_message="hf-vitprune train: final model",
    )
    return str(commit)
