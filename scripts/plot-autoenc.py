#!/usr/bin/env python3
"""Save an mlp_ae checkpoint's encoder and decoder filters and its test reconstructions as PNGs.

Without CKPT, the newest .ckpt file in the current folder is plotted. The files are named after
the checkpoint, e.g. for weight-1.ckpt:

    weight-1-encoder-filters.png     rows of the first encoder layer, one image per hidden unit
    weight-1-decoder-filters.png     columns of the last decoder layer, one image per hidden unit
    weight-1-test-reconstructions.png  test images (top row) above their reconstructions

Filters are signed weights, so each is scaled to its own range (black = lowest, white =
highest); images and reconstructions keep their [0, 1] pixel values. The data set is the one
stored in the checkpoint unless an override such as data=fashion_mnist changes it.
"""

from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.checkpoints import newest_checkpoint
from autoexp.classroom.cli import (
    add_overrides_argument,
    add_tensorboard_argument,
    make_parser,
    positive_int,
    run,
    split_path_and_overrides,
)
from autoexp.classroom.plots import plot_autoencoder


def main(args) -> None:
    checkpoint, overrides = split_path_and_overrides(args.checkpoint, args.overrides)
    if checkpoint is None:
        checkpoint = newest_checkpoint(Path.cwd())
    paths = plot_autoencoder(
        checkpoint, overrides, Path.cwd(), args.tensorboard, args.n_images, args.max_filters
    )
    print(f"plotted {checkpoint}: {', '.join(path.name for path in paths)}")


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument(
        "checkpoint",
        nargs="?",
        metavar="CKPT",
        help="checkpoint of an mlp_ae; default: the newest .ckpt file in the current folder",
    )
    add_overrides_argument(parser)
    add_tensorboard_argument(parser)
    parser.add_argument(
        "--n-images",
        type=positive_int,
        default=16,
        metavar="N",
        help="number of test images reconstructed (default 16)",
    )
    parser.add_argument(
        "--max-filters",
        type=positive_int,
        default=64,
        metavar="N",
        help="number of filters shown per layer (default 64)",
    )
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
