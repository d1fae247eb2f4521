#!/usr/bin/env python3
"""Run k-means (Lloyd's algorithm) on the training split and save centroids and assignments.

Writes, in the current folder:

    kmeans-centroids.npy    centroids as images, shape (k, channels, height, width)
    kmeans-assignments.npy  index of the nearest final centroid of each training image, (n,)
    kmeans.json             the overrides that chose the data, and the objective per iteration

The run is `autoexp-train model=kmeans_ae`: k-means++ initialisation, then one Lloyd
iteration per epoch until the centroids move less than model.tol or trainer.max_epochs
iterations have run. model.latent_dim sets the number of clusters k (default 10), seed the
initialisation. Then run plot-centroids.py to see the clusters.
"""

from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.cli import add_overrides_argument, make_parser, run
from autoexp.classroom.kmeans import fit_kmeans, save_kmeans


def main(args) -> None:
    kmeans, _, _ = fit_kmeans(args.overrides)
    k, n = len(kmeans.centroids), len(kmeans.assignments)
    print(f"k-means with k={k} on {n} training images: {len(kmeans.objectives) - 1} iterations")
    print("iteration  objective (sum of squared distances to the nearest centroid)")
    for iteration, value in enumerate(kmeans.objectives):
        print(f"{iteration:>9}  {value:.2f}  ({value / n:.4f} per image)")
    print(f"cluster sizes: {' '.join(str(size) for size in kmeans.cluster_sizes)}")
    paths = save_kmeans(kmeans, Path.cwd())
    print(f"wrote {', '.join(path.name for path in paths)}")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_overrides_argument(parser, "data=fashion_mnist model.latent_dim=16 seed=1")
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
