"""k-means arithmetic of kmeans_ae: distances, assignment with per-cluster sums, k-means++
seeding and the data's variance, on rows of pixels."""

import math

import torch


def squared_distances(
    x: torch.Tensor, centroids: torch.Tensor, x_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Return ||x_i - c_j||^2 for all rows of x and of centroids, shape (n, k), clamped at 0.

    The distances come from one matrix product, ||x||^2 - 2 x c^T + ||c||^2, in the
    precision of x (float32 at least): float32 images are compared with float32 copies of
    the centroids, as scikit-learn does for float32 data, and float64 images with the float64
    centroids.

    Args:
        x: Rows (n, d).
        centroids: Rows (k, d).
        x_norms: ||x_i||^2 of each row of x, if already known.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, centroids = x.to(dtype), centroids.to(dtype)
    if x_norms is None:
        x_norms = torch.linalg.vecdot(x, x)
    distances = torch.addmm((centroids * centroids).sum(1), x, centroids.T, alpha=-2)
    distances += x_norms[:, None]
    return distances.clamp_(min=0)


def assign_and_sum_chunks(
    x: torch.Tensor, centroids: torch.Tensor, runs: int, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign the rows of x to the nearest of each run's k centroids and sum them per cluster.

    Args:
        x: Rows (n, d) in the precision of the products.
        centroids: The runs' centroids as rows, with run r's cluster j at row r * k + j. Zero
            rows of padding may follow. The dtype is that of x.
        runs: Number of runs.
        k: Centroids per run.
        chunk_size: Rows per pair of matrix products.

    Returns:
        Squared distances to the nearest centroid (n, runs), its index (n, runs), and the
        float64 sums (runs * k, d) and counts (runs * k,) of the rows of each cluster.
    """
    centroid_norms = (centroids * centroids).sum(1)
    # Row r of a chunk's one-hot matrix marks the images of run r // k, cluster r % k.
    offsets = torch.arange(runs, device=x.device)[:, None] * k
    sums = torch.zeros(runs * k, x.shape[1], dtype=torch.float64, device=x.device)
    counts = torch.zeros(runs * k, dtype=torch.float64, device=x.device)
    all_distances, all_labels = [], []
    for chunk in x.split(chunk_size):
        scores = torch.addmm(centroid_norms, chunk, centroids.T, alpha=-2)
        best, labels = scores[:, : runs * k].reshape(len(chunk), runs, k).min(dim=2)
        if runs == 1:
            # Adding each row to its cluster's sum took 117 us for a 1024 x 784 chunk on one
            # CPU thread, and the product with the one-hot matrix below 327 us.
            chunk_sums = chunk.new_zeros(k, x.shape[1]).index_add_(0, labels[:, 0], chunk)
            sums += chunk_sums.double()
            counts += torch.bincount(labels[:, 0], minlength=k)
        else:
            one_hot_t = chunk.new_zeros(runs * k, len(chunk))
            one_hot_t.scatter_(0, labels.T + offsets, 1.0)
            sums += (one_hot_t @ chunk).double()
            counts += one_hot_t.sum(1, dtype=torch.float64)
        norms = torch.linalg.vector_norm(chunk, dim=1).square_()
        all_distances.append((best + norms[:, None]).clamp_(min=0))
        all_labels.append(labels)
    return torch.cat(all_distances), torch.cat(all_labels), sums, counts


def kmeans_plusplus(
    x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: int | None = None
) -> torch.Tensor:
    """Choose k initial centroids among the rows of x by greedy k-means++.

    The first centroid is a uniformly random row. Each next one is the best of n_local_trials
    rows drawn with probability proportional to their squared distance from the nearest
    centroid so far, where best means the lowest sum of those squared distances once the
    candidate is added. Where every row already lies on a centroid, candidates are drawn
    uniformly.

    Args:
        x: Data, shape (n, n_features); distances are computed in its precision.
        k: Number of centroids, at most n.
        generator: Source of the random draws.
        n_local_trials: Candidates per centroid; None means 2 + floor(ln k).

    Returns:
        Indices of the chosen rows, shape (k,).
    """
    n = len(x)
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    norms = torch.linalg.vecdot(x, x)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=generator).item()
    closest = squared_distances(x, x[chosen[:1]], norms)[:, 0]
    for index in range(1, k):
        if closest.sum() > 0:
            candidates = torch.multinomial(
                closest, n_local_trials, replacement=True, generator=generator
            )
        else:
            candidates = torch.randint(n, (n_local_trials,), generator=generator)
        closest_with = torch.minimum(closest[:, None], squared_distances(x, x[candidates], norms))
        best = closest_with.sum(0, dtype=torch.float64).argmin()
        chosen[index] = candidates[best]
        closest = closest_with[:, best]
    return chosen


def mean_pixel_variance(x: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Return the variance of each column of x (divided by n), averaged over columns, in
    float64, converting chunk_size rows at a time."""
    mean = sum(chunk.double().sum(0) for chunk in x.split(chunk_size)) / len(x)
    squares = torch.zeros((), dtype=torch.float64, device=x.device)
    for chunk in x.split(chunk_size):
        centered = chunk.double() - mean
        # One dot product: (centered ** 2).sum() took 6 times as long on Fashion-MNIST.
        squares += torch.dot(centered.view(-1), centered.view(-1))
    return squares / x.numel()
