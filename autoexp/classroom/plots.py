"""The pictures of the classroom scripts: filters, reconstructions, eigen-images, centroids."""

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure

from autoexp.classroom.checkpoints import (
    OVERRIDES_KEY,
    check_image_shape,
    completed_epochs,
    read_model_checkpoint,
)
from autoexp.classroom.cli import ScriptError
from autoexp.classroom.config import compose_config, merge_overrides
from autoexp.classroom.kmeans import ASSIGNMENTS_FILE, load_kmeans
from autoexp.classroom.pca import load_pca
from autoexp.classroom.pictures import (
    PictureWriter,
    image_grid,
    labelled_rows_figure,
    signed_grid,
)
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


def load_split_for(overrides: list[str], folder: Path, split: str, image_shape: tuple[int, ...]):
    """Return a split of the data that the overrides choose, as float images in [0, 1].

    Raises:
        ScriptError: The data's images do not have image_shape.
    """
    cfg = compose_config(overrides, folder)
    datamodule = instantiate(cfg.data)
    check_image_shape(image_shape, datamodule.image_shape, datamodule.name)
    return datamodule.load()[split].to_float()


def mean_figure(mean: np.ndarray) -> Figure:
    """Return the mean image on the pixel scale [0, 1], with a colour bar."""
    figure = Figure(figsize=(3.2, 2.6), dpi=100)
    axes = figure.add_subplot()
    shown = axes.imshow(mean[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title("mean training image")
    figure.colorbar(shown, ax=axes, label="pixel value")
    return figure


def spectrum_figure(eigenvalues: np.ndarray) -> Figure:
    """Return the eigenvalues on a log scale and the cumulative explained variance."""
    figure = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    values, cumulative = figure.subplots(1, 2)
    index = np.arange(1, len(eigenvalues) + 1)
    # Eigenvalues that are zero up to rounding (constant border pixels) cannot be shown on a
    # log scale, so the plot stops at the last one above 1e-12 of the largest.
    shown = eigenvalues > eigenvalues[0] * 1e-12
    values.semilogy(index[shown], eigenvalues[shown], marker=".", markersize=3)
    values.set_xlabel("component")
    values.set_ylabel("eigenvalue (variance)")
    values.set_title("eigenvalue spectrum")
    values.grid(True, alpha=0.3)
    cumulative.plot(index, np.cumsum(eigenvalues) / eigenvalues.sum(), marker=".", markersize=3)
    cumulative.set_xlabel("number of components")
    cumulative.set_ylabel("explained variance")
    cumulative.set_ylim(0, 1.02)
    cumulative.set_title("cumulative explained variance")
    cumulative.grid(True, alpha=0.3)
    return figure


def plot_eigen(
    folder: Path,
    overrides: list[str],
    tensorboard: Path | None = None,
    n_eigenvectors: int = 16,
    n_images: int = 8,
    counts: tuple[int, ...] = (1, 4, 16, 64),
) -> list[Path]:
    """Save pictures of the PCA that pca.py wrote to folder.

    pca-mean.png, pca-eigenvectors.png (leading eigenvectors, each scaled to its own range),
    pca-reconstructions.png (test images and their projections on a few leading components)
    and pca-spectrum.png.

    Returns:
        The PNG files written.
    """
    pca = load_pca(folder)
    n_pixels = pca.mean.size
    n_available = pca.eigenvectors.shape[1]
    counts = tuple(count for count in counts if count < n_available) + (n_available,)
    images = load_split_for(
        merge_overrides(pca.overrides, overrides), folder, "test", pca.image_shape
    )
    images = images[:n_images].double()
    leading = torch.from_numpy(pca.eigenvectors[:, :n_eigenvectors].T.copy())

    rows = [("test images", images)]
    rows += [
        (f"{count} of {n_pixels} components", pca.reconstruct(images, count)) for count in counts
    ]
    with PictureWriter(folder, tensorboard) as writer:
        writer.save_figure("pca-mean", mean_figure(pca.mean))
        writer.save_grid("pca-eigenvectors", signed_grid(leading.reshape(-1, *pca.image_shape)))
        writer.save_figure("pca-reconstructions", labelled_rows_figure(rows))
        writer.save_figure("pca-spectrum", spectrum_figure(pca.eigenvalues))
    return writer.paths


def cluster_sizes_figure(sizes: np.ndarray) -> Figure:
    figure = Figure(
        figsize=(max(4.0, 0.35 * len(sizes) + 1.5), 2.8), dpi=100, layout="constrained"
    )
    axes = figure.add_subplot()
    axes.bar(np.arange(len(sizes)), sizes, color="tab:blue")
    axes.set_xlabel("cluster")
    axes.set_ylabel("training images")
    axes.set_title("cluster sizes")
    if len(sizes) <= 32:
        axes.set_xticks(np.arange(len(sizes)))
    return figure


def plot_centroids(
    folder: Path,
    overrides: list[str],
    tensorboard: Path | None = None,
    n_clusters: int = 6,
    n_members: int = 12,
) -> list[Path]:
    """Save pictures of the k-means result that kmeans.py wrote to folder.

    kmeans-centroids.png (the centroids on the pixel scale), kmeans-cluster-sizes.png, and
    kmeans-cluster-members.png: for the n_clusters largest clusters, the centroid followed by
    n_members of its training images drawn at random (seed 0).

    Returns:
        The PNG files written.
    """
    kmeans = load_kmeans(folder)
    centroids = torch.from_numpy(kmeans.centroids)
    image_shape = tuple(centroids.shape[1:])
    train = load_split_for(
        merge_overrides(kmeans.overrides, overrides), folder, "train", image_shape
    )
    if len(train) != len(kmeans.assignments):
        raise ScriptError(
            f"the training split has {len(train)} images but {ASSIGNMENTS_FILE} has "
            f"{len(kmeans.assignments)} assignments; pass the data overrides kmeans.py ran with"
        )
    sizes = kmeans.cluster_sizes
    assignments = torch.from_numpy(kmeans.assignments)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for cluster in np.argsort(-sizes, kind="stable")[:n_clusters].tolist():
        members = (assignments == cluster).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[:n_members]]
        row = torch.cat([centroids[cluster : cluster + 1].float(), train[chosen]])
        # Small clusters are padded with blank tiles, so every row has the same length.
        padding = torch.full((1 + n_members - len(row), *image_shape), 0.5)
        rows.append((f"cluster {cluster} ({sizes[cluster]} images)", torch.cat([row, padding])))

    # One row for up to 10 clusters, as many rows of 10 as needed beyond that.
    n_columns = min(len(centroids), 10)
    with PictureWriter(folder, tensorboard) as writer:
        writer.save_grid("kmeans-centroids", image_grid(centroids, n_columns))
        writer.save_figure("kmeans-cluster-sizes", cluster_sizes_figure(sizes))
        title = "centroid, then training images of the cluster"
        writer.save_figure("kmeans-cluster-members", labelled_rows_figure(rows, title))
    return writer.paths
