"""Checkpoint files for the scripts: read with clear errors, write through a temporary file."""

import os
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from autoexp.classroom.cli import ScriptError
from autoexp.models import checkpoint_model_name, read_checkpoint

# Keys that the scripts add to Lightning's checkpoint dict: the user's Hydra overrides, from
# which the config is composed again, and the resolved config for reading.
OVERRIDES_KEY = "autoexp_overrides"
CONFIG_KEY = "autoexp_config"


class ConfigRecorder(pl.Callback):
    """Stores the overrides and the resolved config in every checkpoint the trainer saves."""

    def __init__(self, overrides: list[str], config: dict[str, Any]):
        self.overrides = list(overrides)
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[OVERRIDES_KEY] = self.overrides
        checkpoint[CONFIG_KEY] = self.config


def read_model_checkpoint(path: str | Path, model_names: tuple[str, ...]) -> tuple[dict, str]:
    """Read a checkpoint written by autoexp and check that its model is one of model_names.

    Returns:
        The checkpoint dict and its model name.

    Raises:
        ScriptError: The file does not exist, or the checkpoint contains another model.
        ValueError: The file is not an autoexp checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ScriptError(
            f"checkpoint {path} not found in {Path.cwd()}; pass an existing .ckpt file, "
            "e.g. one that train-autoenc.py init wrote"
        )
    checkpoint = read_checkpoint(path)
    name = checkpoint_model_name(checkpoint, path)
    if name not in model_names:
        raise ScriptError(
            f"{path} is a {name} checkpoint, but this script takes {' or '.join(model_names)}; "
            "pass a checkpoint of that model"
        )
    return checkpoint, name


def completed_epochs(checkpoint: dict) -> int:
    """Return the number of training epochs that a checkpoint's run has finished.

    A checkpoint that ModelCheckpoint saves after validation counts the epoch it is in as
    processed but stores that epoch's index in "epoch", so the fit loop's progress decides.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if progress is not None:
        return int(progress["current"]["processed"])
    return int(checkpoint.get("epoch", 0))


def check_distinct_paths(input_path: Path, output_path: Path) -> None:
    """Raise ScriptError if writing output_path would replace the input checkpoint."""
    same = input_path.absolute() == output_path.absolute()
    if not same and output_path.exists():
        same = os.path.samefile(input_path, output_path)
    if same:
        raise ScriptError(
            f"output {output_path} is the input checkpoint; pass a new file name, "
            "e.g. weight-2.ckpt after weight-1.ckpt"
        )


def check_output_path(path: Path) -> None:
    """Raise ScriptError if path cannot be written as a file."""
    if not path.parent.is_dir():
        raise ScriptError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ScriptError(f"cannot write {path}: it is a folder; pass a file name")


def save_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Save the trainer's checkpoint to a temporary file next to path, then rename it to path,
    so an interrupted save never leaves half a checkpoint under that name."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(descriptor)
    try:
        trainer.save_checkpoint(temporary, weights_only=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def newest_checkpoint(folder: Path) -> Path:
    """Return the most recently modified .ckpt file in folder.

    Raises:
        ScriptError: The folder has no .ckpt file.
    """
    checkpoints = [path for path in folder.glob("*.ckpt") if path.is_file()]
    if not checkpoints:
        raise ScriptError(
            f"no .ckpt file in {folder.absolute()}; pass a checkpoint, or write one with "
            "train-autoenc.py init weight-0.ckpt"
        )
    return max(checkpoints, key=lambda path: (path.stat().st_mtime_ns, path.name))


def check_image_shape(model_shape: tuple[int, ...], data_shape: tuple[int, ...], data: str):
    """Raise ScriptError if a model for model_shape images is used on data of data_shape."""
    if tuple(model_shape) != tuple(data_shape):
        model_size = "x".join(str(size) for size in model_shape)
        data_size = "x".join(str(size) for size in data_shape)
        raise ScriptError(
            f"the model takes {model_size} images but data={data} has {data_size} images; "
            "pass data=NAME for the data set it was trained on"
        )
