"""Checkpoint files: written atomically, and checked before a run resumes from one."""

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from autoexp.models import AutoencoderModule, checkpoint_model_name, read_checkpoint

# Hyperparameters that a resumed run may change. linear_pca_ae's cosine schedule takes T_max
# from trainer.max_epochs, which a resumed run usually raises. NOTE: Lightning restores the
# scheduler's state from the checkpoint, T_max included, so the new value takes no effect.
RESUMABLE_CHANGES = ("lr_scheduler",)


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint to a temporary file in the target folder, then rename it into place.

    os.replace is atomic within one file system, so a reader sees either the previous file or
    the complete new one. On any error, KeyboardInterrupt included, the temporary file is
    deleted. NOTE: a process killed by SIGKILL during the write leaves a `.<name>.*.tmp` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # Mode "xb" creates the file with the usual permissions (0o666 less the umask).
        with open(temporary, "xb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin that writes every checkpoint with `save_atomically`.

    Every checkpoint that the Trainer writes goes through its CheckpointIO: ModelCheckpoint's
    last and best files and `trainer.save_checkpoint`. Pass it to the Trainer in `plugins`.
    Remote paths (fsspec URLs) are written by TorchCheckpointIO as before.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, path)


def _tensor_mismatches(checkpoint: dict, model: AutoencoderModule) -> list[str]:
    saved = checkpoint.get("state_dict") or {}
    expected = model.state_dict()
    mismatches = [f"{name} is missing" for name in expected if name not in saved]
    mismatches += [f"{name} is unexpected" for name in saved if name not in expected]
    for name, tensor in expected.items():
        if name in saved and tuple(saved[name].shape) != tuple(tensor.shape):
            mismatches.append(
                f"{name} has shape {tuple(saved[name].shape)}, the config gives "
                f"{tuple(tensor.shape)}"
            )
    return mismatches


def _flatten_settings(settings: Any, prefix: str) -> dict[str, Any]:
    """Return nested mappings as {"model.optimizer.lr": value, ...}."""
    if not isinstance(settings, Mapping):
        return {prefix: settings}
    flat = {}
    for key, value in settings.items():
        flat.update(_flatten_settings(value, f"{prefix}.{key}"))
    return flat


def _hyperparameter_changes(checkpoint: dict, model: AutoencoderModule) -> list[str]:
    saved = checkpoint.get("hyper_parameters") or {}
    changes = []
    for key, value in saved.items():
        if key in RESUMABLE_CHANGES:
            continue
        old = _flatten_settings(value, f"model.{key}")
        new = _flatten_settings(model.hparams.get(key), f"model.{key}")
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                changes.append(
                    f"{name}={old.get(name)!r} in the checkpoint, {new.get(name)!r} in the config"
                )
    return changes


def check_resume_checkpoint(
    path: str | Path, model: AutoencoderModule | None = None, max_epochs: int | None = None
) -> None:
    """Check that training can resume from a checkpoint, before anything else is done.

    Args:
        path: The checkpoint file.
        model: The model that the config builds; None checks only that the file is a
            readable autoexp checkpoint with training state.
        max_epochs: The config's trainer.max_epochs. Lightning rejects a checkpoint saved in
            a later epoch, but only once the run has started; None or -1 skips the check.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not readable by torch.load, was not written by autoexp-train,
            contains no training state, or contains another model type, other tensor shapes
            or other model settings (the learning-rate scheduler aside) than the config's
            model. The message names the file.
    """
    path = Path(path).expanduser().absolute()
    try:
        checkpoint = read_checkpoint(path)
    except ValueError as error:
        raise ValueError(
            f"ckpt_path: {error}. Pass a complete checkpoint written by autoexp-train, such as "
            "<run folder>/checkpoints/last.ckpt."
        ) from error
    name = checkpoint_model_name(checkpoint, path)
    missing = [key for key in ("state_dict", "loops", "optimizer_states") if key not in checkpoint]
    if missing:
        raise ValueError(
            f"ckpt_path={path} contains no training state (missing {', '.join(missing)}), so "
            "training cannot resume from it; pass a checkpoint written by autoexp-train, such "
            "as <run folder>/checkpoints/last.ckpt"
        )
    if model is None:
        return
    if name != model.model_name:
        raise ValueError(
            f"ckpt_path={path} is a checkpoint of model {name}, but the config trains "
            f"{model.model_name}; pass model={name} to resume it, or a checkpoint of "
            f"{model.model_name}"
        )
    mismatches = _tensor_mismatches(checkpoint, model)
    if mismatches:
        changes = _hyperparameter_changes(checkpoint, model)
        raise ValueError(
            f"ckpt_path={path} does not fit the {name} model of the config: "
            + "; ".join(mismatches[:3])
            + (f" (settings that differ: {'; '.join(changes)})" if changes else "")
            + ". Pass the model settings of the run that wrote it (its .hydra/config.yaml)."
        )
    changes = _hyperparameter_changes(checkpoint, model)
    if changes:
        # Settings without tensors of their own (an activation, a tolerance, a solver) would
        # otherwise change silently halfway through the run.
        raise ValueError(
            f"ckpt_path={path} was saved with other {name} settings than the config's: "
            + "; ".join(changes)
            + ". Resume with the model settings of the run that wrote it (its "
            ".hydra/config.yaml), or start a new run without ckpt_path."
        )
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, int) and isinstance(max_epochs, int) and -1 < max_epochs < epoch:
        raise ValueError(
            f"ckpt_path={path} was saved in epoch {epoch}, beyond trainer.max_epochs="
            f"{max_epochs}; pass trainer.max_epochs={epoch + 1} or more to train on from it"
        )
