#!/usr/bin/env python3
"""Check numerically the identities behind PCA and k-means on the chosen training split.

1. The sum over K directions u_k and all images x_i of (u_k . x_i)^2 equals ||X U^T U||_F^2,
   the squared Frobenius norm of the (centred) data matrix projected onto the directions.
2. The PCA basis (the leading K eigenvectors) has the smallest reconstruction error among
   orthonormal bases of K directions: it beats random orthonormal bases and a linear_pca_ae
   trained by gradient descent.
3. The k-means objective, the sum of squared distances to the nearest centroid, equals
   ||X - Z C||_F^2: the reconstruction error of the one-hot codes Z times the centroids C.
4. No Lloyd iteration increases the k-means objective.

Each check prints both sides. The exit status is 1 if any check fails. By default PCA,
k-means and the linear_pca_ae are fitted here; --from-files checks the results that pca.py
and kmeans.py saved in the current folder instead.
"""

import sys
from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.cli import (
    add_overrides_argument,
    make_parser,
    non_negative_int,
    positive_int,
    run,
)
from autoexp.classroom.identities import CheckSettings, run_checks


def main(args) -> None:
    settings = CheckSettings(
        overrides=args.overrides,
        n_components=args.components,
        n_random_bases=args.random_bases,
        pca_epochs=args.pca_epochs,
        n_clusters=args.clusters,
        kmeans_iterations=args.kmeans_iterations,
        from_files=args.from_files,
        linear_pca_checkpoint=args.linear_pca,
    )
    checks = run_checks(settings)
    for check in checks:
        print("\n".join(check.lines()))
    failed = [check for check in checks if not check.passed]
    if failed:
        titles = "; ".join(check.title for check in failed)
        print(
            f"check-identities.py: error: {len(failed)} of {len(checks)} checks failed: {titles}",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"all {len(checks)} checks passed")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_overrides_argument(parser)
    parser.add_argument(
        "--components",
        type=positive_int,
        default=16,
        metavar="K",
        help="number of PCA directions K in checks 1 and 2 (default 16)",
    )
    parser.add_argument(
        "--random-bases",
        type=non_negative_int,
        default=5,
        metavar="N",
        help="number of random orthonormal bases compared with PCA (default 5)",
    )
    parser.add_argument(
        "--pca-epochs",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="epochs of the linear_pca_ae compared with PCA; 0 leaves it out (default 3)",
    )
    parser.add_argument(
        "--linear-pca",
        type=Path,
        metavar="CKPT",
        help="compare PCA with this trained linear_pca_ae checkpoint instead of training one",
    )
    parser.add_argument(
        "--clusters",
        type=positive_int,
        default=10,
        metavar="K",
        help="number of k-means clusters (default 10)",
    )
    parser.add_argument(
        "--kmeans-iterations",
        type=positive_int,
        default=10,
        metavar="N",
        help="Lloyd iterations at most; fewer when the centroids stop moving (default 10)",
    )
    parser.add_argument(
        "--from-files",
        action="store_true",
        help="check the pca-*.npy and kmeans-*.npy files in the current folder instead of "
        "fitting PCA and k-means here",
    )
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
