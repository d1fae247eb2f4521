"""Reconstructions and learned filters, logged to TensorBoard at each validation epoch."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid


def tensorboard_writer(trainer: pl.Trainer):
    """Return the SummaryWriter of the trainer's TensorBoard logger, or None without one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def reconstruction_grid(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Return a grid with the images in the top row and their reconstructions below."""
    both = torch.cat([images, reconstructions.clamp(0, 1)]).cpu()
    return make_grid(both, nrow=len(images), padding=1, pad_value=0.5)


def reconstruction_figure(images: torch.Tensor, reconstructions: torch.Tensor):
    """Return a matplotlib figure: images on top, reconstructions below, each titled with its
    squared error summed over pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, reconstructions = images.cpu(), reconstructions.cpu()
    errors = (images - reconstructions).pow(2).flatten(1).sum(1)
    n = len(images)
    figure, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), squeeze=False)
    for i in range(n):
        for row, picture in enumerate((images[i], reconstructions[i])):
            axis = axes[row, i]
            axis.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[1, i].set_title(f"{errors[i]:.3g}", fontsize=8)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("output")
    figure.tight_layout()
    return figure


def filter_grid(filters: torch.Tensor) -> torch.Tensor:
    """Return a grid of filters, each scaled to its own min and max so signed weights show."""
    n_columns = max(1, int(len(filters) ** 0.5 + 0.5))
    return make_grid(
        filters.float().cpu(),
        nrow=n_columns,
        padding=1,
        normalize=True,
        scale_each=True,
        pad_value=0.5,
    )


class ImageLogger(pl.Callback):
    """Logs, on rank zero at the end of each validation epoch, a fixed set of validation images
    above their reconstructions (`images/reconstructions`) and the model's filters
    (`filters/<group>`). The number of images per epoch is bounded by `n_images` and
    `max_filters` per group, which keeps the event files small. The same reconstructions also go
    in as a matplotlib figure (`figures/reconstructions`), titled with each image's error, and
    so do the figures that the model's `figures()` method returns, if it has one.

    Args:
        n_images: Validation images shown with their reconstructions.
        max_filters: Filters shown per group, the first ones in the model's order.
    """

    def __init__(self, n_images: int = 8, max_filters: int = 64):
        self.n_images = n_images
        self.max_filters = max_filters

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        step = trainer.global_step

        images = trainer.datamodule.sample_images("val", self.n_images).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            reconstructions = pl_module(images)
        pl_module.train(was_training)
        writer.add_image(
            "images/reconstructions", reconstruction_grid(images, reconstructions), step
        )
        writer.add_figure(
            "figures/reconstructions", reconstruction_figure(images, reconstructions), step
        )
        model_figures = getattr(pl_module, "figures", None)
        if callable(model_figures):
            for name, figure in model_figures().items():
                writer.add_figure(f"figures/{name}", figure, step)

        for name, filters in pl_module.filters().items():
            writer.add_image(f"filters/{name}", filter_grid(filters[: self.max_filters]), step)
