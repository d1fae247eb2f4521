"""Train, validation and test splits held in memory as uint8 tensors."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist", "fashion_mnist")
SPLITS = ("train", "val", "test")

# (channels, height, width) of each data set's images.
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}

# Value of a white pixel in the stored uint8 images: digits run 0..16, the IDX sets 0..255.
PIXEL_MAX = {"digits": 16, "mnist": 255, "fashion_mnist": 255}


@dataclass
class Split:
    """One split of a data set: uint8 images of shape (n, 1, H, W) and their labels (n,)."""

    images: torch.Tensor
    labels: torch.Tensor
    pixel_max: int

    def __len__(self) -> int:
        return len(self.images)

    def to_float(self) -> torch.Tensor:
        """Return the images as float32 in [0, 1]."""
        return self.images.float().div_(self.pixel_max)


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known data set; use one of {DATASETS}")


def _load_raw(name: str, root: str | Path | None, download: bool, mirrors: list[str] | None):
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8))
        labels = torch.from_numpy(digits.target.astype(np.uint8))
        return images, labels, None, None

    from autoexp.data.sources import load_idx_dataset

    arrays = load_idx_dataset(name, root=root, download=download, mirrors=mirrors)
    return (
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )


def _seeded_partition(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into a held-out part of round(fraction * n) indices and the rest, sorted."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(n, generator=generator)
    n_held_out = round(fraction * n)
    held_out, rest = permutation[:n_held_out], permutation[n_held_out:]
    return held_out.sort().values, rest.sort().values


def load_splits(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    mirrors: list[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float | None = 0.2,
    split_seed: int = 0,
) -> dict[str, Split]:
    """Load a data set and split it into train, validation and test.

    The test split is the data set's own where it has one (MNIST, Fashion-MNIST); digits holds
    out a seeded `test_fraction` instead. The validation split is a seeded `val_fraction` of the
    training images.

    Args:
        name: One of "digits", "mnist", "fashion_mnist".
        root: Folder searched for the IDX files; None means "data" in the current folder.
        download: Fetch missing IDX files from `mirrors`.
        mirrors: Base URLs to fetch from; None means the public mirrors.
        val_fraction: Fraction of the training images held out for validation, in (0, 1).
        test_fraction: Fraction held out for testing where the data set has no test split.
        split_seed: Seed of the permutations that choose the held-out images.

    Returns:
        A dict from "train", "val" and "test" to Split.
    """
    check_dataset_name(name)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be in (0, 1), e.g. 0.1")

    train_images, train_labels, test_images, test_labels = _load_raw(name, root, download, mirrors)
    if test_images is None:
        if test_fraction is None or not 0.0 < test_fraction < 1.0:
            raise ValueError(
                f"data.test_fraction={test_fraction} must be in (0, 1) for {name}, "
                "which has no test split of its own; e.g. 0.2"
            )
        test_index, train_index = _seeded_partition(len(train_images), test_fraction, split_seed)
        test_images, test_labels = train_images[test_index], train_labels[test_index]
        train_images, train_labels = train_images[train_index], train_labels[train_index]

    # A different seed stream for validation, so that changing test_fraction alone does not
    # reshuffle which images are used for validation in the data sets with a test split.
    val_index, train_index = _seeded_partition(len(train_images), val_fraction, split_seed + 1)
    pixel_max = PIXEL_MAX[name]

    def make(images: torch.Tensor, labels: torch.Tensor) -> Split:
        return Split(images.unsqueeze(1).contiguous(), labels.long(), pixel_max)

    return {
        "train": make(train_images[train_index], train_labels[train_index]),
        "val": make(train_images[val_index], train_labels[val_index]),
        "test": make(test_images, test_labels),
    }


def load_split(name: str, split: str, root: str | Path | None = None) -> torch.Tensor:
    """Return one split as the trainer sees it with the default settings (seed 0).

    Args:
        name: One of "digits", "mnist", "fashion_mnist".
        split: One of "train", "val", "test".
        root: Folder searched for the IDX files; None means "data" in the current folder.

    Returns:
        Float tensor of shape (n, 1, H, W) with values in [0, 1].
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    test_fraction = 0.2 if name == "digits" else None
    return load_splits(name, root=root, test_fraction=test_fraction)[split].to_float()


def _idx_item_count(path: Path) -> int:
    """Return the item count in an IDX header (bytes 4..8), reading only the header."""
    import gzip

    with path.open("rb") as file:
        is_gzip = file.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    with opener(path, "rb") as file:
        header = file.read(8)
    return int.from_bytes(header[4:8], "big")


def count_split_images(
    name: str, root: str | Path | None, val_fraction: float, test_fraction: float | None
) -> dict[str, int] | None:
    """Return the sizes of the train, val and test splits without loading the images.

    Returns None when the IDX files are not found or unreadable; loading the data then reports
    the problem in full.
    """
    if name == "digits":
        n_images = 1797
        n_test = round(test_fraction * n_images)
    else:
        from autoexp.data.sources import find_idx_files

        try:
            paths = find_idx_files(name, root if root is not None else "data")
            n_images = _idx_item_count(paths["train_labels"])
            n_test = _idx_item_count(paths["test_labels"])
        except (FileNotFoundError, OSError, EOFError, ValueError):
            return None
    n_fit = n_images - n_test if name == "digits" else n_images
    n_val = round(val_fraction * n_fit)
    return {"train": n_fit - n_val, "val": n_val, "test": n_test}
