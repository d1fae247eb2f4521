"""Process set-up and clean-up for DDP runs: logging in the workers, the process group at exit."""

import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def destroy_process_group_at_exit() -> None:
    """Destroy the default torch.distributed process group if the process still has one.

    autoexp registers this with atexit when it is imported, so it runs in every process that
    imports autoexp, the DDP workers included, before the interpreter shuts down. Otherwise a
    gloo worker thread may release the tensors of a finished collective during interpreter
    shutdown. That thread then calls std::terminate, and the process aborts with "terminate
    called without an active exception". Lightning 2.6 destroys the group at exit only for NCCL.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    log.debug("Destroying the torch.distributed process group before exit")
    distributed.destroy_process_group()


def _handler_settings(handler: logging.Handler) -> dict[str, Any] | None:
    """Return what rebuilds a file or console handler in another process, or None."""
    formatter = handler.formatter
    settings = {
        "level": handler.level,
        "format": getattr(formatter, "_fmt", None),
        "datefmt": getattr(formatter, "datefmt", None),
    }
    if isinstance(handler, logging.FileHandler):
        return {**settings, "file": handler.baseFilename}
    if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
        return {**settings, "stream": "stdout" if handler.stream is sys.stdout else "stderr"}
    return None


class _RankFilter(logging.Filter):
    """Pass every record on rank 0 and only errors on the other ranks, prefixed with the rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = rank_zero_only.rank
        record.rank_prefix = f"[rank {rank}] " if rank > 0 else ""
        return rank == 0 or record.levelno >= logging.ERROR


class WorkerLogging(pl.Callback):
    """Give DDP worker processes the logging setup of the process that launched them.

    The ddp_spawn launcher starts its workers as new interpreters with Python's default
    logging, so their INFO lines (the data loaded, the k-means convergence) would go nowhere
    and their warnings to the console only, unformatted and once per rank. When a worker
    unpickles this callback, before the trainer runs, and its root logger has no handlers,
    the callback adds the launching process's file and console handlers (Hydra's train.log
    and console). Rank 0 then logs as the launching process does, and other ranks log errors
    only, prefixed with their rank, so a message that every rank emits appears once.
    """

    def __init__(self) -> None:
        root = logging.getLogger()
        self.level = root.level
        self.handlers = [
            settings
            for settings in (_handler_settings(handler) for handler in root.handlers)
            if settings is not None
        ]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # multiprocessing's spawn start method imports the parent's main module as
        # __mp_main__ before it unpickles the process's arguments, this callback among them.
        if "__mp_main__" in sys.modules:
            self._add_handlers()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A worker whose main module was not found (an interactive session) gets the
        # handlers here, after the data module's prepare_data has logged.
        if multiprocessing.parent_process() is not None:
            self._add_handlers()

    def _add_handlers(self) -> None:
        root = logging.getLogger()
        if root.handlers or not self.handlers:
            return
        rank_filter = _RankFilter()
        for settings in self.handlers:
            if "file" in settings:
                handler: logging.Handler = logging.FileHandler(settings["file"], mode="a")
            else:
                handler = logging.StreamHandler(getattr(sys, settings["stream"]))
            text_format = "%(rank_prefix)s" + (settings["format"] or logging.BASIC_FORMAT)
            handler.setFormatter(logging.Formatter(text_format, settings["datefmt"]))
            handler.setLevel(settings["level"])
            handler.addFilter(rank_filter)
            root.addHandler(handler)
        root.setLevel(self.level)
        logging.captureWarnings(True)


def in_launcher_worker() -> bool:
    """Return whether this process's default start method is not one of Python's own.

    That is the case in the loky worker processes where Hydra's joblib launcher runs jobs.
    """
    current = multiprocessing.get_start_method(allow_none=True)
    return current not in (None, *multiprocessing.get_all_start_methods())


# MASTER_PORT values that launcher_job warned about, so that a worker warns once, not at each
# fit and test.
_ports_warned_about: set[str] = set()


@contextlib.contextmanager
def launcher_job() -> Iterator[None]:
    """Prepare a joblib launcher job for the spawn launcher of trainer=ddp inside the block.

    Hydra's joblib launcher runs jobs side by side in loky worker processes. Outside such a
    worker the block runs unchanged. Inside one:

    - spawn becomes the default start method of multiprocessing. The default is loky's,
      which the spawn launcher passes on to its workers; they cannot set it ("cannot find
      context for 'loky'") and exit.
    - MASTER_PORT is removed from the environment, so the job's rank 0 listens on a free
      port of its own. Jobs that run at the same time inherit the same MASTER_PORT; the
      first one listens on it, and the ranks of the others fail with "address already in
      use" or join the wrong job. The block restores MASTER_PORT on exit, so the next job
      in the same worker finds the environment it inherited, not the port Lightning set.

    NOTE: Lightning finds the free port by binding port 0 and closing the socket, so two jobs
    that start together could still draw the same port. That has not been seen here.
    """
    if not in_launcher_worker():
        yield
        return
    start_method = multiprocessing.get_start_method()
    inherited_port = os.environ.pop("MASTER_PORT", None)
    if inherited_port is not None and inherited_port not in _ports_warned_about:
        _ports_warned_about.add(inherited_port)
        log.warning(
            "Ignoring MASTER_PORT=%s from the environment: jobs of the joblib launcher run "
            "side by side, and each one needs a port of its own, so each takes a free one. "
            "Unset MASTER_PORT to silence this warning.",
            inherited_port,
        )
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(start_method, force=True)
        if inherited_port is None:
            os.environ.pop("MASTER_PORT", None)
        else:
            os.environ["MASTER_PORT"] = inherited_port
