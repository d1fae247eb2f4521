#!/usr/bin/env python3
"""Turn the PCA files that pca.py wrote in the current folder into PNG pictures.

Writes, in the current folder:

    pca-mean.png             the mean training image, on the pixel scale [0, 1]
    pca-eigenvectors.png     the leading eigenvectors as images, largest eigenvalue first,
                             each scaled to its own range (black = lowest, white = highest)
    pca-reconstructions.png  test images and their projections onto the mean plus the
                             leading 1, 4, 16, ... components
    pca-spectrum.png         the eigenvalues on a log scale and the cumulative explained variance

The test images come from the data that pca.py used, unless an override changes it.
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
from autoexp.classroom.plots import plot_eigen


def main(args) -> None:
    paths = plot_eigen(
        Path.cwd(),
        args.overrides,
        args.tensorboard,
        n_eigenvectors=args.n_eigenvectors,
        n_images=args.n_images,
        counts=tuple(args.components),
    )
    print(f"wrote {', '.join(path.name for path in paths)}")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_overrides_argument(parser)
    add_tensorboard_argument(parser)
    parser.add_argument(
        "--n-eigenvectors",
        type=positive_int,
        default=16,
        metavar="N",
        help="number of leading eigenvectors shown (default 16)",
    )
    parser.add_argument(
        "--n-images",
        type=positive_int,
        default=8,
        metavar="N",
        help="number of test images reconstructed (default 8)",
    )
    parser.add_argument(
        "--components",
        type=positive_int,
        nargs="+",
        default=[1, 4, 16, 64],
        metavar="K",
        help="component counts of the reconstructions, besides all components (default 1 4 16 64)",
    )
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
