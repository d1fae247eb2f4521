"""Splits, batch sampling and the data module on scikit-learn's digits."""

import pytest
import torch

from autoexp.data import BatchIndexSampler, ImageDataModule, load_split, load_splits
from autoexp.data import datamodule as datamodule_module


def test_load_splits_digits_sizes():
    splits = load_splits("digits", val_fraction=0.1, test_fraction=0.2, split_seed=0)
    assert len(splits["test"]) == 359
    assert len(splits["val"]) == 144
    assert len(splits["train"]) == 1797 - 359 - 144
    assert splits["train"].images.dtype == torch.uint8
    assert splits["train"].images.shape[1:] == (1, 8, 8)


def test_load_splits_seeded_and_disjoint():
    first = load_splits("digits", split_seed=3)
    again = load_splits("digits", split_seed=3)
    other = load_splits("digits", split_seed=4)
    for name in ("train", "val", "test"):
        assert torch.equal(first[name].images, again[name].images)
    assert not torch.equal(first["val"].images, other["val"].images)

    # Rows of the digits array are distinct images except for a few duplicates, so compare
    # the sets of flattened images and allow only the duplicates that the data set holds.
    from sklearn.datasets import load_digits

    all_rows = {row.tobytes() for row in load_digits().images.astype("uint8")}
    n_duplicated = 1797 - len(all_rows)
    rows = {
        name: [bytes(image.flatten().tolist()) for image in first[name].images]
        for name in ("train", "val", "test")
    }
    shared = (
        set(rows["train"]) & set(rows["val"])
        | set(rows["train"]) & set(rows["test"])
        | set(rows["val"]) & set(rows["test"])
    )
    assert len(shared) <= n_duplicated
    assert sum(len(r) for r in rows.values()) == 1797


def test_load_split_float_range():
    images = load_split("digits", "train")
    assert images.dtype == torch.float32
    assert images.shape[1:] == (1, 8, 8)
    assert images.min() == 0.0
    assert images.max() == 1.0


def test_load_split_matches_data_module():
    datamodule = ImageDataModule("digits")
    datamodule.setup("fit")
    for split in ("train", "val", "test"):
        expected = datamodule.splits[split].to_float()
        torch.testing.assert_close(load_split("digits", split), expected)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_load_splits_rejects_val_fraction(bad):
    with pytest.raises(ValueError, match=rf"data.val_fraction={bad} must be in \(0, 1\)"):
        load_splits("digits", val_fraction=bad)


def test_load_split_rejects_unknown_names():
    with pytest.raises(ValueError, match="data.name='cifar' is not a known data set"):
        load_split("cifar", "train")
    with pytest.raises(ValueError, match="split='dev' must be one of"):
        load_split("digits", "dev")


def batch_indices(n: int, batch: torch.Tensor | slice) -> torch.Tensor:
    """Return the indices of a sampler's batch, which is a tensor or a slice of range(n)."""
    return torch.arange(n)[batch] if isinstance(batch, slice) else batch


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 7, 64, 65, 100])
def test_batch_sampler_covers_each_index_once(monkeypatch, world_size, n, shuffle):
    batches_per_rank = []
    for rank in range(world_size):
        monkeypatch.setattr(datamodule_module, "_world", lambda rank=rank: (rank, world_size))
        sampler = BatchIndexSampler(n, batch_size=16, shuffle=shuffle, seed=5)
        sampler.set_epoch(2)
        batches = [batch_indices(n, batch) for batch in sampler]
        assert len(batches) == len(sampler)
        batches_per_rank.append(batches)

    counts = {len(batches) for batches in batches_per_rank}
    assert len(counts) == 1, "ranks must see the same number of batches"
    every_index = torch.cat([torch.cat(batches) for batches in batches_per_rank])
    if n >= world_size:
        assert all(len(batch) > 0 for batches in batches_per_rank for batch in batches)
    assert torch.equal(every_index.sort().values, torch.arange(n))


def test_batch_sampler_unshuffled_slices_in_order():
    sampler = BatchIndexSampler(50, batch_size=16, shuffle=False)
    expected = [slice(0, 16, 1), slice(16, 32, 1), slice(32, 48, 1), slice(48, 50, 1)]
    assert list(sampler) == expected
    assert len(sampler) == 4


def test_data_module_unshuffled_batches_are_views():
    datamodule = ImageDataModule("digits", batch_size=32, shuffle=False, pixel_dtype="float32")
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    split = datamodule.batch_splits["train"]
    assert images.dtype == torch.float32
    assert images.data_ptr() == split.images.data_ptr()
    assert torch.equal(images, datamodule.splits["train"].to_float()[:32])
    assert torch.equal(labels, datamodule.splits["train"].labels[:32])
    # The float32 batch passes the transfer hook unchanged and unscaled.
    transferred, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert transferred is images
    assert datamodule.float_images("train") is split.images


def test_data_module_rejects_bad_pixel_dtype():
    with pytest.raises(ValueError, match="data.pixel_dtype='float16' must be one of"):
        ImageDataModule("digits", pixel_dtype="float16")


def test_batch_sampler_seeded_per_epoch():
    sampler = BatchIndexSampler(50, batch_size=50, shuffle=True, seed=1)
    sampler.set_epoch(0)
    first = next(iter(sampler))
    assert torch.equal(first, next(iter(sampler)))
    sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(sampler)))


def test_data_module_batches_are_float_in_unit_range():
    datamodule = ImageDataModule("digits", batch_size=32)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8
    images, labels = datamodule.on_after_batch_transfer((images, labels), 0)
    assert images.dtype == torch.float32
    assert images.shape == (32, 1, 8, 8)
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    assert labels.shape == (32,)


def test_data_module_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="data.batch_size=0 must be an integer >= 1"):
        ImageDataModule("digits", batch_size=0)


def test_batch_sampler_device_keeps_order():
    on_cpu = BatchIndexSampler(50, batch_size=16, shuffle=True, seed=2)
    on_device = BatchIndexSampler(50, batch_size=16, shuffle=True, seed=2, device="cpu")
    for expected, batch in zip(on_cpu, on_device, strict=True):
        assert batch.device == torch.device("cpu")
        assert torch.equal(batch, expected)


def test_data_module_cpu_trainer_keeps_splits_on_cpu():
    import pytorch_lightning as pl

    datamodule = ImageDataModule("digits", batch_size=32)
    datamodule.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    datamodule.setup("fit")
    assert datamodule.batch_splits["train"].images.device == torch.device("cpu")
    images, _ = next(iter(datamodule.train_dataloader()))
    assert images.device == torch.device("cpu")
