"""PNG files of image grids and matplotlib figures, optionally copied to TensorBoard."""

import logging
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from autoexp.callbacks.images import filter_grid

log = logging.getLogger(__name__)

# Grids are enlarged by a whole factor until each tile is at least this many pixels high, so
# that 8x8 digits stay visible in an image viewer. 28x28 images are kept as they are.
MIN_TILE_PIXELS = 28


def enlarge(grid: torch.Tensor, image_height: int) -> torch.Tensor:
    """Repeat each pixel of a (3, H, W) grid so that tiles of image_height pixels get at least
    MIN_TILE_PIXELS high."""
    factor = max(1, math.ceil(MIN_TILE_PIXELS / image_height))
    return grid.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def image_grid(images: torch.Tensor, n_columns: int) -> torch.Tensor:
    """Return a grid of images with values in [0, 1], clamped and not rescaled."""
    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=n_columns, padding=1, pad_value=0.5)
    return enlarge(grid, images.shape[-2])


def signed_grid(filters: torch.Tensor) -> torch.Tensor:
    """Return a grid of filters, each scaled to its own min and max as in TensorBoard."""
    return enlarge(filter_grid(filters), filters.shape[-2])


class PictureWriter:
    """Saves pictures as PNG files in a folder and, given a TensorBoard folder, the same
    pictures as TensorBoard images tagged with the file name.

    Args:
        folder: Folder of the PNG files.
        tensorboard: Folder of the TensorBoard event file; None writes no events.
        step: Step recorded with the TensorBoard images, e.g. the training epoch.
    """

    def __init__(self, folder: Path, tensorboard: Path | None = None, step: int = 0):
        self.folder = folder
        self.step = step
        self.paths: list[Path] = []
        self.writer = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard))

    def save_grid(self, name: str, grid: torch.Tensor) -> Path:
        """Save a (3, H, W) grid with values in [0, 1] as NAME.png, pixel for pixel."""
        array = grid.permute(1, 2, 0).clamp(0, 1).numpy()
        path = self.folder / f"{name}.png"
        matplotlib.image.imsave(path, np.ascontiguousarray(array))
        return self._written(name, path)

    def save_figure(self, name: str, figure: Figure) -> Path:
        """Save a matplotlib figure as NAME.png."""
        path = self.folder / f"{name}.png"
        figure.savefig(path, dpi=figure.dpi)
        return self._written(name, path)

    def _written(self, name: str, path: Path) -> Path:
        self.paths.append(path)
        log.info("Wrote %s", path)
        if self.writer is not None:
            # The PNG read back, so that TensorBoard shows exactly the file's pixels.
            pixels = matplotlib.image.imread(path)[..., :3]
            self.writer.add_image(name, pixels, self.step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "PictureWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
