"""`autoexp-train`: train one model on one data set, as composed by Hydra from conf/."""

import json
import logging
import platform
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from autoexp.callbacks import HparamsLogger, TrainingDivergedError, TrainingInterrupted
from autoexp.callbacks.hooks import skip_unused_batch_hooks
from autoexp.checkpoint_io import check_resume_checkpoint
from autoexp.config import ConfigError, validate_config
from autoexp.distributed import (
    WorkerLogging,
    in_launcher_worker,
    launcher_job,
    launcher_waits_for_workers,
)
from autoexp.models import AutoencoderModule, read_checkpoint
from autoexp.profiling import profiler_argument
from autoexp.sweep import record_failure, register_resolvers, remove_created_parents

log = logging.getLogger(__name__)

# The configs live in the repository's conf/ folder, next to the package. NOTE: this needs the
# editable install that the Makefile makes; a wheel built from this tree carries no conf/.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def versions() -> dict[str, str]:
    """Return the versions that decide whether a run can be reproduced exactly."""
    import hydra as hydra_package

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "hydra": hydra_package.__version__,
        "platform": platform.platform(),
    }


def run_settings(cfg: DictConfig, model: AutoencoderModule) -> dict[str, Any]:
    """Return the key settings of a run, listed in metrics.json and TensorBoard's HPARAMS tab."""
    settings: dict[str, Any] = {
        "model": model.model_name,
        "data": cfg.data.name,
        "latent_dim": model.latent_dim,
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
    }
    optimizer = model.optimizer_config
    if optimizer is not None and "lr" in optimizer:
        settings["lr"] = float(optimizer["lr"])
    return settings


def resolve_ckpt_path(ckpt_path: str | None, model: AutoencoderModule | None = None) -> str | None:
    """Return ckpt_path as an absolute path; relative paths start at the launch folder.

    The file is read and checked first: an unreadable or foreign checkpoint, or one of another
    model type or shape than `model`, raises ValueError naming it (see check_resume_checkpoint).
    """
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} not found: tried {path}")
    check_resume_checkpoint(path, model)
    return str(path)


def make_callbacks(cfg: DictConfig, settings: dict[str, Any]) -> list[pl.Callback]:
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if callback_cfg is None:
            continue
        if "_target_" not in callback_cfg:
            # A model config may set options of a callback that this callbacks group lacks.
            log.warning(
                "callbacks.%s sets options but has no _target_, because the callbacks group "
                "does not define it; no callback is made from it",
                name,
            )
            continue
        callback = instantiate(callback_cfg)
        if isinstance(callback, HparamsLogger):
            callback.settings.update(settings)
        callbacks.append(callback)
        log.debug("Callback %s: %s", name, type(callback).__name__)
    return callbacks


def make_loggers(cfg: DictConfig) -> list:
    return [instantiate(logger_cfg) for logger_cfg in (cfg.get("logger") or {}).values()]


def make_trainer(cfg: DictConfig, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Build the Trainer of cfg.trainer with the loggers of cfg.logger and the callbacks."""
    trainer = instantiate(
        cfg.trainer, logger=make_loggers(cfg), callbacks=callbacks, **profiler_argument(cfg)
    )
    # Also the callbacks that Lightning added, such as its progress bar.
    skip_unused_batch_hooks(trainer.callbacks)
    return trainer


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "best_model_path", ""):
        return callback.best_model_path
    return None


def write_metrics(path: Path, record: dict[str, Any]) -> None:
    """Write metrics.json through a temporary file, so a reader never sees half of it."""
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test and record one run described by a composed config.

    Returns:
        The final metrics by name (train/loss_epoch, val/loss, val/mse, test/loss, test/mse).
    """
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), model)
    settings = run_settings(cfg, model)
    callbacks = [*make_callbacks(cfg, settings), WorkerLogging()]
    trainer = make_trainer(cfg, callbacks)

    n_parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "Training %s (latent_dim=%d, %d parameters) on %s for up to %d epochs, seed %d",
        model.model_name,
        model.latent_dim,
        n_parameters,
        datamodule.name,
        cfg.trainer.max_epochs,
        cfg.seed,
    )
    start = time.perf_counter()
    run_trainer(trainer, trainer.fit, model, datamodule=datamodule, ckpt_path=ckpt_path)
    train_time = time.perf_counter() - start
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}

    if cfg.get("test", True):
        results = run_trainer(
            trainer,
            trainer.test,
            model,
            datamodule=datamodule,
            ckpt_path=best_checkpoint(trainer),
            verbose=False,
        )
        metrics.update({name: float(value) for name, value in results[0].items()})

    if trainer.is_global_zero:
        epochs, global_step = training_progress(trainer, output_dir)
        record = {
            **settings,
            "epochs": epochs,
            "global_step": global_step,
            "train_time_s": round(train_time, 3),
            "n_parameters": n_parameters,
            "metrics": metrics,
            "best_checkpoint": best_checkpoint(trainer),
            "overrides": list(HydraConfig.get().overrides.task),
            "versions": versions(),
        }
        write_metrics(output_dir / "metrics.json", record)
        summary = ", ".join(
            f"{name}={metrics[name]:.5g}" for name in ("val/loss", "test/mse") if name in metrics
        )
        log.info("Finished in %.1f s: %s. Outputs in %s", train_time, summary, output_dir)
    return metrics


def training_progress(trainer: pl.Trainer, output_dir: Path) -> tuple[int, int]:
    """Return the epochs trained and the global step at the end of the fit.

    The ddp_spawn launcher brings the workers' metrics and best checkpoint back to this
    process but not the loops' progress, so this process's trainer still reads 0 and 0.
    last.ckpt, saved at the end of the last epoch, has the workers' values then.
    """
    epochs, global_step = trainer.current_epoch, trainer.global_step
    last = output_dir / "checkpoints" / "last.ckpt"
    if trainer.world_size > 1 and global_step == 0 and last.is_file():
        checkpoint = read_checkpoint(last)
        epochs, global_step = checkpoint["epoch"] + 1, checkpoint["global_step"]
    return epochs, global_step


def run_trainer(trainer: pl.Trainer, method: Callable[..., Any], *args, **kwargs) -> Any:
    """Call `trainer.fit` or `trainer.test` as a job of any Hydra launcher can.

    Ctrl-C outside the training batches (while the model initializes, in the sanity check, in
    the test) makes Lightning exit with code 1. That exit becomes TrainingInterrupted with
    code 130, as a SIGINT during the training batches ends the run. With trainer=ddp, the
    launching process returns only after its workers have saved and ended (see
    launcher_waits_for_workers).
    """
    try:
        # in_launcher_worker detects a joblib job by its start method, which launcher_job
        # changes, so launcher_job is entered second.
        with launcher_waits_for_workers(trainer), launcher_job():
            return method(*args, **kwargs)
    except SystemExit as error:
        if type(error) is not SystemExit or not trainer.interrupted:
            raise
        if trainer.world_size > 1 and in_launcher_worker():
            # A joblib job does not wait for its DDP workers (see launcher_waits_for_workers).
            log.warning(
                "Stopped by SIGINT (Ctrl-C); DDP workers in their training batches save "
                "interrupted.ckpt after this process ends"
            )
        elif trainer.world_size > 1:
            # The launching process of trainer=ddp gets the KeyboardInterrupt while it waits
            # for its workers, which handle the signal themselves.
            log.warning(
                "Stopped by SIGINT (Ctrl-C); DDP workers that were in their training batches "
                "saved interrupted.ckpt and logged how to resume"
            )
        else:
            log.warning(
                "Stopped by SIGINT (Ctrl-C) outside the training batches, so no "
                "interrupted.ckpt was saved"
            )
        raise TrainingInterrupted(128 + signal.SIGINT) from error


def has_logged_values(events_file: Path) -> bool:
    """Return whether a TensorBoard events file contains anything beyond the run's hparams."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        for event in EventFileLoader(str(events_file)).Load():
            if any(not value.tag.startswith("_hparams_/") for value in event.summary.value):
                return True
    except Exception as error:  # a damaged file counts as a result, so it is kept
        log.debug("Failed to read %s: %s", events_file, error)
        return True
    return False


def short_error(error: BaseException) -> tuple[str, int] | None:
    """Return the message and exit code of an error that needs no traceback, else None.

    A TrainingDivergedError (exit code 1) names the step, the value, the checkpoint kept and
    the fix. A ConfigError (exit code 2) that a model raises when training starts names the
    setting and the fix. The spawn launcher of trainer=ddp re-raises a worker's error in the
    main process as a ProcessRaisedException whose text ends with the worker's traceback, so
    the message is read from that text.
    """
    if isinstance(error, TrainingDivergedError):
        return str(error), 1
    if isinstance(error, ConfigError):
        return "; ".join(error.problems), 2
    if type(error).__name__ == "ProcessRaisedException":
        text = str(error)
        found = list(re.finditer(r"\b(TrainingDivergedError|ConfigError): ", text))
        if found:
            # The last one is the worker's own error, after any chained exceptions.
            lines = text[found[-1].end() :].strip().splitlines()
            exit_code = 1 if found[-1].group(1) == "TrainingDivergedError" else 2
            return "; ".join(line.strip() for line in lines), exit_code
    return None


def log_to_files(level: int, message: str) -> None:
    """Write a record to the root logger's file handlers only, such as the run's train.log."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def remove_unused_run_dir(output_dir: Path) -> None:
    """Delete a run folder that contains no result: no checkpoint, metrics, images or scalars.

    Hydra's files, train.log and an events file with only the run's hparams do not count.
    """
    if not output_dir.is_dir():
        return
    kept = {".hydra", "train.log", "hparams.yaml"}
    if all(
        path.name in kept
        or (path.name.startswith("events.out.tfevents") and not has_logged_values(path))
        for path in output_dir.iterdir()
    ):
        shutil.rmtree(output_dir, ignore_errors=True)
        remove_created_parents(output_dir)
        log.info("Removed %s, which held no results", output_dir)


register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one training job; returns val/loss so that Hydra sweepers can optimise it.

    In a multirun, a job that fails records its error in `failure.json` in its own folder and
    the sweep goes on; the sweep's summary callback then lists the failures and exits with 1.
    A single run that fails before it wrote any result leaves no run folder behind, and so
    does any job that Ctrl-C stops before its first result.
    """
    # Python warnings (empty k-means clusters, Lightning's advice) go through logging, so
    # they reach the run's train.log as well as the console.
    logging.captureWarnings(True)
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    try:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
        return train(cfg).get("val/loss")
    except Exception as error:
        summary = short_error(error)
        if hydra_config.mode != RunMode.MULTIRUN:
            remove_unused_run_dir(output_dir)
            if summary is not None:
                message, exit_code = summary
                log_to_files(logging.ERROR, message)
                print(f"autoexp-train: error: {message}", file=sys.stderr)
                raise SystemExit(exit_code) from error
            raise
        path = record_failure(output_dir, error, list(hydra_config.overrides.task))
        if summary is not None:
            # The traceback is in the file.
            log.error(
                "Job %s failed: %s; error recorded in %s", hydra_config.job.num, summary[0], path
            )
        else:
            log.exception("Job %s failed; error recorded in %s", hydra_config.job.num, path)
        return None
    except KeyboardInterrupt as error:
        # Ctrl-C outside Lightning's fit and test (the config, the data, the metrics file).
        remove_unused_run_dir(output_dir)
        log.warning("Stopped by SIGINT (Ctrl-C) outside the training batches")
        raise TrainingInterrupted(128 + signal.SIGINT) from error
    except BaseException:
        # An exit ends a sweep too; a job folder without results goes first.
        remove_unused_run_dir(output_dir)
        raise


def main() -> None:
    """Run `autoexp-train`: check the whole command line first, then start Hydra.

    An invalid config exits with code 2 before Hydra creates a run folder. A `ckpt_path` is
    resolved here, so that a resumed run continues in the folder of its checkpoint. Ctrl-C
    during these checks or in the run exits with code 130 and one line.
    """
    try:
        run_command_line()
    except KeyboardInterrupt:
        print("autoexp-train: stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def run_command_line() -> None:
    """Check sys.argv, resolve a `ckpt_path` to resume, and run Hydra's main function."""
    from hydra._internal.utils import get_args_parser

    from autoexp.config.command_line import check_command_line, report
    from autoexp.resume import ResumeError, keep_previous_config, prepare_resume

    args = sys.argv[1:]
    exit_code = check_command_line(args, CONFIG_DIR, "train")
    if exit_code:
        sys.exit(exit_code)

    parsed = get_args_parser().parse_args(args)
    log_dirs = [
        item.partition("=")[2] for item in parsed.overrides if item.startswith("paths.log_dir=")
    ]
    log_dir = Path(log_dirs[-1] if log_dirs else "outputs")
    try:
        overrides = prepare_resume(list(parsed.overrides), log_dir, parsed.multirun)
    except ResumeError as error:
        sys.exit(report([str(error)]))
    if overrides != parsed.overrides:
        # Replace the ckpt_path argument in place and add the run folder at the end.
        resolved = {item.partition("=")[0]: item for item in overrides}
        args = [
            resolved.get(item.partition("=")[0], item) if item in parsed.overrides else item
            for item in args
        ]
        added_run_dirs = [
            item for item in overrides if item.startswith("hydra.run.dir=") and item not in args
        ]
        args += added_run_dirs
        # Check the resolved checkpoint against the config's model before the run folder's
        # .hydra files are touched, so a rejected resume leaves the folder as it was.
        exit_code = check_command_line(args, CONFIG_DIR, "train")
        if exit_code:
            sys.exit(exit_code)
        for item in added_run_dirs:
            keep_previous_config(Path(item.partition("=")[2]))
        sys.argv = [sys.argv[0], *args]
    hydra_main()


if __name__ == "__main__":
    main()
