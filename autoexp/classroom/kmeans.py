"""k-means by Lloyd's algorithm through kmeans_ae, its objective, and its saved files.

The files are plain NumPy arrays, which `numpy.load` reads and `torch.from_numpy` turns into
tensors:

    kmeans-centroids.npy    centroids as images, shape (k, channels, height, width)
    kmeans-assignments.npy  index of the nearest final centroid of each training image, (n,)
    kmeans.json             the overrides that chose the data, and the objective per iteration

The objective is the sum over the training images of the squared distance to the nearest
centroid, which is also kmeans_ae's reconstruction error summed over the images.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from autoexp.classroom.cli import ScriptError
from autoexp.classroom.config import compose_config
from autoexp.classroom.pca import load_array
from autoexp.classroom.training import build, fit_quietly, output_folder
from autoexp.models import KMeansAutoencoder

CENTROIDS_FILE = "kmeans-centroids.npy"
ASSIGNMENTS_FILE = "kmeans-assignments.npy"
SETTINGS_FILE = "kmeans.json"


def nearest_centroids(
    x: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each row's nearest centroid and squared distance to it, in float64.

    Args:
        x: Images as rows, shape (n, n_pixels).
        centroids: Shape (k, n_pixels).
    """
    x, centroids = x.double(), centroids.double()
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    distances, labels = squared.clamp(min=0).min(dim=1)
    return labels, distances


def objective(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Return the k-means objective: the sum over rows of x of the squared distance to the
    nearest centroid."""
    _, distances = nearest_centroids(x, centroids)
    return distances.sum().item()


class CentroidRecorder(pl.Callback):
    """Keeps a copy of the centroids before the first Lloyd iteration and after each one.

    Each copy has shape (n_init, k, n_pixels): kmeans_ae runs model.n_init fits side by side.
    """

    def __init__(self):
        self.snapshots: list[torch.Tensor] = []

    def _record(self, pl_module: KMeansAutoencoder) -> None:
        centroids = pl_module.centroids.detach().cpu().clone()
        self.snapshots.append(centroids.reshape(-1, pl_module.latent_dim, pl_module.n_pixels))

    # The centroids before each epoch's iteration, and after the last one at the end of
    # training, whichever hook of the model updates them.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._record(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(pl_module)


def best_objective(x: torch.Tensor, runs: torch.Tensor) -> float:
    """Return the lowest k-means objective among runs of centroids, shape (n_init, k, D).

    Lloyd's algorithm never increases the objective of any run, so the lowest one never
    increases either.
    """
    return min(objective(x, centroids) for centroids in runs)


@dataclass
class KMeans:
    """Result of Lloyd's algorithm on a training split."""

    centroids: np.ndarray
    assignments: np.ndarray
    objectives: list[float]
    overrides: list[str]

    @property
    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=len(self.centroids))


def fit_kmeans(overrides: list[str]) -> tuple[KMeans, torch.Tensor, KMeansAutoencoder]:
    """Run Lloyd's algorithm on the training split that the overrides choose.

    A kmeans_ae with the lloyd solver is fitted by a Lightning Trainer, one Lloyd iteration per
    epoch, until its tolerance or trainer.max_epochs stops it. Its settings come from
    conf/model/kmeans_ae.yaml and the overrides, e.g. model.latent_dim=16 for 16 clusters. With
    model.n_init > 1 the result is the model's best run, and each objective is the lowest
    among the runs.

    Returns:
        The result, with the objective before the first iteration and after each one, the
        training images as float64 rows, and the fitted model.
    """
    for override in overrides:
        key = override.lstrip("+~").split("=")[0]
        if key == "model" or key == "model.solver":
            raise ScriptError(
                f"override {override!r} is not supported: k-means uses kmeans_ae with the "
                "lloyd solver; drop it"
            )
    recorder = CentroidRecorder()
    with output_folder(None) as folder:
        cfg = compose_config(["model=kmeans_ae", "model.solver=lloyd", *overrides], folder)
        datamodule, model = build(cfg)
        fit_quietly(cfg, datamodule, model, callbacks=[recorder])
    x = datamodule.load()["train"].to_float().flatten(1).double()
    centroids = model.best_centroids.cpu()
    labels, _ = nearest_centroids(x, centroids)
    result = KMeans(
        centroids=centroids.reshape(-1, *model.image_shape).numpy(),
        assignments=labels.numpy(),
        objectives=[best_objective(x, snapshot) for snapshot in recorder.snapshots],
        overrides=list(overrides),
    )
    return result, x, model


def save_kmeans(kmeans: KMeans, folder: Path) -> list[Path]:
    """Save the result as the files listed in this module's docstring."""
    np.save(folder / CENTROIDS_FILE, kmeans.centroids)
    np.save(folder / ASSIGNMENTS_FILE, kmeans.assignments)
    settings = {
        "overrides": kmeans.overrides,
        "k": len(kmeans.centroids),
        "iterations": len(kmeans.objectives) - 1,
        "objective_per_iteration": kmeans.objectives,
        "cluster_sizes": kmeans.cluster_sizes.tolist(),
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return [folder / name for name in (CENTROIDS_FILE, ASSIGNMENTS_FILE, SETTINGS_FILE)]


def load_kmeans(folder: Path) -> KMeans:
    """Read the files that save_kmeans wrote and check that their shapes fit together."""
    centroids = load_array(folder / CENTROIDS_FILE, "kmeans.py")
    assignments = load_array(folder / ASSIGNMENTS_FILE, "kmeans.py")
    settings_path = folder / SETTINGS_FILE
    try:
        settings = json.loads(settings_path.read_text())
        overrides = list(settings["overrides"])
        objectives = [float(value) for value in settings["objective_per_iteration"]]
    except FileNotFoundError:
        raise ScriptError(
            f"{settings_path} not found; run kmeans.py in this folder first"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ScriptError(f"{settings_path} is invalid ({error}); run kmeans.py again") from None
    if centroids.ndim != 4 or assignments.ndim != 1:
        raise ScriptError(
            f"{CENTROIDS_FILE} has shape {centroids.shape} and {ASSIGNMENTS_FILE} "
            f"{assignments.shape}; expected (k, C, H, W) and (n,); run kmeans.py again"
        )
    if len(assignments) and not 0 <= assignments.min() <= assignments.max() < len(centroids):
        raise ScriptError(
            f"{ASSIGNMENTS_FILE} has cluster indices outside 0..{len(centroids) - 1}; "
            "run kmeans.py again"
        )
    return KMeans(centroids, assignments.astype(np.int64), objectives, overrides)
