"""Model `kmeans_ae`: k-means as an autoencoder with one-hot codes.

The encoder maps an image to the one-hot code of its nearest centroid and the decoder is
g(z) = W z, whose k columns are the centroids, so g(f(x)) is the nearest centroid and the
reconstruction error of an image is its squared distance to that centroid. Its mean over the
images is the k-means objective (inertia) per image.
"""

import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoexp.callbacks.images import epoch_metrics_step, tensorboard_writer
from autoexp.models.base import AutoencoderModule
from autoexp.models.clustering import (
    assign_and_sum_chunks,
    kmeans_plusplus,
    mean_pixel_variance,
    squared_distances,
)
from autoexp.models.fitting import (
    BatchCounter,
    broadcast_from_rank_zero,
    gather_across_ranks,
    is_last_training_batch,
    n_training_images,
    sum_across_ranks,
    training_images,
)

log = logging.getLogger(__name__)

SOLVERS = ("lloyd", "minibatch")
INITS = ("k-means++", "random")
# Checkpoint key of the sums and candidates of the current epoch, for a resume mid-epoch.
EPOCH_STATE_KEY = "autoexp_kmeans_epoch_state"
# Entries of that state that add up over the DDP ranks.
ADDITIVE_EPOCH_KEYS = ("sums", "counts", "inertia", "n_images")


class EmptyClusterWarning(RuntimeWarning):
    """An epoch left clusters without training images; they were re-seeded."""


def read_centroids(path: str | Path) -> torch.Tensor:
    """Read initial centroids from a .npy file or a torch.save file of one tensor."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.init={str(path)!r} is neither {' nor '.join(INITS)} nor an existing file"
        )
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class KMeansAutoencoder(AutoencoderModule):
    """k-means as an autoencoder: f(x) is the one-hot code of the nearest centroid and
    g(z) = W z with the centroids as the columns of W.

    The model runs n_init k-means fits side by side, each from its own initialization, like
    scikit-learn's n_init. `centroids` contains them all, shape (n_init, latent_dim, n_pixels)
    in float64, and the encoder and decoder use the run with the lowest training inertia in
    the last epoch, `best_run`, so W = centroids[best_run].T. The centroids change only in
    closed form: no optimizer moves them.

    NOTE: this model has run on CPUs only, in one process and under DDP with gloo. Its CUDA
    path has not run.

    NOTE: on a 2-core CPU a Lloyd iteration over Fashion-MNIST took about 50 ms, 1.1 to 1.6
    times as long as one of scikit-learn's. With seeds 0 to 2 the fits needed 27 to 37
    iterations against scikit-learn's 55 to 72, so the whole fit took 0.56 to 1.30 times
    as long in four autoexp-bench runs (medians 0.74 to 0.82), validation and checkpoints
    left out. A seed that needs as many iterations as scikit-learn would be slower.

    Args:
        image_shape: (channels, height, width) of the images.
        latent_dim: Number of clusters k, at most the number of training images.
        solver: "lloyd" runs one Lloyd iteration per epoch: every image is assigned to its
            nearest centroid, and at the end of the epoch each centroid becomes the mean of
            its images. "minibatch" moves each centroid after every batch to the mean of all
            images assigned to it so far, which is the step 1 / (its running count) per image.
        init: "k-means++" (greedy, seeded), "random" (distinct training images, seeded), or
            the path of a .npy or torch.save file with the initial centroids, shape
            (latent_dim, n_pixels) or (n_init, latent_dim, n_pixels).
        n_init: Number of k-means fits run side by side; the one with the lowest inertia is
            the model.
        n_local_trials: Candidates per centroid of greedy k-means++; None means 2 + ln(k).
        tol: Training stops when, in one epoch, the centroids of every run moved by a summed
            squared distance of at most tol times the mean per-pixel variance of the
            training images.
        seed: Seed of the initialization.
    """

    model_name = "kmeans_ae"
    # A batch's loss is measured against centroids that change only at the end of the epoch,
    # so train/loss_epoch and kmeans/inertia_per_image show the same progress. Each self.log
    # call also costs about a millisecond, a fifth of a training step on Fashion-MNIST.
    log_train_steps = False

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int],
        latent_dim: int = 10,
        solver: str = "lloyd",
        init: str = "k-means++",
        n_init: int = 1,
        n_local_trials: int | None = None,
        tol: float = 1e-4,
        seed: int = 0,
    ):
        super().__init__(image_shape, latent_dim, optimizer=None)
        if solver not in SOLVERS:
            raise ValueError(f"model.solver={solver!r} is not supported; use one of {SOLVERS}")
        if not isinstance(n_init, int) or n_init < 1:
            raise ValueError(f"model.n_init={n_init!r} must be an integer >= 1")
        if n_local_trials is not None and n_local_trials < 1:
            raise ValueError(f"model.n_local_trials={n_local_trials} must be >= 1 or null")
        if not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"model.tol={tol} must be finite and >= 0, e.g. 1e-4")
        self.solver = solver
        self.init = str(init)
        self.n_init = n_init
        self.n_local_trials = n_local_trials
        self.tol = float(tol)
        self.seed = int(seed)
        self.save_hyperparameters(
            {
                "image_shape": list(self.image_shape),
                "latent_dim": latent_dim,
                "solver": solver,
                "init": self.init,
                "n_init": n_init,
                "n_local_trials": n_local_trials,
                "tol": self.tol,
                "seed": self.seed,
            }
        )
        self.automatic_optimization = False

        shape = (n_init, latent_dim, self.n_pixels)
        # A Parameter, not a buffer, because DDP rejects a module without parameters that
        # require gradients. Every update writes it under torch.no_grad().
        self.centroids = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("best_run", torch.zeros((), dtype=torch.long))
        # Training inertia per image of each run in the last epoch, or of its initial centroids
        # before the first epoch.
        self.register_buffer("run_inertia", torch.zeros(n_init, dtype=torch.float64))
        # Images per cluster: the last epoch's assignments for lloyd, the running counts
        # behind the step sizes for minibatch.
        self.register_buffer("counts", torch.zeros(n_init, latent_dim, dtype=torch.float64))
        self.register_buffer("initialized", torch.tensor(False))
        # tol times the mean per-pixel variance of the training images; -1 until computed.
        self.register_buffer("shift_tolerance", torch.tensor(-1.0, dtype=torch.float64))
        # Per-rank sums of the current epoch. They are plain attributes, not buffers, because
        # DDP overwrites buffers with rank 0's at every forward.
        self._epoch: dict[str, torch.Tensor] | None = None
        # EPOCH_STATE_KEY of the checkpoint being resumed, until training starts.
        self._restored_epoch: dict[str, torch.Tensor] | None = None

    # The autoencoder.

    @property
    def best_centroids(self) -> torch.Tensor:
        """Centroids of the best run, shape (latent_dim, n_pixels): the decoder's W^T."""
        return self.centroids.detach()[self.best_run]

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return each image's nearest centroid of the best run and the squared distance to
        it, computed in the images' precision (float32 at least). Ties go to the lowest
        centroid index."""
        distances = squared_distances(x.flatten(1), self.best_centroids)
        min_distances, labels = distances.min(dim=1)
        return labels, min_distances

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        labels, _ = self.assign(x)
        return F.one_hot(labels, self.latent_dim).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = z @ self.best_centroids.to(z.dtype)
        return x_hat.reshape(-1, *self.image_shape)

    def filters(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.best_centroids.float().reshape(-1, *self.image_shape)}

    def figures(self) -> dict:
        """Return a matplotlib bar chart of the best run's cluster sizes, for ImageLogger to
        log as `figures/cluster_sizes`."""
        from matplotlib.figure import Figure

        sizes = self.counts[self.best_run].cpu().numpy()
        figure = Figure(figsize=(5, 3), layout="tight")
        axis = figure.add_subplot()
        axis.bar(range(self.latent_dim), sizes)
        axis.set_xlabel("cluster")
        if self.solver == "lloyd":
            axis.set_ylabel("training images in the last epoch")
        else:
            axis.set_ylabel("images assigned so far")
        return {"cluster_sizes": figure}

    # Initialization.

    @torch.no_grad()
    def set_initial_centroids(self, centroids: torch.Tensor) -> None:
        """Start training from the given centroids instead of running the configured init.

        Args:
            centroids: Shape (latent_dim, n_pixels) when n_init is 1, or (n_init, latent_dim,
                n_pixels); images of shape image_shape may stand in place of pixel rows.
        """
        centroids = torch.as_tensor(centroids)
        expected = (self.n_init, self.latent_dim, self.n_pixels)
        if self.n_init == 1 and centroids.shape[:1] == (self.latent_dim,):
            centroids = centroids[None]
        if centroids.shape[:2] == expected[:2]:
            centroids = centroids.flatten(2)
        if tuple(centroids.shape) != expected:
            accepted = f"{expected[1:]} or {expected}" if self.n_init == 1 else f"{expected}"
            raise ValueError(
                f"initial centroids have shape {tuple(centroids.shape)}, expected {accepted} "
                f"(model.n_init, model.latent_dim, pixels)"
            )
        if not torch.isfinite(centroids).all():
            raise ValueError("initial centroids contain NaN or infinite values")
        self.centroids.copy_(centroids.to(self.centroids))
        self.initialized.fill_(True)

    def initial_centroids(self, x: torch.Tensor) -> torch.Tensor:
        """Return initial centroids chosen by `init` ("k-means++" or "random") among the
        training images x, shape (n_init, latent_dim, n_pixels)."""
        generator = torch.Generator().manual_seed(self.seed)
        runs = []
        for _ in range(self.n_init):
            if self.init == "random":
                indices = torch.randperm(len(x), generator=generator)[: self.latent_dim]
            else:
                indices = kmeans_plusplus(x, self.latent_dim, generator, self.n_local_trials)
            runs.append(x[indices])
        return torch.stack(runs)

    @torch.no_grad()
    def _initialize(self) -> None:
        """Set the shift tolerance and the initial centroids unless they were set before,
        and pick the run with the lowest initial inertia.

        Rank 0 computes these from the whole training split and the other ranks receive its
        result, so all ranks start from the same centroids.
        """
        need_centroids = not self.initialized.item()
        size = self.centroids.numel()
        values = torch.zeros(size + 1 + self.n_init, dtype=torch.float64)
        if self.trainer.is_global_zero:
            x = training_images(self)
            values[size] = self.tol * mean_pixel_variance(x)
            if need_centroids:
                self.set_initial_centroids(self.initial_centroids(x))
            values[:size] = self.centroids.detach().cpu().flatten()
            if self.n_init > 1:
                # Picks the best run until the first epoch measures them; one run needs none.
                values[size + 1 :] = self._inertia_per_image(x)
        values = broadcast_from_rank_zero(self, values.to(self.device))
        self.set_initial_centroids(values[:size].reshape(self.centroids.shape))
        self.shift_tolerance.fill_(values[size].item())
        self.run_inertia.copy_(values[size + 1 :])
        self.best_run.fill_(self.run_inertia.argmin().item())
        if need_centroids:
            log.info(
                "Initialized %d x %d centroids by %s", self.n_init, self.latent_dim, self.init
            )

    def _inertia_per_image(self, x: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """Return each run's mean squared distance from the images x to their nearest
        centroid, shape (n_init,)."""
        centroids = self.centroids.detach().cpu()
        total = torch.zeros(self.n_init, dtype=torch.float64)
        for chunk in x.split(chunk_size):
            distances = self._run_distances(chunk, centroids).amin(dim=2)
            total += distances.sum(0, dtype=torch.float64)
        return total / len(x)

    def _run_distances(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Return the squared distances of the images x to every run's centroids, shape
        (n, n_init, latent_dim), from one matrix product."""
        flat = squared_distances(x, centroids.reshape(-1, self.n_pixels))
        return flat.reshape(len(x), self.n_init, self.latent_dim)

    # Lightning hooks.

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        n_images = n_training_images(self)
        if self.latent_dim > n_images:
            raise ValueError(
                f"model.latent_dim={self.latent_dim} must be <= {n_images} (the number of "
                f"training images), because each cluster needs an image to start from; pass "
                f"model.latent_dim={n_images} or less, or train on more images"
            )
        if self.solver == "minibatch" and not getattr(self.trainer.datamodule, "shuffle", True):
            log.warning(
                "model.solver=minibatch with data.shuffle=false moves the centroids through "
                "the same batches in the same order every epoch; pass data.shuffle=true "
                "data.batch_size=256 for mini-batch k-means on shuffled batches"
            )
        # Every rank reads the init file here, so a bad file fails on all of them at once.
        if self.init not in INITS and not self.initialized.item():
            self.set_initial_centroids(read_centroids(self.init))

    def on_fit_start(self) -> None:
        # A resumed run has its centroids and tolerance from the checkpoint.
        if not self.initialized.item() or self.shift_tolerance.item() < 0:
            self._initialize()

    def on_train_start(self) -> None:
        # Lightning skips on_train_epoch_start when it resumes from a checkpoint written in the
        # middle of an epoch, so the epoch's sums come from the checkpoint.
        state, self._restored_epoch = self._restored_epoch, None
        if state is None:
            return
        self.on_train_epoch_start()
        for key, value in state.items():
            # The saved sums cover every rank's images and the far images are rank 0's, so the
            # other ranks take only the centroids at the start of the epoch.
            if self.global_rank == 0 or key == "start":
                self._epoch[key] = value.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._epoch is None:
            return
        # Rank 0 alone writes the file, so it keeps the sums over all ranks. Lightning calls
        # this hook on every rank when it saves, so all of them take part.
        # NOTE: the far images are rank 0's alone, so under DDP a resumed epoch re-seeds empty
        # clusters from fewer candidates than an uninterrupted one.
        state = {}
        for key, value in self._epoch.items():
            if key in ADDITIVE_EPOCH_KEYS:
                value = sum_across_ranks(self, value.clone())
            state[key] = value.detach().cpu().clone()
        checkpoint[EPOCH_STATE_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_epoch = checkpoint.get(EPOCH_STATE_KEY)

    def on_train_epoch_start(self) -> None:
        runs, k, n_pixels = self.n_init, self.latent_dim, self.n_pixels
        zeros = torch.zeros(runs, k, dtype=torch.float64, device=self.device)
        self._epoch = {
            "sums": zeros.new_zeros(runs, k, n_pixels),
            "counts": zeros.clone(),
            "inertia": zeros.new_zeros(runs),
            "n_images": zeros.new_zeros(()),
            "start": self.centroids.detach().clone(),
            # Per run, the k images farthest from their centroids on this rank: candidates
            # for re-seeding empty clusters. A distance of -inf marks an unused slot.
            "far_distances": torch.full_like(zeros, -math.inf),
            "far_images": zeros.new_zeros(runs, k, n_pixels),
            "far_labels": torch.zeros(runs, k, dtype=torch.long, device=self.device),
        }

    def training_step(self, batch, batch_idx):
        x = batch[0].flatten(1)
        with torch.no_grad():
            distances, labels, batch_sums, batch_counts = self._assign_and_sum(x)
            self._accumulate(x, labels, distances, batch_sums, batch_counts)
            if self.solver == "minibatch":
                self._minibatch_update(batch_sums, batch_counts)
        # Counts the batch in trainer.global_step; no parameter changes here.
        self.optimizers().step()
        loss = distances[:, self.best_run].mean().float()
        self.log_loss(loss, "train", len(x))
        return loss

    def _assign_and_sum(
        self, x: torch.Tensor, chunk_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Assign the images x to their nearest centroids in every run and sum them per
        cluster.

        Distances and sums are computed in the images' precision (float32 at least): the
        product ||c||^2 - 2 x c^T for the assignment, then for the sums each image added to
        its cluster's row (one run) or the product one_hot^T x (several runs). They run on
        chunks of chunk_size images, which stay in the CPU's cache from the distances to the
        sums. Each chunk's sums are added up in float64, where the centroids are
        computed. On a CPU with several torch threads, the rows are cut into one part per
        thread, and each thread runs its part's chunks with single-threaded products, as
        scikit-learn's Lloyd loop does. On a 2-core CPU this took 31 ms per Fashion-MNIST
        pass instead of 46 ms with two threads inside each product.

        Args:
            x: Images as rows, shape (n, n_pixels).
            chunk_size: Images per chunk.

        Returns:
            Squared distances to the nearest centroid (n, n_init), its index (n, n_init),
            the per-cluster sums (n_init, latent_dim, n_pixels) and counts (n_init,
            latent_dim), both float64.
        """
        runs, k = self.n_init, self.latent_dim
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        centroids = self.centroids.detach().reshape(runs * k, self.n_pixels).to(dtype)
        # Zero rows pad the centroids to a multiple of 8, which made the distance product
        # about 20% faster on a 2-core AMD EPYC. Their columns are dropped before the minimum.
        centroids = F.pad(centroids, (0, 0, 0, -(runs * k) % 8))

        def assign_part(part: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return assign_and_sum_chunks(part, centroids, runs, k, chunk_size)

        torch_threads = torch.get_num_threads()
        # Each thread gets at least two chunks.
        threads = min(torch_threads, len(x) // (2 * chunk_size))
        if threads <= 1 or x.device.type != "cpu":
            distances, labels, sums, counts = assign_part(x)
        else:
            part_size = math.ceil(math.ceil(len(x) / chunk_size) / threads) * chunk_size
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(threads) as pool:
                    parts = list(pool.map(assign_part, x.split(part_size)))
            finally:
                torch.set_num_threads(torch_threads)
            distances = torch.cat([part[0] for part in parts])
            labels = torch.cat([part[1] for part in parts])
            sums = sum(part[2] for part in parts)
            counts = sum(part[3] for part in parts)
        return distances, labels, sums.reshape(runs, k, self.n_pixels), counts.reshape(runs, k)

    def _accumulate(self, x, labels, distances, batch_sums, batch_counts) -> None:
        epoch = self._epoch
        epoch["sums"] += batch_sums
        epoch["counts"] += batch_counts
        epoch["inertia"] += distances.sum(0, dtype=torch.float64)
        epoch["n_images"] += len(x)

        # Keep, per run, the k farthest images seen so far on this rank. Indices below k
        # point into the kept images and the others into the batch.
        k = self.latent_dim
        candidates = torch.cat([epoch["far_distances"], distances.T], dim=1)
        far_distances, index = candidates.topk(k, dim=1)
        from_batch = index >= k
        batch_index = (index - k).clamp(min=0)
        kept_index = index.clamp(max=k - 1)
        kept_images = epoch["far_images"].gather(
            1, kept_index[..., None].expand_as(epoch["far_images"])
        )
        epoch["far_images"] = torch.where(from_batch[..., None], x[batch_index], kept_images)
        epoch["far_labels"] = torch.where(
            from_batch, labels.T.gather(1, batch_index), epoch["far_labels"].gather(1, kept_index)
        )
        epoch["far_distances"] = far_distances

    def _minibatch_update(self, batch_sums: torch.Tensor, batch_counts: torch.Tensor) -> None:
        """Move each centroid to the mean of all images assigned to it so far.

        This is the per-image step 1 / (running count) of mini-batch k-means, taken for a
        whole batch at once. The batch sums are added up over the ranks first, so all ranks
        take the same step.
        """
        batch_sums = sum_across_ranks(self, batch_sums)
        batch_counts = sum_across_ranks(self, batch_counts)
        self.counts += batch_counts
        step = batch_counts / self.counts.clamp(min=1)
        batch_means = batch_sums / batch_counts.clamp(min=1)[..., None]
        self.centroids += step[..., None] * (batch_means - self.centroids)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if is_last_training_batch(self, batch_idx):
            self._end_epoch()

    @torch.no_grad()
    def _end_epoch(self) -> None:
        """Update the centroids (lloyd), re-seed empty clusters, log and test convergence."""
        epoch = self._epoch
        sums = sum_across_ranks(self, epoch["sums"])
        counts = sum_across_ranks(self, epoch["counts"])
        inertia = sum_across_ranks(self, epoch["inertia"])
        n_images = sum_across_ranks(self, epoch["n_images"])
        cluster_sizes = counts.clone()

        empty = counts == 0
        if empty.any():
            self._reseed(empty, sums, counts)
        if self.solver == "lloyd":
            means = sums / counts.clamp(min=1)[..., None]
            # A cluster that lost its only image to re-seeding keeps its centroid.
            self.centroids.copy_(torch.where(counts[..., None] > 0, means, self.centroids))
            self.counts.copy_(counts)

        shifts = (self.centroids - epoch["start"]).pow(2).sum(dim=(1, 2))
        self.run_inertia.copy_(inertia / n_images)
        self.best_run.fill_(self.run_inertia.argmin().item())
        self._epoch = None
        self._log_epoch(cluster_sizes[self.best_run], shifts, empty.sum().item())

        tolerance = self.shift_tolerance.item()
        if shifts.max().item() <= tolerance:
            log.info(
                "k-means converged after %d epochs: centroid shift %.3g <= tolerance %.3g",
                self.current_epoch + 1,
                shifts.max().item(),
                tolerance,
            )
            self.trainer.should_stop = True

    def _reseed(self, empty: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Move each empty cluster onto one of the training images farthest from their
        centroids in the same run, farthest first, taking that image out of its old
        cluster."""
        epoch = self._epoch
        distances = gather_across_ranks(self, epoch["far_distances"], dim=1)
        images = gather_across_ranks(self, epoch["far_images"], dim=1)
        labels = gather_across_ranks(self, epoch["far_labels"], dim=1)
        n_reseeded = 0
        for run in empty.any(dim=1).nonzero().flatten().tolist():
            order = distances[run].argsort(descending=True, stable=True)
            order = order[torch.isfinite(distances[run, order])]
            clusters = empty[run].nonzero().flatten().tolist()
            for cluster, index in zip(clusters, order.tolist(), strict=False):
                image, old_cluster = images[run, index], labels[run, index].item()
                if self.solver == "lloyd":
                    sums[run, old_cluster] -= image
                    counts[run, old_cluster] -= 1
                    sums[run, cluster] = image
                    counts[run, cluster] = 1
                else:
                    self.centroids[run, cluster] = image
                    self.counts[run, cluster] = 1
                n_reseeded += 1
        if self.trainer.is_global_zero:
            warnings.warn(
                f"{empty.sum().item()} of {empty.numel()} clusters had no training images in "
                f"epoch {self.current_epoch}; re-seeded {n_reseeded} of them with the images "
                "farthest from their centroids",
                EmptyClusterWarning,
                stacklevel=2,
            )

    def _log_epoch(self, sizes: torch.Tensor, shifts: torch.Tensor, n_empty: int) -> None:
        """Log the epoch's scalars and, to TensorBoard, the best run's cluster sizes."""
        metrics = {
            "kmeans/inertia_per_image": self.run_inertia[self.best_run].item(),
            "kmeans/centroid_shift": shifts.max().item(),
            "kmeans/empty_clusters": float(n_empty),
            "kmeans/cluster_size_min": sizes.min().item(),
            "kmeans/cluster_size_max": sizes.max().item(),
        }
        # batch_size=1: Lightning weights epoch values by the batch size in float32, which
        # turned a cluster size of 7417 into 7417.0005 with one batch of 54,000 images.
        for name, value in metrics.items():
            self.log(name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        writer = tensorboard_writer(self.trainer)
        if writer is None or not self.trainer.is_global_zero:
            return
        # One bin per cluster, so the histogram shows each cluster's size.
        clusters = torch.arange(self.latent_dim, dtype=torch.float64)
        sizes = sizes.cpu()
        writer.add_histogram_raw(
            "kmeans/cluster_sizes",
            min=0,
            max=self.latent_dim - 1,
            num=sizes.sum().item(),
            sum=(sizes * clusters).sum().item(),
            sum_squares=(sizes * clusters**2).sum().item(),
            bucket_limits=(clusters + 0.5).tolist(),
            bucket_counts=sizes.tolist(),
            global_step=epoch_metrics_step(self.trainer),
        )

    def configure_optimizers(self):
        return BatchCounter(self.parameters())
