"""PCA and k-means fitted by autoexp's models and by scikit-learn on the same training split.

autoexp's models run in Trainer.fit with the configs of conf/. Their time is what EpochTimer
measures from the start of the fit to the first epoch (k-means++ runs there) plus every
training pass. Validation, checkpoints and image logging between the passes are not part of
it, and the whole fit's time is reported beside it. scikit-learn's time is that of `fit` on
the split as a float32 array in memory.
"""

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from autoexp.bench.training import compose_config, fit_with_timer
from autoexp.data import ImageDataModule

PCA_COMPONENTS = 32
KMEANS_CLUSTERS = 10
# The eigh solver's result does not depend on the batch size. Large batches mean fewer training
# steps and fewer float64 additions of Gram matrices (see conf/model/linear_pca_ae.yaml).
PCA_BATCH_SIZE = 8192


def solver_overrides(data: str, device: torch.device, model: list[str]) -> list[str]:
    """Return the Hydra overrides of a fit of a closed-form model on a data set."""
    return [
        f"data={data}",
        *model,
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "test=false",
    ]


def pca_error(
    x: np.ndarray, mean: np.ndarray, components: np.ndarray, chunk_size: int = 8192
) -> float:
    """Return the mean over images of the squared error of projecting them on the components.

    The error is computed in float64 from the mean and the rows of `components`, as
    x - mean - ((x - mean) B^T) B, so that two fits compare by their subspaces and not by how
    they evaluate them.
    """
    mean_64 = torch.from_numpy(mean.astype(np.float64))
    basis = torch.from_numpy(components.astype(np.float64))
    total = 0.0
    for chunk in torch.from_numpy(x).split(chunk_size):
        centered = chunk.double() - mean_64
        residual = centered - (centered @ basis.T) @ basis
        total += residual.pow(2).sum().item()
    return total / len(x)


def kmeans_inertia(x: np.ndarray, centroids: np.ndarray, chunk_size: int = 8192) -> float:
    """Return the sum over images of the squared distance to the nearest centroid, in float64.

    Both fits are scored by this one function, so they compare by their centroids alone.
    """
    centroids_64 = torch.from_numpy(centroids.astype(np.float64))
    total = 0.0
    for chunk in torch.from_numpy(x).split(chunk_size):
        distances = torch.cdist(
            chunk.double(), centroids_64, compute_mode="donot_use_mm_for_euclid_dist"
        )
        total += distances.min(dim=1).values.pow(2).sum().item()
    return total


class SolverBench:
    """The contenders of the PCA and k-means benchmarks.

    Args:
        data: Data set name, e.g. "fashion_mnist".
        device: Where autoexp fits.
        data_root: Folder searched for the IDX files; None keeps the config's default.
        datamodule: The data module shared with the training benchmark, splits loaded.
        work_dir: Folder for the run folders of autoexp's fits.
    """

    def __init__(
        self,
        data: str,
        device: torch.device,
        data_root: str | None,
        datamodule: ImageDataModule,
        work_dir: Path,
    ) -> None:
        self.data = data
        self.device = device
        self.extra = [f"data.root={data_root}"] if data_root is not None else []
        self.datamodule = datamodule
        self.work_dir = work_dir
        self.x = datamodule.load()["train"].to_float().flatten(1).numpy()

    def _fit(self, name: str, repeat: int, model: list[str]) -> dict[str, Any]:
        overrides = [*solver_overrides(self.data, self.device, model), *self.extra]
        cfg = compose_config(overrides, self.work_dir / f"{name}-{repeat}")
        # The model's config may set its own batch size (kmeans_ae does), so the data module
        # comes from cfg. It reuses the loaded splits, which depend only on the seed.
        datamodule: ImageDataModule = instantiate(cfg.data)
        if datamodule.split_seed != self.datamodule.split_seed:
            raise ValueError(
                f"data.split_seed={datamodule.split_seed} differs from the training "
                f"benchmark's {self.datamodule.split_seed}; both must fit the same split"
            )
        datamodule.splits = self.datamodule.load()
        return fit_with_timer(cfg, datamodule, seed=repeat)

    def pca_autoexp(self, repeat: int) -> dict[str, Any]:
        """Fit linear_pca_ae with the eigh solver: one pass over the data, then eigh."""
        model_overrides = [
            "model=linear_pca_ae",
            "model.solver=eigh",
            f"model.latent_dim={PCA_COMPONENTS}",
            f"data.batch_size={PCA_BATCH_SIZE}",
        ]
        run = self._fit("pca", repeat, model_overrides)
        model = run["model"]
        components = model.weight.detach().cpu().numpy()
        mean = model.mean.detach().cpu().numpy()
        return {
            "time_s": run["solve_s"],
            "fit_s": run["fit_s"],
            "error": pca_error(self.x, mean, components),
        }

    def _pca_sklearn(self, solver: str) -> dict[str, Any]:
        pca = PCA(n_components=PCA_COMPONENTS, svd_solver=solver)
        start = time.perf_counter()
        pca.fit(self.x)
        seconds = time.perf_counter() - start
        return {"time_s": seconds, "error": pca_error(self.x, pca.mean_, pca.components_)}

    def pca_sklearn_covariance_eigh(self, repeat: int) -> dict[str, Any]:
        """Fit scikit-learn's PCA with svd_solver="covariance_eigh"."""
        return self._pca_sklearn("covariance_eigh")

    def pca_sklearn_full(self, repeat: int) -> dict[str, Any]:
        """Fit scikit-learn's PCA with svd_solver="full" (LAPACK's SVD of the data)."""
        return self._pca_sklearn("full")

    def kmeans_autoexp(self, repeat: int) -> dict[str, Any]:
        """Fit kmeans_ae (Lloyd, k-means++) until its tolerance stops it."""
        model_overrides = [
            "model=kmeans_ae",
            "model.solver=lloyd",
            "model.init=k-means++",
            f"model.latent_dim={KMEANS_CLUSTERS}",
            f"model.seed={repeat}",
        ]
        run = self._fit("kmeans", repeat, model_overrides)
        centroids = run["model"].best_centroids.numpy()
        return {
            "time_s": run["solve_s"],
            "fit_s": run["fit_s"],
            "iterations": run["epochs"],
            "inertia": kmeans_inertia(self.x, centroids),
        }

    def kmeans_sklearn(self, repeat: int) -> dict[str, Any]:
        """Fit scikit-learn's KMeans (Lloyd, k-means++, n_init=1) with its default tol."""
        kmeans = KMeans(
            n_clusters=KMEANS_CLUSTERS, init="k-means++", n_init=1, random_state=repeat
        )
        start = time.perf_counter()
        kmeans.fit(self.x)
        seconds = time.perf_counter() - start
        return {
            "time_s": seconds,
            "iterations": int(kmeans.n_iter_),
            "inertia": kmeans_inertia(self.x, kmeans.cluster_centers_),
        }
