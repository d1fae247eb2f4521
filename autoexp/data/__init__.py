"""Data sets, splits and the LightningDataModule."""

from autoexp.data.datamodule import BatchIndexSampler, ImageDataModule
from autoexp.data.splits import DATASETS, IMAGE_SHAPES, Split, load_split, load_splits

__all__ = [
    "DATASETS",
    "IMAGE_SHAPES",
    "BatchIndexSampler",
    "ImageDataModule",
    "Split",
    "load_split",
    "load_splits",
]
