"""Callbacks that end a run without losing work: on a non-finite loss and on SIGTERM or SIGINT."""

import ctypes
import logging
import math
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig

from autoexp.distributed import in_launcher_worker

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The signal that Linux sends a DDP worker when its launching process ends. torch's spawn sets
# SIGINT, which does nothing in a worker that inherited SIGINT as ignored.
LAUNCHER_EXIT_SIGNAL = getattr(signal, "SIGUSR2", None)
# From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
# Seconds that a stopped joblib job waits for the end of the sweep's main process. That process
# ended 0.11 s after SIGTERM to the group on a 2-core CPU.
SWEEP_END_WAIT_S = 3.0


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send signum to this process when its parent ends.

    Returns False where that is not possible: on other systems, or if prctl fails.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TrainingDivergedError(RuntimeError):
    """The training loss, the validation loss or a weight became NaN or infinite."""


class TrainingInterrupted(SystemExit):
    """SIGTERM or SIGINT stopped training; the exit code is 128 plus the signal number.

    It derives from SystemExit, so that it ends a whole sweep instead of one job.
    """


def saved_checkpoint(trainer: pl.Trainer) -> str | None:
    """Return the newest checkpoint that the ModelCheckpoint callbacks wrote, or None."""
    paths = [
        Path(path)
        for callback in trainer.checkpoint_callbacks
        for path in (callback.last_model_path, callback.best_model_path)
        if path and Path(path).is_file()
    ]
    if not paths:
        return None
    return str(max(paths, key=lambda path: path.stat().st_mtime))


def current_learning_rate(trainer: pl.Trainer) -> float | None:
    """Return the learning rate of the first optimizer's first parameter group, or None."""
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers or not optimizers[0].param_groups:
        return None
    lr = optimizers[0].param_groups[0].get("lr")
    return float(lr) if isinstance(lr, int | float) else None


def first_non_finite(state_dict: dict[str, Any]) -> tuple[str, float] | None:
    """Return the name and one bad value of the first tensor that contains NaN or infinity."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = tensor[~torch.isfinite(tensor)]
            if bad.numel():
                return name, bad[0].item()
    return None


class NonFiniteLossCheck(pl.Callback):
    """Stops training with TrainingDivergedError when the loss or a weight is NaN or infinite.

    The training loss is checked after each batch and the validation loss after each
    validation. The weights are checked in `on_save_checkpoint`, which Lightning calls before a
    checkpoint is written, so a diverged model never replaces `last.ckpt`. Under DDP the ranks
    reduce the training loss first, so that they all stop at the same batch.

    Args:
        val_metric: Validation metric to check; it must be logged with sync_dist=True.
        kept_files: Text that the error message gives for the files that remain valid, in
            place of the newest checkpoint of the ModelCheckpoint callbacks. For runs that
            save checkpoints another way.
    """

    def __init__(self, val_metric: str = "val/loss", kept_files: str | None = None):
        self.val_metric = val_metric
        self.kept_files = kept_files
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The step at which TensorBoard shows this batch's train/loss.
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        if trainer.world_size > 1:
            # The mean is NaN or infinite as soon as one rank's loss is.
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
        # Checked as a Python float, because torch.isfinite makes a new tensor each step: about
        # 7 us on a CPU, against 0.3 us. Both wait for the device.
        if not math.isfinite(loss.item()):
            where = f"at step {self._step} (epoch {trainer.current_epoch})"
            raise TrainingDivergedError(
                self._message(trainer, pl_module, "train/loss", loss, where)
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.val_metric)
        if trainer.sanity_checking or value is None or torch.isfinite(value):
            return
        where = f"after step {trainer.global_step} (epoch {trainer.current_epoch})"
        raise TrainingDivergedError(
            self._message(trainer, pl_module, self.val_metric, value, where)
        )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is None:
            return
        name, value = bad
        where = f"after step {trainer.global_step} (epoch {trainer.current_epoch})"
        raise TrainingDivergedError(
            self._message(trainer, pl_module, f"weight {name}", value, where)
            + "; the checkpoint with these weights was not written"
        )

    def _message(self, trainer, pl_module, name: str, value: Any, where: str) -> str:
        if isinstance(value, torch.Tensor):
            value = value.item()
        checkpoint = saved_checkpoint(trainer)
        if self.kept_files is not None:
            kept = self.kept_files
        elif checkpoint:
            kept = f"the last good checkpoint is {checkpoint}"
        else:
            kept = "no checkpoint was saved yet"
        optimizer = getattr(pl_module, "optimizer_config", None) or {}
        if "lr" in optimizer:
            lr = optimizer["lr"]
            fix = f"lower model.optimizer.lr (now {lr:g})"
            current = current_learning_rate(trainer)
            if current is not None and current > lr and not math.isclose(current, lr):
                fix = (
                    f"the learning rate scheduler had raised model.optimizer.lr={lr:g} to "
                    f"{current:g}; check model.lr_scheduler (a gamma above 1 raises it) or "
                    "lower model.optimizer.lr"
                )
            elif current is not None and not math.isclose(current, lr):
                fix += f"; the learning rate scheduler had set it to {current:g}"
        else:
            fix = "check the data and the model settings"
        return f"{name}={value} {where}: training diverged; {kept}; {fix}"


def launch_overrides() -> list[str]:
    """Return the command-line overrides of the current Hydra job, or [] outside Hydra."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def resume_command(overrides: list[str], checkpoint: str | Path) -> str:
    """Return the autoexp-train command that resumes a run from a checkpoint."""
    # Imported here because autoexp.resume imports the models, which import this package.
    from autoexp.resume import override_value

    kept = [item for item in overrides if item.partition("=")[0].lstrip("+~") != "ckpt_path"]
    return shlex.join(["autoexp-train", *kept, f"ckpt_path={override_value(str(checkpoint))}"])


class InterruptCheckpoint(pl.Callback):
    """Saves a checkpoint and stops training on SIGTERM or SIGINT.

    The handlers are installed when training starts, in every process of the run, and the
    previous ones are restored when training ends. A signal that the process inherited as
    ignored stays ignored. A signal only sets a flag. At the next end
    of a training batch every rank saves `<dirpath>/<filename>` through the trainer, so
    atomically with AtomicCheckpointIO. Rank zero then logs the command that resumes the run,
    and TrainingInterrupted ends the process with exit code 128 plus the signal number. The
    same signal sent a second time ends it at once, without a checkpoint.

    With trainer=ddp (spawn), every worker handles the signals itself: send them to the
    process group (Ctrl-C in a terminal does), or to the launching process alone, which then
    sends its workers SIGUSR2 and waits for them (see
    `autoexp.distributed.launcher_waits_for_workers`). SIGUSR2 stops a worker as SIGTERM does.
    Linux sends it too when the launching process ends.

    Args:
        dirpath: Folder of the checkpoint. None means the ModelCheckpoint's folder, or
            `checkpoints/` in the trainer's default_root_dir.
        filename: Name of the checkpoint file.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "interrupted.ckpt"):
        self.dirpath = dirpath
        self.filename = filename
        # Read here, in the launching process: DDP workers started by spawn have no Hydra config.
        self.overrides = launch_overrides()
        self._signum: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._watching_launcher = False
        # Whether the exit code and the message come from the launching process's SIGUSR2,
        # which it sends on a stop signal and Linux sends at its end.
        self._stopped_by_launcher = False
        # In a job of Hydra's joblib launcher: this process and the sweep's main process.
        self._joblib_job: tuple[int, int] | None = None
        if in_launcher_worker():
            self._joblib_job = (os.getpid(), os.getppid())

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath is None:
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
        return Path(dirpath).expanduser().absolute() / self.filename

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed after Lightning's own SIGTERM handler, which would end the run with exit
        # code 0 and no checkpoint.
        if threading.current_thread() is not threading.main_thread():
            log.debug("Not handling SIGTERM and SIGINT: training runs outside the main thread")
            return
        self._signum = signal.SIGTERM if trainer.received_sigterm else None
        for signum in HANDLED_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                # The process started with the signal ignored (nohup, a background job of a
                # script), so a Ctrl-C meant for another command does not stop it.
                log.debug("Not handling %s: it is ignored", signal.Signals(signum).name)
                continue
            self._previous_handlers[signum] = signal.signal(signum, self._handle_signal)
        self._watch_launcher(trainer)

    def _watch_launcher(self, trainer: pl.Trainer) -> None:
        """In a DDP worker started by spawn, stop as on SIGTERM on the launcher's SIGUSR2.

        The launching process sends SIGUSR2 after it receives SIGTERM or SIGINT, and Linux
        sends it when the launching process ends. torch's spawn has Linux send SIGINT there,
        which a run started with SIGINT ignored (nohup, a background job of a script) ignores
        too, so when the launcher alone was killed its workers trained on without it.
        """
        parent = multiprocessing.parent_process()
        if parent is None or LAUNCHER_EXIT_SIGNAL is None or trainer.world_size == 1:
            return
        previous = signal.signal(LAUNCHER_EXIT_SIGNAL, self._handle_launcher_exit)
        if not set_parent_death_signal(LAUNCHER_EXIT_SIGNAL):
            signal.signal(LAUNCHER_EXIT_SIGNAL, previous)
            log.debug("Not watching the launching process: prctl is not available")
            return
        self._previous_handlers[LAUNCHER_EXIT_SIGNAL] = previous
        self._watching_launcher = True
        if os.getppid() != parent.pid:
            # The launcher ended before the request took effect.
            self._handle_launcher_exit(LAUNCHER_EXIT_SIGNAL, None)

    def _handle_launcher_exit(self, signum: int, frame) -> None:
        # A signal that arrived first, such as SIGTERM to the whole process group, decides the
        # exit code and the message.
        if self._signum is None:
            self._signum = signal.SIGTERM
            self._stopped_by_launcher = True

    def _handle_signal(self, signum: int, frame) -> None:
        if self._signum is None or self._stopped_by_launcher:
            # A signal to the whole process group can reach a worker after its launcher's
            # SIGUSR2, so it counts as the first signal, not as a repeat.
            self._signum = signum
            self._stopped_by_launcher = False
            return
        # Only a repeat of the same signal forces the exit. Where the launcher is not watched,
        # a DDP worker gets SIGINT when its launcher dies, often right after a SIGTERM sent to
        # the whole process group.
        if signum == self._signum:
            self._restore_handlers()
            raise TrainingInterrupted(128 + signum)

    def _restore_handlers(self) -> None:
        if self._watching_launcher:
            # Restore torch's parent-death signal, SIGINT, for the rest of the worker's life.
            set_parent_death_signal(signal.SIGINT)
            self._watching_launcher = False
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        requested = self._signum is not None
        if trainer.world_size > 1:
            # All ranks stop at the same batch, even when only some received the signal.
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        return requested

    def _save_and_exit(self, trainer: pl.Trainer) -> None:
        signum = self._signum or signal.SIGTERM
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        self._restore_handlers()
        if trainer.is_global_zero:
            if self._stopped_by_launcher:
                source = "the launching process (a signal to it, or its end)"
            elif self._signum:
                source = signal.Signals(signum).name
            else:
                source = "a signal to another rank"
            log.warning(
                "Training stopped by %s at step %d (epoch %d); checkpoint saved to %s. "
                "Resume with: %s",
                source,
                trainer.global_step,
                trainer.current_epoch,
                path,
                resume_command(self.overrides, path),
            )
        if self._sweep_has_ended():
            # No process waits for the job's result, and a joblib worker survives
            # TrainingInterrupted, so the worker would stay idle.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise TrainingInterrupted(128 + signum)

    def _sweep_has_ended(self) -> bool:
        """Return whether this is a joblib job whose sweep's main process has ended.

        SIGTERM to the sweep's process group ends its main process, but not always before the
        job has saved its checkpoint, so this waits up to SWEEP_END_WAIT_S for that end.
        """
        if self._joblib_job is None:
            return False
        job_pid, sweep_pid = self._joblib_job
        # DDP workers get a copy of the callback, with the job's values.
        if os.getpid() != job_pid:
            return False
        deadline = time.monotonic() + SWEEP_END_WAIT_S
        while os.getppid() == sweep_pid:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stop_requested(trainer):
            self._save_and_exit(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # A signal during the last validation has no later batch end to act on.
        try:
            if self._stop_requested(trainer):
                self._save_and_exit(trainer)
        finally:
            self._restore_handlers()
        self._remove_resumed_checkpoint(trainer)

    def _remove_resumed_checkpoint(self, trainer: pl.Trainer) -> None:
        """Delete the interrupted checkpoint that this run resumed from and then completed.

        A resumed run continues in the folder of its checkpoint, where the old file would sit
        next to the newer last.ckpt.
        """
        path = self.checkpoint_path(trainer)
        resumed_from = trainer.ckpt_path
        if not trainer.is_global_zero or resumed_from is None or Path(resumed_from) != path:
            return
        path.unlink(missing_ok=True)
        log.info("Removed %s: the run resumed from it and finished training", path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()
