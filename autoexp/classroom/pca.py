"""Exact PCA of a training split through linear_pca_ae's eigh solver, and its saved files.

The files are plain NumPy arrays, which `numpy.load` reads and `torch.from_numpy` turns into
tensors:

    pca-mean.npy          mean training image, shape (channels, height, width)
    pca-eigenvalues.npy   eigenvalues of the covariance (divided by n), largest first, (D,)
    pca-eigenvectors.npy  unit eigenvectors as columns, in the order of the eigenvalues, (D, D)
    pca.json              the overrides that chose the data, and the explained variance

D is the number of pixels. Column k of the eigenvectors pairs with eigenvalue k, as in
numpy.linalg.eigh, but the order is largest first.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict

from autoexp.classroom.cli import ScriptError
from autoexp.classroom.config import compose_config
from autoexp.classroom.training import build, fit_quietly, output_folder
from autoexp.data import IMAGE_SHAPES

MEAN_FILE = "pca-mean.npy"
EIGENVALUES_FILE = "pca-eigenvalues.npy"
EIGENVECTORS_FILE = "pca-eigenvectors.npy"
SETTINGS_FILE = "pca.json"

# Component counts whose explained variance pca.py prints, where the data has that many.
REPORTED_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200)


@dataclass
class PCA:
    """Exact PCA of a data set's training split, in float64."""

    mean: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    overrides: list[str]
    data: str
    n_samples: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def explained_variance(self, n_components: int) -> float:
        """Return the share of the total variance that the leading n_components explain."""
        return float(self.eigenvalues[:n_components].sum() / self.eigenvalues.sum())

    def reconstruct(self, images: torch.Tensor, n_components: int) -> torch.Tensor:
        """Return the projections of images (n, C, H, W) onto mean + the leading components."""
        mean = torch.from_numpy(self.mean).flatten()
        basis = torch.from_numpy(self.eigenvectors[:, :n_components])
        centred = images.flatten(1).double() - mean
        return (centred @ basis @ basis.T + mean).reshape(images.shape)


def fit_pca(overrides: list[str], n_components: int | None = None) -> PCA:
    """Compute the PCA of the training split that the overrides choose.

    A linear_pca_ae with the eigh solver is fitted by a Lightning Trainer for one epoch: it
    sums the images and their outer products in float64 and takes the covariance's
    eigenvectors, as `autoexp-train model=linear_pca_ae model.solver=eigh` does.

    Args:
        overrides: Hydra overrides, e.g. ["data=fashion_mnist"]; model settings are rejected.
        n_components: Number of components; None means all of them (one per pixel).
    """
    for override in overrides:
        if override.lstrip("+~").startswith("model"):
            raise ScriptError(
                f"override {override!r} is not supported: PCA always uses linear_pca_ae with "
                "the eigh solver; drop it"
            )
    pca_overrides = ["model=linear_pca_ae", "model.solver=eigh", *overrides]
    with output_folder(None) as folder:
        cfg = compose_config(pca_overrides, folder)
        with open_dict(cfg):
            cfg.model.latent_dim = n_components or _n_pixels(cfg)
            cfg.trainer.max_epochs = 1
        datamodule, model = build(cfg)
        fit_quietly(cfg, datamodule, model)
    components, eigenvalues = model.exact_pca()
    return PCA(
        mean=model.mean.reshape(model.image_shape).numpy(),
        eigenvalues=eigenvalues.numpy(),
        eigenvectors=components.T.contiguous().numpy(),
        overrides=list(overrides),
        data=datamodule.name,
        n_samples=int(model.n_samples),
    )


def _n_pixels(cfg) -> int:
    return math.prod(IMAGE_SHAPES[cfg.data.name])


def reported_counts(n_pixels: int) -> list[int]:
    """Return the component counts to report for data with n_pixels pixels."""
    return [count for count in REPORTED_COUNTS if count < n_pixels] + [n_pixels]


def save_pca(pca: PCA, folder: Path) -> list[Path]:
    """Save the PCA as the files listed in this module's docstring."""
    np.save(folder / MEAN_FILE, pca.mean)
    np.save(folder / EIGENVALUES_FILE, pca.eigenvalues)
    np.save(folder / EIGENVECTORS_FILE, pca.eigenvectors)
    n_pixels = len(pca.eigenvalues)
    settings = {
        "overrides": pca.overrides,
        "data": pca.data,
        "n_samples": pca.n_samples,
        "image_shape": list(pca.image_shape),
        "explained_variance": {
            str(count): pca.explained_variance(count) for count in reported_counts(n_pixels)
        },
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    names = (MEAN_FILE, EIGENVALUES_FILE, EIGENVECTORS_FILE, SETTINGS_FILE)
    return [folder / name for name in names]


def load_array(path: Path, script: str) -> np.ndarray:
    """Read a .npy file, raising ScriptError with the script that writes it if that fails."""
    if not path.is_file():
        raise ScriptError(f"{path} not found; run {script} in this folder first")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ScriptError(
            f"{path} is not a readable .npy file ({error}); run {script} again"
        ) from None


def load_pca(folder: Path) -> PCA:
    """Read the files that save_pca wrote and check that their shapes fit together."""
    mean = load_array(folder / MEAN_FILE, "pca.py")
    eigenvalues = load_array(folder / EIGENVALUES_FILE, "pca.py")
    eigenvectors = load_array(folder / EIGENVECTORS_FILE, "pca.py")
    settings_path = folder / SETTINGS_FILE
    try:
        settings = json.loads(settings_path.read_text())
        overrides = list(settings["overrides"])
        data, n_samples = str(settings["data"]), int(settings["n_samples"])
    except FileNotFoundError:
        raise ScriptError(f"{settings_path} not found; run pca.py in this folder first") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ScriptError(f"{settings_path} is invalid ({error}); run pca.py again") from None
    n_pixels = mean.size
    if mean.ndim != 3 or eigenvalues.shape != (n_pixels,):
        raise ScriptError(
            f"{MEAN_FILE} has shape {mean.shape} and {EIGENVALUES_FILE} {eigenvalues.shape}; "
            f"expected (C, H, W) and ({n_pixels},); run pca.py again"
        )
    if eigenvectors.ndim != 2 or eigenvectors.shape[0] != n_pixels:
        raise ScriptError(
            f"{EIGENVECTORS_FILE} has shape {eigenvectors.shape}, expected ({n_pixels}, K); "
            "run pca.py again"
        )
    return PCA(mean, eigenvalues, eigenvectors, overrides, data, n_samples)
