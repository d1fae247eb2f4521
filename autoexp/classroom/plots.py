"""The pictures of the classroom scripts: filters, reconstructions, eigen-images, centroids."""

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate

from autoexp.classroom.checkpoints import (
    OVERRIDES_KEY,
    check_image_shape,
    completed_epochs,
    read_model_checkpoint,
)
from autoexp.classroom.config import compose_config, merge_overrides
from autoexp.classroom.pictures import PictureWriter, image_grid, signed_grid
from autoexp.models import load_model

log = logging.getLogger(__name__)


def plot_autoencoder(
    path: Path,
    overrides: list[str],
    folder: Path,
    tensorboard: Path | None = None,
    n_images: int = 16,
    max_filters: int = 64,
) -> list[Path]:
    """Save the filters of an mlp_ae checkpoint and test images with their reconstructions.

    The files are named after the checkpoint, e.g. weight-1-encoder-filters.png,
    weight-1-decoder-filters.png and weight-1-test-reconstructions.png.

    Returns:
        The PNG files written.
    """
    checkpoint, _ = read_model_checkpoint(path, ("mlp_ae",))
    overrides = merge_overrides(list(checkpoint.get(OVERRIDES_KEY, [])), overrides)
    cfg = compose_config(overrides, folder)
    datamodule = instantiate(cfg.data)
    model = load_model(path)
    check_image_shape(model.image_shape, datamodule.image_shape, datamodule.name)

    images = datamodule.sample_images("test", n_images)
    with torch.no_grad():
        reconstructions = model(images)
    with PictureWriter(folder, tensorboard, step=completed_epochs(checkpoint)) as writer:
        for group, filters in model.filters().items():
            writer.save_grid(f"{path.stem}-{group}-filters", signed_grid(filters[:max_filters]))
        pairs = torch.cat([images, reconstructions])
        writer.save_grid(f"{path.stem}-test-reconstructions", image_grid(pairs, len(images)))
    return writer.paths
