"""Numerical checks of the identities behind PCA and k-means seen as autoencoders.

Each check computes two sides in float64 and records both, so a failure shows by how much
they differ. X is the matrix of training images as rows (n, D); U has K orthonormal rows.

1. Sum over directions u_k and images x_i of (u_k . x_i)^2 == ||X U^T U||_F^2, the squared
   Frobenius norm of the data projected onto span(U).
2. The PCA basis gives the smallest reconstruction error ||Xc - Xc U^T U||_F^2 of the centred
   data Xc among orthonormal bases of K directions.
3. The k-means objective sum_i min_j ||x_i - c_j||^2 == ||X - Z C||_F^2, with Z the one-hot
   codes (n, k) and C the centroids as rows (k, D).
4. No Lloyd iteration increases the k-means objective.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate

from autoexp.classroom.checkpoints import check_image_shape, read_model_checkpoint
from autoexp.classroom.cli import ScriptError
from autoexp.classroom.config import compose_config, merge_overrides
from autoexp.classroom.kmeans import ASSIGNMENTS_FILE, fit_kmeans, load_kmeans
from autoexp.classroom.pca import fit_pca, load_pca
from autoexp.classroom.training import build, fit_quietly, output_folder
from autoexp.models import AutoencoderModule, load_model

# Relative tolerance of equalities and inequalities between float64 sums of many terms.
RELATIVE_TOLERANCE = 1e-9

# Pixel differences held at once by direct_objective (128 MiB of float64).
CHUNK_ELEMENTS = 2**24


@dataclass
class Check:
    """One comparison of two computed sides.

    Attributes:
        title: What the check states.
        sides: (label, value) of the left and the right side.
        passed: Whether the stated relation is true within RELATIVE_TOLERANCE.
        failure: What a failure means, printed when it does not hold.
        notes: Further lines printed under the sides.
    """

    title: str
    sides: tuple[tuple[str, float], tuple[str, float]]
    passed: bool
    failure: str
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the check as printed lines: status and title, then both sides."""
        width = max(len(label) for label, _ in self.sides)
        lines = [f"{'PASS' if self.passed else 'FAIL'}  {self.title}"]
        lines += [f"      {label:<{width}} = {value:.10g}" for label, value in self.sides]
        lines += [f"      {note}" for note in self.notes]
        if not self.passed:
            lines.append(f"      failed: {self.failure}")
        return lines


def relative_difference(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def check_equal(title: str, left: tuple[str, float], right: tuple[str, float], failure: str):
    difference = relative_difference(left[1], right[1])
    return Check(
        title,
        (left, right),
        passed=difference <= RELATIVE_TOLERANCE,
        failure=failure,
        notes=[f"relative difference {difference:.2e} (tolerance {RELATIVE_TOLERANCE:.0e})"],
    )


def check_not_greater(
    title: str, left: tuple[str, float], right: tuple[str, float], failure: str
) -> Check:
    passed = left[1] <= right[1] * (1 + RELATIVE_TOLERANCE) + 1e-12
    return Check(title, (left, right), passed=passed, failure=failure)


def check_projection_identity(x: torch.Tensor, basis: torch.Tensor) -> Check:
    """Check identity 1 for images x (n, D) and a basis with orthonormal rows (K, D).

    The left side sums the squared projections one direction at a time. The right side
    projects the whole matrix back into pixel space and takes its Frobenius norm.
    """
    x, basis = x.double(), basis.double()
    left = sum(((x @ direction) ** 2).sum().item() for direction in basis)
    projected = x @ basis.T @ basis
    right = torch.linalg.matrix_norm(projected).item() ** 2
    return check_equal(
        f"1. sum of squared projections on {len(basis)} directions equals "
        "||X U^T U||_F^2 (projected data matrix)",
        ("sum_k sum_i (u_k . x_i)^2", left),
        ("||X U^T U||_F^2", right),
        "the two sides differ, so the rows of U are not orthonormal",
    )


def projection_error(x_centred: torch.Tensor, basis: torch.Tensor) -> float:
    """Return ||Xc - Xc U^T U||_F^2, the reconstruction error of projecting onto span(U)."""
    x_centred, basis = x_centred.double(), basis.double()
    residual = x_centred - x_centred @ basis.T @ basis
    return residual.pow(2).sum().item()


def random_orthonormal_basis(n_rows: int, n_columns: int, generator: torch.Generator):
    """Return n_rows orthonormal rows of length n_columns, uniformly distributed (QR of a
    Gaussian matrix with R's diagonal made positive)."""
    gaussian = torch.randn(n_columns, n_rows, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(r.diagonal())).T


def check_pca_minimal(pca_error: float, rivals: list[tuple[str, float]]) -> list[Check]:
    """Check identity 2: the PCA reconstruction error is at most each rival's error.

    Args:
        pca_error: Squared reconstruction error of the PCA basis, summed over the images.
        rivals: (name, squared reconstruction error summed over the same images) of other
            K-dimensional bases or models.
    """
    return [
        check_not_greater(
            f"2. PCA reconstruction error <= that of {name}",
            ("PCA", pca_error),
            (name, error),
            f"{name} reconstructs the data better, so the PCA basis is not the leading "
            "eigenvectors of the covariance",
        )
        for name, error in rivals
    ]


def direct_objective(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Return sum_i min_j ||x_i - c_j||^2 summed from the pixel differences themselves.

    kmeans_ae and kmeans.py use the expansion ||x||^2 - 2 x.c + ||c||^2, so this slower
    computation checks them independently.
    """
    centroids = centroids.double()
    chunk_size = max(1, CHUNK_ELEMENTS // centroids.numel())
    total = 0.0
    for chunk in x.double().split(chunk_size):
        squared = (chunk[:, None, :] - centroids[None, :, :]).pow(2).sum(-1)
        total += squared.min(dim=1).values.sum().item()
    return total


def check_kmeans_identity(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor) -> Check:
    """Check identity 3 for images x (n, D), centroids (k, D) and one-hot codes (n, k)."""
    x, centroids, codes = x.double(), centroids.double(), codes.double()
    left = direct_objective(x, centroids)
    right = (x - codes @ centroids).pow(2).sum().item()
    return check_equal(
        f"3. k-means objective equals ||X - Z C||_F^2 (one-hot codes Z times the {len(centroids)} "
        "centroids C)",
        ("sum_i min_j ||x_i - c_j||^2", left),
        ("||X - Z C||_F^2", right),
        "the codes do not pick each image's nearest centroid",
    )


def check_lloyd_monotone(objectives: list[float]) -> Check:
    """Check identity 4 on the objective before the first Lloyd iteration and after each."""
    changes = [after - before for before, after in zip(objectives, objectives[1:], strict=False)]
    worst = max(range(len(changes)), key=lambda index: changes[index]) if changes else None
    if worst is None:
        return Check(
            "4. no Lloyd iteration increases the k-means objective",
            (("objective before", math.nan), ("objective after", math.nan)),
            passed=False,
            failure="no Lloyd iteration ran; pass --kmeans-iterations 1 or more",
        )
    check = check_not_greater(
        f"4. no Lloyd iteration increases the k-means objective ({len(changes)} iterations)",
        (f"objective after iteration {worst + 1}", objectives[worst + 1]),
        (f"objective after iteration {worst}", objectives[worst]),
        f"iteration {worst + 1} increased the objective",
    )
    check.notes.append(
        "largest change between iterations "
        f"{changes[worst]:+.6g}; objectives {objectives[0]:.6g} ... {objectives[-1]:.6g}"
    )
    return check


@dataclass
class CheckSettings:
    """Settings of check-identities.py; its --help describes each field."""

    overrides: list[str]
    n_components: int = 16
    n_random_bases: int = 5
    pca_epochs: int = 3
    n_clusters: int = 10
    kmeans_iterations: int = 10
    from_files: bool = False
    linear_pca_checkpoint: Path | None = None


def reject_model_overrides(overrides: list[str]) -> None:
    for override in overrides:
        if override.lstrip("+~").startswith("model"):
            raise ScriptError(
                f"override {override!r} is not supported: the model settings come from "
                "--components and --clusters; drop it"
            )


def training_rows(overrides: list[str]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return the training split that the overrides choose, as float64 rows, and its image
    shape."""
    with output_folder(None) as folder:
        cfg = compose_config(overrides, folder)
    datamodule = instantiate(cfg.data)
    return datamodule.load()["train"].to_float().flatten(1).double(), datamodule.image_shape


def fit_linear_pca(overrides: list[str], n_components: int, epochs: int) -> AutoencoderModule:
    """Train a linear_pca_ae with the gradient solver, as autoexp-train would."""
    model_overrides = [
        "model=linear_pca_ae",
        "model.solver=gradient",
        f"model.latent_dim={n_components}",
        f"trainer.max_epochs={epochs}",
    ]
    with output_folder(None) as folder:
        cfg = compose_config([*model_overrides, *overrides], folder)
        datamodule, model = build(cfg)
        fit_quietly(cfg, datamodule, model)
    return model.eval()


def load_linear_pca(path: Path, n_components: int, image_shape: tuple[int, ...]):
    """Load a trained linear_pca_ae checkpoint that fits the data and the component count."""
    read_model_checkpoint(path, ("linear_pca_ae",))
    model = load_model(path)
    check_image_shape(model.image_shape, image_shape, "the chosen data")
    if model.latent_dim != n_components:
        raise ScriptError(
            f"{path} has model.latent_dim={model.latent_dim} components; pass "
            f"--components {model.latent_dim} to compare it with PCA"
        )
    return model


@torch.no_grad()
def model_error(model: AutoencoderModule, x: torch.Tensor) -> float:
    """Return the model's squared reconstruction error summed over the rows of x, in float64."""
    model = model.double()
    images = x.reshape(-1, *model.image_shape)
    return sum((chunk - model(chunk)).pow(2).sum().item() for chunk in images.split(4096))


def run_checks(settings: CheckSettings) -> list[Check]:
    """Fit or read PCA and k-means on the chosen training split and run the four checks.

    By default PCA (eigh), k-means (Lloyd) and a linear_pca_ae (gradient) are fitted here.
    With from_files, the PCA and k-means results that pca.py and kmeans.py saved in the
    current folder are checked instead, with the data they were computed on.
    """
    reject_model_overrides(settings.overrides)
    if settings.linear_pca_checkpoint is not None:
        # Rejects a wrong file before the minutes of fitting below.
        read_model_checkpoint(settings.linear_pca_checkpoint, ("linear_pca_ae",))
    folder = Path.cwd()
    if settings.from_files:
        pca = load_pca(folder)
        kmeans = load_kmeans(folder)
        overrides = merge_overrides(pca.overrides, settings.overrides)
        codes = torch.nn.functional.one_hot(
            torch.from_numpy(kmeans.assignments), len(kmeans.centroids)
        )
        x, image_shape = training_rows(overrides)
        if len(x) != len(kmeans.assignments):
            raise ScriptError(
                f"the training split has {len(x)} images but {ASSIGNMENTS_FILE} has "
                f"{len(kmeans.assignments)}; run pca.py and kmeans.py with the same data"
            )
    else:
        overrides = settings.overrides
        pca = fit_pca(overrides, settings.n_components)
        kmeans, x, kmeans_model = fit_kmeans(
            [
                *overrides,
                f"model.latent_dim={settings.n_clusters}",
                f"trainer.max_epochs={settings.kmeans_iterations}",
            ]
        )
        codes = kmeans_model.encode(x)
        image_shape = pca.image_shape
    n_components = min(settings.n_components, pca.eigenvectors.shape[1])
    check_image_shape(pca.image_shape, image_shape, "the chosen data")

    basis = torch.from_numpy(pca.eigenvectors[:, :n_components].T.copy()).double()
    mean = x.mean(0)
    checks = [check_projection_identity(x - mean, basis)]

    pca_error = projection_error(x - torch.from_numpy(pca.mean).flatten(), basis)
    generator = torch.Generator().manual_seed(0)
    rivals = []
    for index in range(settings.n_random_bases):
        random_basis = random_orthonormal_basis(n_components, x.shape[1], generator)
        rivals.append((f"random basis {index + 1}", projection_error(x - mean, random_basis)))
    if settings.linear_pca_checkpoint is not None:
        model = load_linear_pca(settings.linear_pca_checkpoint, n_components, image_shape)
        rivals.append((f"linear_pca_ae {settings.linear_pca_checkpoint}", model_error(model, x)))
    elif settings.pca_epochs > 0:
        model = fit_linear_pca(overrides, n_components, settings.pca_epochs)
        name = f"linear_pca_ae trained {settings.pca_epochs} epochs"
        rivals.append((name, model_error(model, x)))
    checks += check_pca_minimal(pca_error, rivals)

    centroids = torch.from_numpy(kmeans.centroids).flatten(1)
    checks.append(check_kmeans_identity(x, centroids, codes))
    checks.append(check_lloyd_monotone(kmeans.objectives))
    return checks
