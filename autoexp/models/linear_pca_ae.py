"""Model `linear_pca_ae`: PCA as a tied linear autoencoder on centred data.

The encoder is f(x) = W (x - mu) and the decoder g(z) = W^T z + mu, with one weight W of shape
(latent_dim, n_pixels) and mu the mean of the training images. With orthonormal rows of W,
g(f(x)) is the orthogonal projection of x onto mu + rowspace(W), and the reconstruction error
is smallest when the rows span the top latent_dim principal components.
"""

import logging
import math
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from autoexp.callbacks.images import epoch_metrics_step, tensorboard_writer
from autoexp.config.validation import ConfigError
from autoexp.models.base import AutoencoderModule, reconstruction_loss, to_container
from autoexp.models.fitting import (
    BatchCounter,
    is_last_training_batch,
    n_training_images,
    sum_across_ranks,
    training_batches,
)

log = logging.getLogger(__name__)

SOLVERS = ("gradient", "eigh")
# Checkpoint key of the state of the current epoch: the SVRG snapshot and the eigh pass's sums.
EPOCH_STATE_KEY = "autoexp_pca_epoch_state"


def orthonormal_rows(weight: torch.Tensor) -> torch.Tensor:
    """Return the rows of Q from the QR factorization weight^T = Q R with R's diagonal > 0.

    This is the retraction onto matrices with orthonormal rows: it keeps the row space and is
    the identity on matrices whose rows are already orthonormal. Q^T = L^-1 weight, where
    L L^T is the Cholesky factorization of weight weight^T; a second pass restores
    orthonormality to rounding error (CholeskyQR2, accurate while the condition number of
    weight stays below about 1e3 in float32). On a busy 2-core CPU it took 0.01 ms where
    torch.linalg.qr took 1.3 ms for 8 rows of 64. Rows whose Gram matrix is not numerically
    positive definite fall back to QR.
    """
    rows = weight
    for _ in range(2):
        factor, info = torch.linalg.cholesky_ex(rows @ rows.T)
        if info.item() != 0:
            q, r = torch.linalg.qr(weight.T)
            signs = torch.where(r.diagonal() < 0, -1.0, 1.0).to(q.dtype)
            return (q * signs).T
        rows = torch.linalg.solve_triangular(factor, rows, upper=False)
    return rows


def fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its entry of largest absolute value is positive.

    PCA fixes each component only up to sign; this rule makes the sign depend only on the
    component itself. On ties in absolute value the first such entry decides.
    """
    largest = components.abs().argmax(dim=1)
    signs = torch.sign(components.gather(1, largest[:, None]))
    return components * torch.where(signs == 0, 1.0, signs).to(components.dtype)


def top_eigenvectors(covariance: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the top k eigenvectors as sign-fixed rows (k, n) and their eigenvalues, largest
    first.

    On a CPU, LAPACK's MRRR driver (through scipy) computes only the k eigenpairs asked for:
    for 32 of 784 it took a fifth of the time of torch.linalg.eigh, which computes all of
    them. Other devices use torch.linalg.eigh.
    """
    n = covariance.shape[0]
    if covariance.device.type == "cpu":
        import scipy.linalg

        values, vectors = scipy.linalg.eigh(
            covariance.detach().numpy(), subset_by_index=(n - k, n - 1)
        )
        eigenvalues = torch.from_numpy(values).flip(0).to(covariance.dtype)
        top = torch.from_numpy(vectors).flip(1).to(covariance.dtype)
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        order = eigenvalues.argsort(descending=True)[:k]
        eigenvalues, top = eigenvalues[order], eigenvectors[:, order]
    return fix_signs(top.T.contiguous()), eigenvalues


def full_gradient(weight: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Return the gradient in W of the mean reconstruction error over the training data.

    With M = W^T W and C the covariance, that loss is tr((I - M) C (I - M)), whose gradient is
    -2 (2 W C - (W W^T) W C - (W C W^T) W).
    """
    weight_covariance = weight @ covariance
    gram = weight @ weight.T
    code_covariance = weight_covariance @ weight.T
    return -2 * (2 * weight_covariance - gram @ weight_covariance - code_covariance @ weight)


def gram_matrix(x: torch.Tensor, n_blocks: int = 4) -> torch.Tensor:
    """Return x^T x of a batch of rows x in float32. Callers add the results up in float64.

    On a CPU the product is computed by blocks of columns, because it is symmetric: each block
    row of the upper triangle is one product, and its transpose fills the lower triangle. With
    4 blocks the products cover 10 of the 16 blocks, 62% of the multiplications of x.T @ x.
    A Fashion-MNIST batch of 8192 images took 42 ms in place of 57 ms on a 2-core CPU.

    numpy's x.T @ x (BLAS syrk) took 32 ms alone, and its speed in a fit depends on the import
    order. Where numpy is imported before autoexp, the short OPENBLAS_THREAD_TIMEOUT that
    autoexp sets does not apply, so numpy's BLAS threads spin-wait after each call and slow
    torch's threads on the same cores. The Fashion-MNIST pass then took 0.43 to 0.88 s with
    numpy and 0.38 to 0.44 s with the blocks. With the short timeout, as in autoexp's
    commands, both took 0.35 to 0.50 s. Other devices compute x.T @ x.
    """
    x = x.float()
    if x.device.type != "cpu":
        return x.T @ x
    width = x.shape[1]
    edges = [round(i * width / n_blocks) for i in range(n_blocks + 1)]
    gram = x.new_empty(width, width)
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        # Rows start:end of the upper triangle, then their transpose below the diagonal.
        rows = x[:, start:end].T @ x[:, start:]
        gram[start:end, start:] = rows
        gram[end:, start:end] = rows[:, end - start :].T
    return gram


def max_principal_angle(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Return the largest principal angle in radians between two row spaces of equal dimension.

    Both arguments have orthonormal rows. The sine of the largest angle is the spectral norm
    of the part of A's rows outside B's row space, which stays accurate for small angles where
    arccos of the cosines would not.
    """
    outside = basis_a - (basis_a @ basis_b.T) @ basis_b
    sine = torch.linalg.matrix_norm(outside, ord=2).clamp(max=1.0)
    return torch.asin(sine)


class LinearPCAAutoencoder(AutoencoderModule):
    """PCA as a tied linear autoencoder: f(x) = W (x - mu), g(z) = W^T z + mu.

    The training images' mean mu and covariance are kept as float64 buffers, so a loaded
    checkpoint can still report its principal components, explained variance ratios and
    distance from exact PCA. Both are summed in float64 over the batches. Each batch's x^T x is
    a float32 product. With batches of 8192 Fashion-MNIST images the covariance entries were
    within 5e-7 of the float64 result, relative to the largest entry, and with one batch of
    all 54,000 images within 2.4e-6.

    NOTE: this model has run on CPUs only, in one process and under DDP with gloo. Its CUDA
    path (float64 sums and eigh on the GPU) has not run.

    Args:
        image_shape: (channels, height, width) of the images.
        latent_dim: Number of principal components, at most the number of pixels and the number
            of training images.
        solver: "gradient" trains W with the optimizer on the reconstruction loss. "eigh" sets
            W to the top eigenvectors of the training covariance after one pass over the data
            and stops after that epoch.
        orthonormal: For the gradient solver, map W back to orthonormal rows by QR after each
            optimizer step.
        variance_reduction: For the gradient solver, give the optimizer the SVRG estimate of
            the full-data gradient in place of the batch gradient. The estimate is the batch
            gradient at W, minus the batch gradient at W_0 (W at the start of the epoch), plus
            the exact full-data gradient at W_0 from the training covariance. Its mean is the
            same, and its noise vanishes as W settles, so minibatch training reaches exact PCA.
        optimizer: Config of a torch.optim optimizer for the gradient solver, without `params`.
        lr_scheduler: Config of a torch.optim.lr_scheduler scheduler for the gradient solver,
            without `optimizer`; stepped once per epoch. None keeps the learning rate fixed.
    """

    model_name = "linear_pca_ae"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int],
        latent_dim: int = 32,
        solver: str = "gradient",
        orthonormal: bool = True,
        variance_reduction: bool = True,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
    ):
        if solver not in SOLVERS:
            raise ValueError(f"model.solver={solver!r} is not supported; use one of {SOLVERS}")
        if solver == "gradient" and optimizer is None:
            optimizer = {"_target_": "torch.optim.Adam", "lr": 3e-2}
        if solver == "eigh":
            # The eigh solver has no learning rate, so none is recorded with the run.
            optimizer = lr_scheduler = None
        super().__init__(image_shape, latent_dim, optimizer)
        if latent_dim > self.n_pixels:
            shape = "x".join(str(size) for size in self.image_shape)
            raise ValueError(
                f"model.latent_dim={latent_dim} must be <= {self.n_pixels} (the number of pixels "
                f"of {shape} images); pass model.latent_dim={self.n_pixels} or less"
            )
        self.solver = solver
        self.orthonormal = bool(orthonormal)
        self.variance_reduction = bool(variance_reduction)
        self.lr_scheduler_config = to_container(lr_scheduler)
        self.save_hyperparameters(
            {
                "image_shape": list(self.image_shape),
                "latent_dim": latent_dim,
                "solver": solver,
                "orthonormal": self.orthonormal,
                "variance_reduction": self.variance_reduction,
                "optimizer": self.optimizer_config,
                "lr_scheduler": self.lr_scheduler_config,
            }
        )
        # The eigh solver updates W in closed form, outside of any optimizer.
        self.automatic_optimization = solver == "gradient"

        # One parameter for both f and g, so they stay tied through checkpoints and .to().
        self.weight = nn.Parameter(orthonormal_rows(torch.randn(latent_dim, self.n_pixels)))
        # Exact training statistics; n_samples == 0 means they are not computed yet.
        self.register_buffer("mean", torch.zeros(self.n_pixels, dtype=torch.float64))
        self.register_buffer(
            "covariance", torch.zeros(self.n_pixels, self.n_pixels, dtype=torch.float64)
        )
        self.register_buffer("n_samples", torch.zeros((), dtype=torch.long))
        # Per-rank sums of the current pass. They are plain attributes, not buffers, because
        # DDP overwrites buffers with rank 0's at every forward.
        self._sums: tuple[torch.Tensor, torch.Tensor, int] | None = None
        # W at the start of the epoch and the full-data gradient there, for variance reduction.
        self._snapshot: tuple[torch.Tensor, torch.Tensor] | None = None
        self._exact_pca: tuple[torch.Tensor, torch.Tensor] | None = None
        # EPOCH_STATE_KEY of the checkpoint being resumed, until training starts.
        self._restored_epoch_state: dict[str, Any] | None = None

    # The autoencoder.

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean.to(x.dtype)) @ self.weight.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = z @ self.weight + self.mean.to(z.dtype)
        return x_hat.reshape(-1, *self.image_shape)

    def filters(self) -> dict[str, torch.Tensor]:
        components, _ = self.principal_components()
        return {"components": components.float().reshape(-1, *self.image_shape)}

    def figures(self) -> dict:
        """Return a matplotlib bar chart of each component's explained variance ratio, with
        the cumulative ratio, for ImageLogger to log as `figures/explained_variance_ratio`."""
        if self.n_samples == 0:
            return {}
        from matplotlib.figure import Figure

        ratios = self.explained_variance_ratio().cpu().numpy()
        figure = Figure(figsize=(5, 3), layout="tight")
        axis = figure.add_subplot()
        components = range(len(ratios))
        axis.bar(components, ratios, label="component")
        axis.plot(components, ratios.cumsum(), color="C1", marker=".", label="cumulative")
        axis.set_xlabel("principal component")
        axis.set_ylabel("explained variance ratio")
        axis.set_ylim(0, 1)
        axis.legend()
        return {"explained_variance_ratio": figure}

    # Principal components and checks against exact PCA.

    @torch.no_grad()
    def principal_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the principal components of the learned subspace and their variances.

        The rows of W are turned into an orthonormal basis of their span, which is rotated so
        that the codes of the training images are uncorrelated. The components are sorted by
        variance, largest first, with signs fixed by `fix_signs`, so runs that learn the same
        subspace show the same images.

        Returns:
            Components (latent_dim, n_pixels) with orthonormal rows, and the training variance
            along each (latent_dim,), both float64.
        """
        basis = orthonormal_rows(self.weight.detach().double())
        code_covariance = basis @ self.covariance @ basis.T
        rotation, variances = top_eigenvectors(code_covariance, self.latent_dim)
        return fix_signs(rotation @ basis), variances

    @torch.no_grad()
    def exact_pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the top latent_dim eigenvectors of the training covariance and their
        eigenvalues, largest first."""
        if self._exact_pca is None:
            self._exact_pca = top_eigenvectors(self.covariance, self.latent_dim)
        return self._exact_pca

    @torch.no_grad()
    def explained_variance_ratio(self) -> torch.Tensor:
        """Return each principal component's share of the total training variance."""
        _, variances = self.principal_components()
        total = self.covariance.trace()
        return variances / total if total > 0 else torch.zeros_like(variances)

    @torch.no_grad()
    def max_principal_angle_deg(self) -> float:
        """Return the largest principal angle in degrees between the learned subspace and the
        exact PCA subspace of the training data."""
        learned, _ = self.principal_components()
        exact, _ = self.exact_pca()
        return math.degrees(max_principal_angle(learned, exact).item())

    # Training statistics.

    def _reset_sums(self) -> None:
        zeros = torch.zeros(self.n_pixels, dtype=torch.float64, device=self.device)
        self._sums = (zeros, zeros.new_zeros(self.n_pixels, self.n_pixels), 0)

    def _accumulate(self, x: torch.Tensor) -> None:
        x = x.flatten(1)
        total, outer, n = self._sums
        # Both sums of the batch are float32 and add up over the batches in float64. For 4096
        # Fashion-MNIST images, the float32 column sum took 7 ms and a float64 one 23 ms.
        total = total + x.float().sum(0)
        self._sums = (total, outer.add_(gram_matrix(x)), n + len(x))

    @torch.no_grad()
    def _finish_statistics(self) -> None:
        """Add up the sums over the ranks and set the mean and covariance buffers."""
        total, outer, n = self._sums
        total = sum_across_ranks(self, total)
        outer = sum_across_ranks(self, outer)
        n = int(sum_across_ranks(self, torch.tensor(n, device=self.device)).item())
        mean = total / n
        # Population covariance (divided by n); explained variance ratios do not depend on it.
        covariance = outer / n - torch.outer(mean, mean)
        self.mean.copy_(mean)
        self.covariance.copy_((covariance + covariance.T) / 2)
        self.n_samples.fill_(n)
        self._sums = None
        self._exact_pca = None

    @torch.no_grad()
    def compute_statistics(self) -> None:
        """Compute the training mean and covariance in one pass over this rank's shard."""
        self._reset_sums()
        for x in training_batches(self):
            self._accumulate(x)
        self._finish_statistics()

    # Lightning hooks.

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        n_images = n_training_images(self)
        if self.latent_dim > n_images:
            raise ValueError(
                f"model.latent_dim={self.latent_dim} must be <= {n_images} (the number of "
                f"training images); pass model.latent_dim={n_images} or less, or train on more "
                "images"
            )

    def on_fit_start(self) -> None:
        self._exact_pca = None
        # A resumed run has its statistics from the checkpoint.
        if self.solver == "gradient" and self.n_samples == 0:
            self.compute_statistics()
            log.info("Computed the mean and covariance of %d training images", self.n_samples)

    def on_train_start(self) -> None:
        trainer = self.trainer
        if self.solver == "eigh" and 0 <= trainer.max_steps < trainer.num_training_batches:
            raise ConfigError(
                [
                    f"trainer.max_steps={trainer.max_steps} stops the eigh solver before the end "
                    f"of its pass over the {trainer.num_training_batches} training batches, so "
                    f"PCA would not be fitted; remove trainer.max_steps or set it to "
                    f"{trainer.num_training_batches} or more"
                ]
            )
        # Lightning skips on_train_epoch_start when it resumes from a checkpoint written in the
        # middle of an epoch, so the epoch's snapshot and partial sums come from the checkpoint.
        state, self._restored_epoch_state = self._restored_epoch_state, None
        if state is None:
            return
        if "snapshot" in state:
            self._snapshot = tuple(tensor.to(self.device) for tensor in state["snapshot"])
        if "sums" in state:
            total, outer, n = (value.to(self.device) for value in state["sums"])
            if self.global_rank != 0:
                # The saved sums cover every rank's batches, so rank 0 alone starts from them.
                total, outer, n = total.zero_(), outer.zero_(), n.zero_()
            self._sums = (total, outer, int(n))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = {}
        if self._snapshot is not None:
            state["snapshot"] = [tensor.detach().cpu().clone() for tensor in self._snapshot]
        if self._sums is not None:
            # Rank 0 alone writes the file, so it keeps the sums over all ranks. Lightning
            # calls this hook on every rank when it saves, so all of them take part.
            total, outer, n = self._sums
            count = torch.tensor(n, device=total.device)
            state["sums"] = [
                sum_across_ranks(self, value.clone()).cpu() for value in (total, outer, count)
            ]
        if state:
            checkpoint[EPOCH_STATE_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_epoch_state = checkpoint.get(EPOCH_STATE_KEY)

    def on_train_epoch_start(self) -> None:
        if self.solver == "eigh":
            self._reset_sums()
        elif self.variance_reduction:
            weight = self.weight.detach().clone()
            gradient = full_gradient(weight.double(), self.covariance)
            self._snapshot = (weight, gradient.to(weight.dtype))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        if self.solver == "gradient":
            loss = reconstruction_loss(x, self(x))
            self.log_loss(loss, "train", len(x))
            if not self.variance_reduction:
                return loss
            # The added term is linear in W, so it adds the correction to the gradient and
            # leaves the logged loss as it is.
            return loss + (self.weight * self._gradient_correction(x)).sum()
        with torch.no_grad():
            self._accumulate(x)
        # Counts the batch in trainer.global_step; W changes only after the last batch.
        self.optimizers().step()
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.solver == "eigh" and is_last_training_batch(self, batch_idx):
            self._fit_eigh()

    def _gradient_correction(self, x: torch.Tensor) -> torch.Tensor:
        """Return the full-data gradient at W_0 minus the batch gradient at W_0."""
        snapshot, snapshot_gradient = self._snapshot
        snapshot = snapshot.clone().requires_grad_(True)
        centred = x.flatten(1) - self.mean.to(x.dtype)
        residuals = centred - (centred @ snapshot.T) @ snapshot
        (batch_gradient,) = torch.autograd.grad(residuals.pow(2).sum(1).mean(), snapshot)
        return snapshot_gradient - batch_gradient

    @torch.no_grad()
    def _fit_eigh(self) -> None:
        self._finish_statistics()
        components, _ = self.exact_pca()
        self.weight.copy_(components.to(self.weight.dtype))
        log.info("Fitted PCA by eigh on %d training images", self.n_samples)
        # The fit is exact after one pass; validation still runs before the stop.
        self.trainer.should_stop = True

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.orthonormal:
            with torch.no_grad():
                self.weight.copy_(orthonormal_rows(self.weight))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or self.n_samples == 0:
            return
        ratios = self.explained_variance_ratio()
        self.log("pca/explained_variance_ratio_cumulative", ratios.sum().item(), sync_dist=True)
        self.log("pca/max_principal_angle_deg", self.max_principal_angle_deg(), sync_dist=True)
        self._log_ratio_table(ratios)

    def _log_ratio_table(self, ratios: torch.Tensor) -> None:
        """Write the per-component explained variance ratios to TensorBoard as a text table."""
        writer = tensorboard_writer(self.trainer)
        if writer is None or not self.trainer.is_global_zero:
            return
        rows = ["| component | ratio | cumulative |", "| ---: | ---: | ---: |"]
        for index, (ratio, cumulative) in enumerate(zip(ratios, ratios.cumsum(0), strict=True)):
            rows.append(f"| {index} | {ratio:.6f} | {cumulative:.6f} |")
        step = epoch_metrics_step(self.trainer)
        writer.add_text("pca/explained_variance_ratio", "\n".join(rows), step)

    def configure_optimizers(self):
        if self.solver == "eigh":
            return BatchCounter(self.parameters())
        optimizer = instantiate(self.optimizer_config, params=[self.weight])
        if self.lr_scheduler_config is None:
            return optimizer
        scheduler = instantiate(self.lr_scheduler_config, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
