#!/usr/bin/env python3
"""Create an mlp_ae checkpoint, or train one for exactly one epoch from checkpoint to checkpoint.

Run from an experiment folder:

    ../scripts/train-autoenc.py init weight-0.ckpt
    ../scripts/train-autoenc.py train weight-0.ckpt weight-1.ckpt
    ../scripts/train-autoenc.py train weight-1.ckpt weight-2.ckpt

Hydra overrides after the file names set the config as for autoexp-train, e.g.
`init weight-0.ckpt data=fashion_mnist model.latent_dim=16`. The checkpoint stores them, so
`train` keeps those settings; `train` overrides may change the data and trainer settings but
not the model. N `train` steps give the same weights as `autoexp-train trainer.max_epochs=N`
with the same overrides and seed, on the CPU.
"""

from pathlib import Path

import _bootstrap  # noqa: F401

from autoexp.classroom.cli import (
    add_overrides_argument,
    add_tensorboard_argument,
    add_verbose_argument,
    make_parser,
    run,
)
from autoexp.classroom.training import init_checkpoint, train_epoch


def main(args) -> None:
    if args.command == "init":
        init_checkpoint(args.output, args.overrides, args.tensorboard)
        print(f"wrote {args.output} (epoch 0)")
        return
    result = train_epoch(args.input, args.output, args.overrides, args.tensorboard)
    print(
        f"epoch {result.epoch}: train loss {result.train_loss:.4f}, "
        f"validation loss {result.val_loss:.4f} (squared error per image, summed over "
        f"{result.n_pixels} pixels); wrote {args.output}"
    )


def make_command_parser():
    parser = make_parser(__file__, __doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init", help="write a freshly initialised mlp_ae checkpoint (epoch 0) to OUT"
    )
    init.add_argument("output", type=Path, metavar="OUT", help="checkpoint file to write")
    train = commands.add_parser(
        "train", help="train the checkpoint IN for one epoch and write the result to OUT"
    )
    train.add_argument("input", type=Path, metavar="IN", help="checkpoint file to start from")
    train.add_argument(
        "output", type=Path, metavar="OUT", help="checkpoint file to write; must differ from IN"
    )
    for command in (init, train):
        add_overrides_argument(command, "data=fashion_mnist model.latent_dim=16 seed=1")
        add_tensorboard_argument(command)
        add_verbose_argument(command, subcommand=True)
    return parser


if __name__ == "__main__":
    run(make_command_parser(), main)
