"""Callbacks that log images and hyperparameters to TensorBoard, and that end a run safely."""

from autoexp.callbacks.checkpoints import LastCheckpoint
from autoexp.callbacks.hparams import HPARAM_METRICS, HparamsLogger
from autoexp.callbacks.images import ImageLogger
from autoexp.callbacks.safety import (
    InterruptCheckpoint,
    NonFiniteLossCheck,
    TrainingDivergedError,
    TrainingInterrupted,
)

__all__ = [
    "HPARAM_METRICS",
    "HparamsLogger",
    "ImageLogger",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "NonFiniteLossCheck",
    "TrainingDivergedError",
    "TrainingInterrupted",
]
