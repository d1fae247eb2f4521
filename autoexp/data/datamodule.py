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

PIXEL_DTYPES = ("uint8", "float32")

log = logging.getLogger(__name__)


class BatchDataset(Dataset):
    """Dataset whose items are whole batches: `dataset[index]` returns (images, labels).

    The index is a tensor of indices, whose images are copied, or a slice, whose images are a
    view of the split's tensor.
    """

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, slice):
            return self.split.images[index], self.split.labels[index]
        # On one CPU thread, index_select gathered 256 and 4,096 Fashion-MNIST images 11 and 6
        # times faster than advanced indexing, images[index].
        return self.split.images.index_select(0, index), self.split.labels.index_select(0, index)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchIndexSampler(Sampler[torch.Tensor | slice]):
    """Yields the indices of each batch: a tensor of them over a seeded permutation that
    changes each epoch, or a slice when `shuffle` is false.

    Under DDP the permutation is cut into global batches of `batch_size * world_size` indices
    and each rank takes every world_size-th index of each global batch. Every index is used
    exactly once per epoch and all ranks see the same number of non-empty batches, so sums
    accumulated across ranks (PCA covariance, k-means cluster sums) are exact.

    The permutation is drawn on the CPU, so it is the same on every device, and moved to
    `device` once per epoch; the index tensors then live there. Without shuffling, each rank's
    share of a batch is a slice with step world_size, so the batch is a view of the split.
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

    def _global_batches(self, world_size: int) -> list[torch.Tensor | slice]:
        global_batch = self.batch_size * world_size
        if not self.shuffle:
            starts = list(range(0, self.n, global_batch))
            stops = [*starts[1:], self.n]
            # A last global batch too small to give each rank an index joins the one before it.
            if len(starts) > 1 and stops[-1] - starts[-1] < world_size:
                stops[-2:] = [self.n]
                starts.pop()
            return [slice(start, stop) for start, stop in zip(starts, stops, strict=True)]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.device is not None:
            order = order.to(self.device)
        batches = list(order.split(global_batch))
        if len(batches) > 1 and len(batches[-1]) < world_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def __iter__(self) -> Iterator[torch.Tensor | slice]:
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
            if isinstance(batch, slice):
                yield slice(batch.start + rank, batch.stop, world_size)
            else:
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
    """Digits, MNIST or Fashion-MNIST, each split held in memory as one tensor.

    Batches are drawn by indexing those tensors, in a seeded permutation or in order. Splits
    kept as uint8 are converted to float32 in [0, 1] a whole batch at a time, after the
    transfer to the device. Splits kept as float32 are converted once and take 4 times the
    memory. They are served as they are, so unshuffled batches are views of the split, with
    no copy at all. When the trainer runs on a GPU and num_workers is 0, a copy of each split
    is moved to the GPU once at setup, so batches are gathered there and nothing is copied per
    batch.

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
        shuffle: Draw the training batches in a new seeded order each epoch. False serves
            them in the order of the split, as validation and test batches always are.
        pixel_dtype: "uint8" or "float32", the type of the images that batches are drawn
            from. Models receive float32 in [0, 1] either way.
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
        shuffle: bool = True,
        pixel_dtype: str = "uint8",
    ):
        super().__init__()
        check_dataset_name(name)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key}={value!r} must be an integer >= 1")
        if pixel_dtype not in PIXEL_DTYPES:
            raise ValueError(f"data.pixel_dtype={pixel_dtype!r} must be one of {PIXEL_DTYPES}")
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
        self.shuffle = shuffle
        self.pixel_dtype = pixel_dtype
        # The splits as loaded, with uint8 images.
        self.splits: dict[str, Split] | None = None
        # The splits that the dataloaders index: converted to pixel_dtype, on the GPU when
        # the trainer runs there. None until the first dataloader or setup.
        self.batch_splits: dict[str, Split] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPES[self.name]

    def prepare_data(self) -> None:
        # Runs on one process per node before setup, so a download happens once.
        self.load()

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self._batch_device() or torch.device("cpu")
        if self.batch_splits is None or self.batch_splits["train"].images.device != device:
            self.batch_splits = self._prepare_batch_splits(device)

    def _prepare_batch_splits(self, device: torch.device) -> dict[str, Split]:
        prepared = {}
        for key, split in self.load().items():
            if self.pixel_dtype == "float32":
                split = Split(split.to_float(), split.labels, pixel_max=1)
            prepared[key] = Split(
                split.images.to(device), split.labels.to(device), split.pixel_max
            )
        if device.type != "cpu":
            # NOTE: untested on a GPU: no test machine had one when this path was written.
            log.info("Moved the %s splits to %s", self.name, device)
        return prepared

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
        if self.batch_splits is None:
            self.batch_splits = self._prepare_batch_splits(torch.device("cpu"))
        data = self.batch_splits[split]
        device = data.images.device if data.images.device.type != "cpu" else None
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
        return self._loader("train", self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if images.is_floating_point():
            # Already in [0, 1]. It can be a view of a float32 split, so it is never scaled in
            # place here.
            return images, labels
        pixel_max = self.load()["train"].pixel_max
        images = images.float().div_(pixel_max)
        if self.trainer is not None:
            # Lightning converts batches to the precision's type (float64 for 64-true) before
            # the transfer, where uint8 images stay as they are, so they are converted here.
            images = self.trainer.precision_plugin.convert_input(images)
        return images, labels

    def float_images(self, split: str) -> torch.Tensor:
        """Return the images of a split as float32 in [0, 1] on the CPU.

        With pixel_dtype "float32" and the splits on the CPU this is the tensor that batches
        are drawn from, not a copy, so callers must not modify it.
        """
        if self.batch_splits is not None and self.pixel_dtype == "float32":
            images = self.batch_splits[split].images
            if images.device.type == "cpu":
                return images
        return self.load()[split].to_float()

    def sample_images(self, split: str, n: int) -> torch.Tensor:
        """Return the first n images of a split as float32 in [0, 1], shape (n, 1, H, W)."""
        data = self.load()[split]
        return data.images[:n].float().div_(data.pixel_max)
