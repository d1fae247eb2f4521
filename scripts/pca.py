#!/usr/bin/env python3
"""Compute the exact PCA of the training split and save the mean, eigenvalues and eigenvectors.

Writes, in the current folder:

    pca-mean.npy          mean training image, shape (channels, height, width)
    pca-eigenvalues.npy   eigenvalues of the covariance (divided by n), largest first, (D,)
    pca-eigenvectors.npy  unit eigenvectors as columns, in the order of the eigenvalues, (D, D)
    pca.json              the overrides that chose the data, and the explained variance

D is the number of pixels. numpy.load reads the .npy files, and torch.from_numpy turns the
arrays into tensors. The PCA is the one of `autoexp-train model=linear_pca_ae
model.solver=eigh`: the covariance is summed in float64 and diagonalised by eigh.
Then run plot-eigen.py to see the eigen-images.
"""

from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.cli import add_overrides_argument, make_parser, run
from autoexp.classroom.pca import fit_pca, reported_counts, save_pca


def main(args) -> None:
    pca = fit_pca(args.overrides)
    n_pixels = len(pca.eigenvalues)
    print(f"PCA of {pca.n_samples} {pca.data} training images of {n_pixels} pixels")
    print("components  explained variance")
    for count in reported_counts(n_pixels):
        print(f"{count:>10}  {pca.explained_variance(count):.4f}")
    paths = save_pca(pca, Path.cwd())
    print(f"wrote {', '.join(path.name for path in paths)}")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_overrides_argument(parser)
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
