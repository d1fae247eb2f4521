"""Write a freshly initialised checkpoint, and train one epoch from checkpoint to checkpoint.

Both steps build the data module, the model and the trainer from the composed config as
`autoexp.train.train` does, and seed in the same order. So N one-epoch steps from an `init`
checkpoint give the same weights as one N-epoch `autoexp-train` run with the same seed. A test
checks this on the CPU, where the kernels are deterministic.
"""

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from autoexp.callbacks import NonFiniteLossCheck, TrainingDivergedError
from autoexp.callbacks.hooks import skip_unused_batch_hooks
from autoexp.classroom.checkpoints import (
    OVERRIDES_KEY,
    ConfigRecorder,
    check_distinct_paths,
    check_output_path,
    completed_epochs,
    read_model_checkpoint,
    save_checkpoint,
)
from autoexp.classroom.cli import ScriptError
from autoexp.classroom.config import compose_config, merge_overrides, resolved_config
from autoexp.models import AutoencoderModule
from autoexp.models.base import to_container
from autoexp.profiling import profiler_argument

log = logging.getLogger(__name__)

# The model that train-autoenc.py trains; PCA and k-means have scripts of their own.
TRAINED_MODEL = "mlp_ae"


@dataclass
class EpochResult:
    """Losses of one training epoch: squared error per image, summed over its pixels."""

    epoch: int
    train_loss: float
    val_loss: float
    n_pixels: int


@contextmanager
def output_folder(tensorboard: Path | None) -> Iterator[Path]:
    """Yield the folder for paths.output_dir: the TensorBoard folder if one is given, else a
    temporary folder removed afterwards, so that nothing is left in the current folder."""
    if tensorboard is not None:
        created = not tensorboard.exists()
        tensorboard.mkdir(parents=True, exist_ok=True)
        try:
            yield tensorboard
        except BaseException:
            # A rejected or failed call leaves no empty folder behind.
            if created and not any(tensorboard.iterdir()):
                tensorboard.rmdir()
            raise
        return
    with tempfile.TemporaryDirectory(prefix="autoexp-") as folder:
        yield Path(folder)


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, AutoencoderModule]:
    """Seed and build the data module and the model, in the order autoexp.train.train uses."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    return datamodule, model


def make_trainer(
    cfg: DictConfig,
    overrides: list[str],
    max_epochs: int,
    tensorboard: bool,
    kept_files_on_divergence: str | None = None,
) -> pl.Trainer:
    """Build the configured trainer without autoexp-train's checkpoint callback.

    With tensorboard set, the configured loggers and the image_logger callback write to
    paths.output_dir as in an autoexp-train run; otherwise nothing is logged. With
    kept_files_on_divergence set, a NaN or infinite loss or weight stops the fit with
    TrainingDivergedError, and its message includes that text.
    """
    callbacks: list[pl.Callback] = [ConfigRecorder(overrides, resolved_config(cfg))]
    if kept_files_on_divergence is not None:
        callbacks.append(NonFiniteLossCheck(kept_files=kept_files_on_divergence))
    loggers: list | bool = False
    if tensorboard:
        loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values()]
        image_logger = (cfg.get("callbacks") or {}).get("image_logger")
        if image_logger is not None:
            callbacks.append(instantiate(image_logger))
    trainer = instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        max_epochs=max_epochs,
        **profiler_argument(cfg),
    )
    if trainer.world_size > 1:
        # Lightning's spawn launcher copies only the weights back into this process.
        raise ScriptError(
            f"the trainer runs {trainer.world_size} processes, but this script writes the "
            "checkpoint of its own process, which would keep neither the epoch count nor the "
            "optimizer state; train in one process (drop trainer=ddp or trainer.devices)"
        )
    skip_unused_batch_hooks(trainer.callbacks)
    return trainer


def init_checkpoint(output: Path, overrides: list[str], tensorboard: Path | None = None) -> None:
    """Write a freshly initialised mlp_ae checkpoint, with its optimizer, at epoch 0."""
    check_output_path(output)
    with output_folder(tensorboard) as folder:
        cfg = compose_config(overrides, folder)
        datamodule, model = build(cfg)
        check_model_name(model)
        # A fit of zero epochs sets up the optimizer, so the checkpoint has its (empty) state
        # and the loop counters that a later fit resumes from.
        trainer = make_trainer(cfg, overrides, max_epochs=0, tensorboard=tensorboard is not None)
        trainer.fit(model, datamodule=datamodule)
        save_checkpoint(trainer, output)
    # Debug level, because train-autoenc.py prints its own line for the file.
    log.debug(
        "Wrote %s: %s with latent_dim=%d for %s",
        output,
        TRAINED_MODEL,
        model.latent_dim,
        datamodule.name,
    )


def check_model_name(model: AutoencoderModule) -> None:
    if model.model_name != TRAINED_MODEL:
        raise ScriptError(
            f"train-autoenc.py trains {TRAINED_MODEL} only, but the overrides select "
            f"model={model.model_name}; drop the model= override"
        )


def check_model_settings(model: AutoencoderModule, checkpoint: dict[str, Any]) -> None:
    """Raise ScriptError if the config builds a model other than the checkpoint's.

    The optimizer counts too, because Lightning restores its settings (the learning rate among
    them) from the checkpoint, which would silently ignore a changed value.
    """
    stored = to_container(checkpoint.get("hyper_parameters", {}))
    composed = to_container(dict(model.hparams))
    differences = [
        f"model.{key}={composed.get(key)!r} (checkpoint: {stored.get(key)!r})"
        for key in sorted(set(stored) | set(composed))
        if stored.get(key) != composed.get(key)
    ]
    if differences:
        raise ScriptError(
            f"the config's model differs from the checkpoint's: {', '.join(differences)}; "
            "train keeps the model of its input checkpoint, so drop those overrides (for a "
            "checkpoint from autoexp-train, pass the overrides of its run)"
        )


def train_epoch(
    input_path: Path, output: Path, overrides: list[str], tensorboard: Path | None = None
) -> EpochResult:
    """Train the checkpoint's model for one more epoch and write the result to output.

    The config is composed from the overrides stored in the input checkpoint followed by
    `overrides`; the trainer resumes the weights, optimizer state and epoch counter.
    """
    check_distinct_paths(input_path, output)
    check_output_path(output)
    checkpoint, _ = read_model_checkpoint(input_path, (TRAINED_MODEL,))
    overrides = merge_overrides(list(checkpoint.get(OVERRIDES_KEY, [])), overrides)
    epochs_done = completed_epochs(checkpoint)
    with output_folder(tensorboard) as folder:
        cfg = compose_config(overrides, folder)
        datamodule, model = build(cfg)
        check_model_name(model)
        check_model_settings(model, checkpoint)
        trainer = make_trainer(
            cfg,
            overrides,
            max_epochs=epochs_done + 1,
            tensorboard=tensorboard is not None,
            kept_files_on_divergence=f"{input_path} is unchanged and {output} was not written",
        )
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(input_path.absolute()))
            save_checkpoint(trainer, output)
        except TrainingDivergedError as error:
            raise ScriptError(str(error)) from error
    metrics = trainer.callback_metrics
    return EpochResult(
        epoch=trainer.current_epoch,
        train_loss=float(metrics["train/loss_epoch"]),
        val_loss=float(metrics["val/loss"]),
        n_pixels=model.n_pixels,
    )


def fit_quietly(
    cfg: DictConfig,
    datamodule: pl.LightningDataModule,
    model: AutoencoderModule,
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """Fit a model with the configured trainer, without loggers or checkpoint files.

    Returns:
        The trainer after the fit, e.g. for its callback_metrics.
    """
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=list(callbacks or []), enable_checkpointing=False
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer
