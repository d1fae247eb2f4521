"""Process set-up and clean-up for DDP runs: worker logging, stop signals, the process group."""

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

# Seconds that the launching process of trainer=ddp waits for its workers after a stop signal.
WORKER_STOP_TIMEOUT_S = 120.0


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


@contextlib.contextmanager
def launcher_waits_for_workers(trainer: pl.Trainer) -> Iterator[None]:
    """Keep the launching process of trainer=ddp alive after a stop signal until its workers end.

    After SIGTERM or Ctrl-C, the workers save interrupted.ckpt before they end. Without this
    block, SIGTERM ends the spawn launcher at once, and Ctrl-C ends it right after Lightning's
    clean-up, while its workers still write the checkpoint. Where the end of the launcher ends
    the other processes too (a container whose first process it is, a scheduler that cleans
    up after the main process), the checkpoint was lost.

    Inside the block, SIGTERM raises TrainingInterrupted in the launcher as Ctrl-C raises
    KeyboardInterrupt. On the way out, the launcher sends its live workers SIGUSR2, which
    stops them as SIGTERM does where the signal reached the launcher alone, and waits up to
    WORKER_STOP_TIMEOUT_S seconds for them. A second SIGTERM ends the launcher at once.
    Anywhere else (one process, another strategy, a thread other than the main one, a job of
    Hydra's joblib launcher) the block runs unchanged.

    NOTE: in a joblib sweep the job's process is a loky worker, which has to end on SIGTERM as
    before: it would survive TrainingInterrupted and run on after the sweep's main process.
    There the launcher still ends first, and its workers save after it.
    """
    # Imported here because autoexp.callbacks.safety imports this module.
    from autoexp.callbacks.safety import LAUNCHER_EXIT_SIGNAL, TrainingInterrupted

    launcher = trainer.strategy.launcher
    if (
        trainer.world_size == 1
        or not isinstance(launcher, _MultiProcessingLauncher)
        or LAUNCHER_EXIT_SIGNAL is None
        or threading.current_thread() is not threading.main_thread()
        or in_launcher_worker()
    ):
        yield
        return

    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame) -> None:
        signal.signal(signal.SIGTERM, previous)
        log.warning(
            "Received SIGTERM, so the DDP workers stop. Send SIGTERM again to exit at once"
        )
        raise TrainingInterrupted(128 + signum)

    # A SIGTERM that the process inherited as ignored stays ignored.
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except BaseException as error:
        # Lightning turns Ctrl-C into SystemExit(1) and marks the trainer interrupted.
        if isinstance(error, TrainingInterrupted) or trainer.interrupted:
            _stop_workers(getattr(launcher, "procs", []), LAUNCHER_EXIT_SIGNAL)
        raise
    finally:
        if signal.getsignal(signal.SIGTERM) is stop:
            signal.signal(signal.SIGTERM, previous)


def _stop_workers(processes: list[multiprocessing.Process], stop_signal: int) -> None:
    """Send live DDP workers stop_signal and wait up to WORKER_STOP_TIMEOUT_S for them to end."""
    alive = [process for process in processes if process.is_alive()]
    if not alive:
        return
    log.warning(
        "Waiting for %d DDP workers to stop (at most %.0f s); workers in their training "
        "batches save interrupted.ckpt first",
        len(alive),
        WORKER_STOP_TIMEOUT_S,
    )
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, stop_signal)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
    still_alive = [process.pid for process in alive if process.is_alive()]
    if still_alive:
        log.warning(
            "Timed out after %.0f s waiting for DDP workers %s to exit; Linux sends them "
            "SIGUSR2 when this process ends",
            WORKER_STOP_TIMEOUT_S,
            still_alive,
        )
