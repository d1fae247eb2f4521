#!/usr/bin/env python3
"""Turn the k-means files that kmeans.py wrote in the current folder into PNG pictures.

Writes, in the current folder:

    kmeans-centroids.png        the centroids as images, on the pixel scale [0, 1]
    kmeans-cluster-sizes.png    the number of training images in each cluster
    kmeans-cluster-members.png  for the largest clusters, the centroid and then training
                                images of that cluster, drawn at random (seed 0)

The training images come from the data that kmeans.py used, unless an override changes it.
"""

from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.cli import (
    add_overrides_argument,
    add_tensorboard_argument,
    make_parser,
    positive_int,
    run,
)
from autoexp.classroom.plots import plot_centroids


def main(args) -> None:
    paths = plot_centroids(
        Path.cwd(),
        args.overrides,
        args.tensorboard,
        n_clusters=args.n_clusters,
        n_members=args.n_members,
    )
    print(f"wrote {', '.join(path.name for path in paths)}")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_overrides_argument(parser)
    add_tensorboard_argument(parser)
    parser.add_argument(
        "--n-clusters",
        type=positive_int,
        default=6,
        metavar="N",
        help="number of clusters whose members are shown, largest first (default 6)",
    )
    parser.add_argument(
        "--n-members",
        type=positive_int,
        default=12,
        metavar="N",
        help="number of training images shown per cluster (default 12)",
    )
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
