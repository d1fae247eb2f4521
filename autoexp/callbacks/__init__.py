"""Callbacks that log images and hyperparameters to TensorBoard."""

from autoexp.callbacks.hparams import HPARAM_METRICS, HparamsLogger
from autoexp.callbacks.images import ImageLogger

__all__ = ["HPARAM_METRICS", "HparamsLogger", "ImageLogger"]
