"""LightningDataModule that serves batches by indexing in-memory uint8 tensors."""

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from autoexp.data.splits import IMAGE_SHAPES, Split, check_dataset_name, load_splits

log = logging.getLogger(__name__)


class BatchDataset(Dataset):
    """Dataset whose items are whole batches: `dataset[index_tensor]` returns (images, labels)."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # On one CPU thread, index_select gathered 256 and 4,096 Fashion-MNIST images 11 and 6
        # times faster than advanced indexing, images[index].
        return self.split.images.index_select(0, index), self.split.labels.index_select(0, index)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchIndexSampler(Sampler[torch.Tensor]):
    """Yields index tensors, one per batch, over a seeded permutation that changes each epoch.

    Under DDP the permutation is cut into global batches of `batch_size * world_size` indices
    and each rank takes every world_size-th index of each global batch. Every index is used
    exactly once per epoch and all ranks see the same number of non-empty batches, so sums
    accumulated across ranks (PCA covariance, k-means cluster sums) are exact.

    The permutation is drawn on the CPU, so it is the same on every device, and moved to
    `device` once per epoch; the index tensors then live there.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self.epoch = 0
        # Batches yielded so far in the current epoch, and the (epoch, batches) to skip once.
        self.batches_yielded = 0
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Return the position in the epoch: the epoch and the batches yielded so far."""
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration over the same epoch skip the batches already yielded."""
        self._resume_at = (state["epoch"], state["batches_yielded"])

    def _global_batches(self, world_size: int) -> list[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.device is not None:
            order = order.to(self.device)
        batches = list(order.split(self.batch_size * world_size))
        # A last global batch too small to give each rank an index joins the one before it.
        if len(batches) > 1 and len(batches[-1]) < world_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        rank, world_size = _world()
        skip = 0
        if self._resume_at is not None:
            epoch, batches_yielded = self._resume_at
            self._resume_at = None
            if epoch == self.epoch:
                skip = batches_yielded
        self.batches_yielded = skip
        for batch in self._global_batches(world_size)[skip:]:
            self.batches_yielded += 1
            yield batch[rank::world_size]

    def __len__(self) -> int:
        _, world_size = _world()
        global_batch = self.batch_size * world_size
        n_batches = math.ceil(self.n / global_batch)
        last_size = self.n - (n_batches - 1) * global_batch
        if n_batches > 1 and last_size < world_size:
            return n_batches - 1
        return n_batches


class ResumableDataLoader(DataLoader):
    """DataLoader over a BatchIndexSampler whose position in the epoch goes into checkpoints.

    Lightning saves `state_dict()` of a training DataLoader that has one and passes it to
    `load_state_dict()` when it resumes from a checkpoint written mid-epoch, such as
    checkpoints/interrupted.ckpt. The epoch then continues with the next batch of the same
    permutation instead of starting the permutation again. Without worker processes the
    sampler has yielded exactly the batches that training consumed, because Lightning (2.6)
    fetches no batch ahead from a loader with a length. ImageDataModule uses this class only
    then, for the training split.
    """

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


class ImageDataModule(pl.LightningDataModule):
    """Digits, MNIST or Fashion-MNIST, each split held in memory as one uint8 tensor.

    Batches are drawn by indexing those tensors with a seeded permutation and converted to
    float32 in [0, 1] a whole batch at a time, after the transfer to the device. When the
    trainer runs on a GPU and num_workers is 0, a copy of each split is moved to the GPU once
    at setup, so batches are gathered there and nothing is copied per batch.

    Args:
        name: One of "digits", "mnist", "fashion_mnist".
        root: Folder searched for the IDX files.
        download: Fetch missing IDX files from `mirrors`.
        mirrors: Base URLs to fetch from; None means the public mirrors.
        batch_size: Training batch size per process.
        eval_batch_size: Batch size for validation and test.
        val_fraction: Fraction of the training images held out for validation.
        test_fraction: Fraction held out for testing where the data set has no test split.
        split_seed: Seed of the split permutations and of the batch order.
        num_workers: DataLoader worker processes; 0 indexes in the main process, which is
            fastest for in-memory tensors.
        splits_on_gpu: Keep a copy of the splits on the trainer's GPU, if it runs on one and
            num_workers is 0.
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | Path | None = "data",
        download: bool = False,
        mirrors: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        test_fraction: float | None = 0.2,
        split_seed: int = 0,
        num_workers: int = 0,
        splits_on_gpu: bool = True,
    ):
        super().__init__()
        check_dataset_name(name)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key}={value!r} must be an integer >= 1")
        self.name = name
        self.root = root
        self.download = download
        self.mirrors = list(mirrors) if mirrors is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.splits_on_gpu = splits_on_gpu
        self.splits: dict[str, Split] | None = None
        # Copies of the splits on the GPU that the dataloaders index, or None.
        self.device_splits: dict[str, Split] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPES[self.name]

    def prepare_data(self) -> None:
        # Runs on one process per node before setup, so a download happens once.
        self.load()

    def setup(self, stage: str | None = None) -> None:
        splits = self.load()
        device = self._batch_device()
        if device is None:
            self.device_splits = None
        elif self.device_splits is None or self.device_splits["train"].images.device != device:
            # NOTE: untested on a GPU: no test machine had one when this path was written.
            self.device_splits = {
                key: Split(split.images.to(device), split.labels.to(device), split.pixel_max)
                for key, split in splits.items()
            }
            log.info("Moved the %s splits to %s", self.name, device)

    def _batch_device(self) -> torch.device | None:
        """Return the GPU to gather batches on, or None to gather them on the CPU."""
        trainer = self.trainer
        if not self.splits_on_gpu or self.num_workers > 0 or trainer is None:
            return None
        device = trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def load(self) -> dict[str, Split]:
        """Load the splits once; later calls return the same tensors."""
        if self.splits is None:
            self.splits = load_splits(
                self.name,
                root=self.root,
                download=self.download,
                mirrors=self.mirrors,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                split_seed=self.split_seed,
            )
            sizes = ", ".join(f"{key} {len(split)}" for key, split in self.splits.items())
            log.info("Loaded %s: %s images", self.name, sizes)
        return self.splits

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self.load()[split]
        device = None
        if self.device_splits is not None:
            data = self.device_splits[split]
            device = data.images.device
        sampler = BatchIndexSampler(
            len(data), batch_size, shuffle, seed=self.split_seed, device=device
        )
        # Workers prefetch batches, so the sampler's count would run ahead of training.
        resumable = split == "train" and self.num_workers == 0
        loader_class = ResumableDataLoader if resumable else DataLoader
        # batch_size=None turns off automatic batching: each sampler item is a whole batch.
        return loader_class(
            BatchDataset(data),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        pixel_max = self.load()["train"].pixel_max
        return images.float().div_(pixel_max), labels

    def sample_images(self, split: str, n: int) -> torch.Tensor:
        """Return the first n images of a split as float32 in [0, 1], shape (n, 1, H, W)."""
        data = self.load()[split]
        return data.images[:n].float().div_(data.pixel_max)
