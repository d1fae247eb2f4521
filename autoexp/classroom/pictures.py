"""PNG files of image grids and matplotlib figures, optionally copied to TensorBoard."""

import logging
import math
from pathlib import Path

import matplotlib.image
import PIL.Image
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from autoexp.callbacks.images import filter_grid

log = logging.getLogger(__name__)

# Grids are enlarged by a whole factor until each tile is at least this many pixels high, so
# that 8x8 digits (enlarged 5 times) and 28x28 images (twice) are easy to see.
MIN_TILE_PIXELS = 40


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
        """Save a (3, H, W) grid with values in [0, 1] as NAME.png, pixel for pixel.

        A grid whose three channels are equal is saved as an 8-bit grayscale PNG, a quarter
        of the size of matplotlib's RGBA files.
        """
        pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
        if torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2]):
            image = PIL.Image.fromarray(pixels[0].numpy())
        else:
            image = PIL.Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
        path = self.folder / f"{name}.png"
        image.save(path)
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
            pixels = matplotlib.image.imread(path)
            if pixels.ndim == 2:
                self.writer.add_image(name, pixels, self.step, dataformats="HW")
            else:
                self.writer.add_image(name, pixels[..., :3], self.step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "PictureWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def labelled_rows_figure(rows: list[tuple[str, torch.Tensor]], title: str | None = None) -> Figure:
    """Return a figure with one row of images per (label, images) pair, labelled on the left.

    Every row has the same number of images of one shape, with values in [0, 1].
    """
    n_columns = len(rows[0][1])
    images = torch.cat([row_images.float().clamp(0, 1).cpu() for _, row_images in rows])
    grid = image_grid(images, n_columns)
    height, width = grid.shape[1:]
    tile = height / len(rows)
    # About 0.085 inch per character of the default 10-point font.
    label_inches = 0.3 + 0.085 * max(len(label) for label, _ in rows)
    title_inches = 0.35 if title else 0.05
    figure = Figure(figsize=(width / 100 + label_inches, height / 100 + title_inches), dpi=100)
    axes = figure.add_axes(
        (
            label_inches / figure.get_figwidth(),
            0,
            1 - label_inches / figure.get_figwidth(),
            1 - title_inches / figure.get_figheight(),
        )
    )
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([tile * (index + 0.5) for index in range(len(rows))])
    axes.set_yticklabels([label for label, _ in rows])
    axes.tick_params(length=0)
    if title:
        figure.suptitle(title, y=1 - 0.02 / figure.get_figheight())
    return figure
