"""Argument parsing, logging and one-line error reports shared by the classroom scripts."""

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from autoexp.classroom.config import override_key

log = logging.getLogger(__name__)


class ScriptError(Exception):
    """An invalid argument or input file, reported as one line without a traceback."""


# Errors that come from the arguments, the input files or the config, not from a bug. The
# scripts report them as one line on stderr and exit with status 1.
EXPECTED_ERRORS = (
    ScriptError,
    FileNotFoundError,
    ValueError,
    HydraException,
    OmegaConfBaseException,
)

# Lightning and its dependencies warn about things that do not matter for these scripts:
# in-memory data needs no loader workers, and the checkpoints never use ModelCheckpoint.
IGNORED_WARNINGS = (
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*weights_only.*",
    ".*callbacks used to create the checkpoint need to be provided.*",
    ".*The number of training batches.*",
    ".*is smaller than the logging interval.*",
)


class ArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; run {self.prog} --help for usage\n")


def make_parser(script: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """Return a parser named after the script file with the options every script takes."""
    parser = ArgumentParser(
        prog=Path(script).name,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose_argument(parser)
    return parser


def add_verbose_argument(parser: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """Add --verbose; a subcommand's copy leaves the main parser's value alone unless given."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="show Lightning's messages and warnings, debug logs, and the traceback of errors",
    )


def add_overrides_argument(
    parser: argparse.ArgumentParser, example: str = "data=fashion_mnist seed=1"
) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"Hydra overrides of conf/train.yaml as autoexp-train takes them, e.g. {example}",
    )


def add_tensorboard_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        type=Path,
        default=None,
        help="also write the images (and training scalars) as TensorBoard events to DIR; "
        "by default nothing goes to TensorBoard",
    )


def one_line(error: BaseException) -> str:
    """Return the error's message with its lines joined, so that it fits on one line."""
    text = ""
    for line in str(error).splitlines():
        line = line.strip()
        if not line:
            continue
        separator = " " if not text or text.endswith(":") else "; "
        text = f"{text}{separator}{line}" if text else line
    return text or type(error).__name__


def configure_logging(verbose: bool) -> None:
    """Log this package's messages to stderr, and quiet Lightning unless verbose is set."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    if verbose:
        return
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def check_callback_overrides(overrides: list[str]) -> None:
    """Raise ScriptError for an override of a callback that the scripts do not build.

    The scripts build their own trainer, with the config's image_logger only, so any other
    callbacks override would be accepted and have no effect.
    """
    for override in overrides:
        parts = override_key(override).split(".")
        if parts[0] == "callbacks" and parts[1:2] != ["image_logger"]:
            raise ScriptError(
                f"{override}: the scripts use only callbacks.image_logger of the config, so "
                "this override would have no effect; train with autoexp-train to use other "
                "callbacks"
            )


def run(parser: ArgumentParser, main: Callable[[argparse.Namespace], None]) -> None:
    """Parse the command line, call main, and exit with status 1 and one line on an expected
    error (with its traceback under --verbose)."""
    args = parser.parse_args()
    configure_logging(args.verbose)
    try:
        check_callback_overrides(getattr(args, "overrides", None) or [])
        main(args)
    except EXPECTED_ERRORS as error:
        if args.verbose:
            raise
        print(f"{parser.prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


def split_path_and_overrides(
    path: str | None, overrides: list[str]
) -> tuple[Path | None, list[str]]:
    """Return an optional path argument and the overrides, with an override that argparse
    took for the path moved back to the overrides.

    argparse fills an optional positional path before the overrides, so `plot.py data=digits`
    puts "data=digits" in the path. A value that is not an existing file and contains "=" or
    starts with "~", as Hydra's overrides that delete a key do, is taken as an override, and
    the overrides are checked by check_callback_overrides.
    """
    if path is not None and ("=" in path or path.startswith("~")) and not Path(path).exists():
        overrides = [path, *overrides]
        path = None
    check_callback_overrides(overrides)
    return (Path(path) if path is not None else None), overrides


def parse_int(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return number


def positive_int(value: str) -> int:
    """Parse an integer >= 1, for argparse's type."""
    return parse_int(value, 1)


def non_negative_int(value: str) -> int:
    """Parse an integer >= 0, for argparse's type."""
    return parse_int(value, 0)
