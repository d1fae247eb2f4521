"""Helpers for models fitted from data statistics instead of gradients (PCA by eigh, k-means).

These models accumulate sums over the batches of an epoch, add them up across DDP ranks and
update their weights in closed form. The data module's BatchIndexSampler gives every rank
a disjoint shard and the same number of batches, so the summed statistics are exact.
"""

from collections.abc import Iterator

import pytorch_lightning as pl
import torch


class BatchCounter(torch.optim.Optimizer):
    """Optimizer that changes no parameter and only counts steps.

    Models that update their weights in closed form step it once per batch, so that
    `trainer.global_step` counts batches as it does for gradient-trained models.
    ModelCheckpoint saves only when the global step has moved, and ImageLogger uses it as
    the step of its images.
    """

    def __init__(self, params):
        super().__init__(params, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        return closure() if closure is not None else None


def sum_across_ranks(module: pl.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Return the sum of tensor over all DDP ranks; the tensor itself in a single process."""
    trainer = module._trainer
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def gather_across_ranks(
    module: pl.LightningModule, tensor: torch.Tensor, dim: int = 0
) -> torch.Tensor:
    """Concatenate tensor, of the same shape on every rank, along dim over the DDP ranks."""
    trainer = module._trainer
    if trainer is None or trainer.world_size == 1:
        return tensor
    gathered = trainer.strategy.all_gather(tensor)  # (world_size, *tensor.shape)
    return torch.cat(list(gathered), dim=dim)


def broadcast_from_rank_zero(module: pl.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Return rank 0's value of tensor on every rank, on the module's device."""
    trainer = module._trainer
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.broadcast(tensor.cpu(), src=0).to(module.device)


def is_last_training_batch(module: pl.LightningModule, batch_idx: int) -> bool:
    """Return whether batch_idx is the last training batch of the epoch on this rank."""
    return batch_idx + 1 >= module.trainer.num_training_batches


def training_batches(module: pl.LightningModule) -> Iterator[torch.Tensor]:
    """Yield this rank's shard of the training split as the training steps see it.

    The batches come from a new train dataloader of the trainer's data module, moved to the
    module's device through the data module's transfer hooks, and flattened to
    (batch_size, n_pixels).
    """
    trainer = module.trainer
    if trainer.datamodule is None:
        raise TypeError(
            f"{type(module).__name__} needs the trainer to have a LightningDataModule, "
            "e.g. trainer.fit(model, datamodule=ImageDataModule(...))"
        )
    for batch in trainer.datamodule.train_dataloader():
        images, _ = trainer.strategy.batch_to_device(batch)
        yield images.flatten(1)


def _image_datamodule(module: pl.LightningModule):
    datamodule = module.trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "load"):
        raise TypeError(
            f"{type(module).__name__} needs an autoexp.data.ImageDataModule (or a data module "
            f"with its load() method), got {type(datamodule).__name__}"
        )
    return datamodule


def training_images(module: pl.LightningModule) -> torch.Tensor:
    """Return the whole training split, the same on every rank, as float32 rows on the CPU.

    The rows may be the data module's own tensor (ImageDataModule with pixel_dtype float32),
    so callers must not modify them.

    Raises:
        TypeError: The trainer's data module does not hold its splits in memory like
            autoexp.data.ImageDataModule does.
    """
    datamodule = _image_datamodule(module)
    if hasattr(datamodule, "float_images"):
        return datamodule.float_images("train").flatten(1)
    return datamodule.load()["train"].to_float().flatten(1)


def n_training_images(module: pl.LightningModule) -> int:
    """Return the number of images in the training split of the trainer's data module."""
    return len(_image_datamodule(module).load()["train"])
