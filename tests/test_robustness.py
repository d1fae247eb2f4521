"""Faults that must end a run cleanly: divergence, signals, bad checkpoints and bad data files.

Most tests drive `python -m autoexp.train` as a subprocess, the way a user would, and check the
exit code, the message and the files left behind.
"""

import gzip
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

import autoexp
from autoexp.callbacks import (
    InterruptCheckpoint,
    NonFiniteLossCheck,
    TrainingDivergedError,
    TrainingInterrupted,
)
from autoexp.checkpoint_io import AtomicCheckpointIO
from autoexp.data.idx import write_idx
from autoexp.models import MODELS, MLPAutoencoder
from autoexp.train import main, resolve_ckpt_path, train
from tests.conftest import FAST, REPO_ROOT, compose_train_config, restore_default_sigint, run_cli

# Overrides of every command-line run here: quiet, on the CPU, without the image logger.
CLI_FAST = [
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "~callbacks.image_logger",
]
# Batches per epoch of mlp_ae on digits: ceil(1294 training images / 64).
DIGITS_BATCHES = 21


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith((".tmp", ".part"))]


def ignore_sigint() -> None:
    """Start the child with SIGINT ignored, as a shell script starts a background job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_cli(
    args: list[str], cwd: Path, new_session: bool = False, sigint_ignored: bool = False
) -> subprocess.Popen:
    """Start `python -m autoexp.train ARGS` in cwd, with its output in cwd/output.txt.

    With new_session, the command and its children form a process group of their own, which
    os.killpg signals as Ctrl-C in a terminal does. With sigint_ignored, the command starts
    with SIGINT ignored, as a background job of a shell script does; otherwise SIGINT has its
    default handling.
    """
    # The child keeps its own copy of the file descriptor after this one is closed.
    with open(cwd / "output.txt", "w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "autoexp.train", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
            preexec_fn=ignore_sigint if sigint_ignored else restore_default_sigint,
        )


def wait_for_file(folder: Path, pattern: str, timeout: float) -> Path:
    """Return the first file below folder that matches pattern, polling until timeout."""
    deadline = time.monotonic() + timeout
    while not (found := sorted(folder.rglob(pattern))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {folder}/**/{pattern}")
        time.sleep(0.2)
    return found[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[pl.Trainer, MLPAutoencoder]:
    """A trainer built from conf/trainer/default.yaml with NonFiniteLossCheck, after 2 steps."""
    run_dir = tmp_path_factory.mktemp("fitted") / "run"
    cfg = compose_train_config(
        run_dir, [*FAST, "trainer.max_steps=2", "+trainer.limit_val_batches=0"]
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[NonFiniteLossCheck()], enable_checkpointing=False
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, model


# Non-finite loss.


@pytest.mark.parametrize("processes", [1, 2])
def test_cli_diverged_run_names_step_and_value(tmp_path, processes):
    # With 2 DDP processes the error is raised in a worker and reaches the launcher wrapped.
    fast = (
        CLI_FAST if processes == 1 else [*CLI_FAST, "trainer=ddp", "+trainer.limit_val_batches=1"]
    )
    result = run_cli(
        ["-m", "autoexp.train", *fast, "model.optimizer.lr=1e6", "trainer.max_epochs=3"],
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 1
    message = re.search(r"train/loss=(\S+) at step (\d+) \(epoch (\d+)\): (.*)", result.stderr)
    assert message, result.stderr
    assert message[1] in ("nan", "inf", "-inf")
    assert "training diverged; no checkpoint was saved yet" in message[4]
    assert "lower model.optimizer.lr (now 1e+06)" in message[4]
    assert "Traceback" not in result.stderr
    # The run saved nothing, so neither its folder nor the date folder above it remain.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_cli_model_config_error_is_one_line(tmp_path, processes):
    # The command-line check cannot see the batches per epoch under DDP or with
    # limit_train_batches, so linear_pca_ae raises the error when training starts.
    short = ["trainer=ddp"] if processes == 2 else ["+trainer.limit_train_batches=10"]
    result = run_cli(
        [
            "-m",
            "autoexp.train",
            *CLI_FAST,
            *short,
            "model=linear_pca_ae",
            "model.solver=eigh",
            "data.batch_size=100",
            "trainer.max_steps=3",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 2, output_of(result)
    # 13 batches of 100 digits, cut to 10, or shared by 2 processes as 7 each.
    batches = 7 if processes == 2 else 10
    expected = (
        f"autoexp-train: error: trainer.max_steps=3 stops the eigh solver before the end of "
        f"its pass over the {batches} training batches, so PCA would not be fitted; remove "
        f"trainer.max_steps or set it to {batches} or more\n"
    )
    assert result.stderr.endswith(expected), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_non_finite_message_names_scheduled_lr():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3.0)
    trainer = SimpleNamespace(optimizers=[optimizer], checkpoint_callbacks=[])
    module = SimpleNamespace(optimizer_config={"lr": 0.1})
    message = NonFiniteLossCheck()._message(trainer, module, "train/loss", float("inf"), "here")
    assert "the learning rate scheduler had raised model.optimizer.lr=0.1 to 3" in message
    assert "check model.lr_scheduler" in message
    optimizer.param_groups[0]["lr"] = 0.01
    message = NonFiniteLossCheck()._message(trainer, module, "train/loss", float("inf"), "here")
    assert "lower model.optimizer.lr (now 0.1)" in message
    assert "the learning rate scheduler had set it to 0.01" in message
    optimizer.param_groups[0]["lr"] = 0.1
    message = NonFiniteLossCheck()._message(trainer, module, "train/loss", float("inf"), "here")
    assert "scheduler" not in message


class WeightPoison(pl.Callback):
    """Sets one weight to NaN after one training batch; copies last.ckpt when the epoch starts."""

    def __init__(self, epoch: int, batch_idx: int, copy_to: str):
        self.epoch = epoch
        self.batch_idx = batch_idx
        self.copy_to = Path(copy_to)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            self.copy_to.write_bytes(last.read_bytes())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            with torch.no_grad():
                next(pl_module.parameters())[0, 0] = float("nan")


@pytest.mark.parametrize(
    ("batch_idx", "expected"),
    [
        # NaN weights make the next batch's loss NaN.
        (5, r"train/loss=nan at step 27 \(epoch 1\)"),
        # After the last batch, the validation loss is the first NaN, before last.ckpt is saved.
        (DIGITS_BATCHES - 1, r"val/loss=nan after step 42 \(epoch 1\)"),
    ],
)
def test_non_finite_check_keeps_last_checkpoint(train_config, tmp_path, batch_idx, expected):
    cfg = train_config("trainer.max_epochs=3", "~callbacks.image_logger", "test=false")
    good_copy = tmp_path / "good.ckpt"
    with open_dict(cfg):
        cfg.callbacks.poison = {
            "_target_": f"{__name__}.WeightPoison",
            "epoch": 1,
            "batch_idx": batch_idx,
            "copy_to": str(good_copy),
        }
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    with pytest.raises(TrainingDivergedError, match=expected) as error:
        train(cfg)
    assert f"the last good checkpoint is {last}" in str(error.value)
    assert last.read_bytes() == good_copy.read_bytes()
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["epoch"] == 0
    assert checkpoint["global_step"] == DIGITS_BATCHES
    model = autoexp.load_model(last)
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_non_finite_check_blocks_nan_checkpoint(fitted, tmp_path):
    trainer, model = fitted
    path = tmp_path / "diverged.ckpt"
    weight = model.encoder[1][0].weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("inf")
    try:
        with pytest.raises(TrainingDivergedError, match=r"weight encoder\.1\.0\.weight=inf"):
            trainer.save_checkpoint(path)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not path.exists()
    assert temporary_files(tmp_path) == []


# Atomic checkpoints.


@pytest.mark.parametrize("trainer_option", ["default", "ddp"])
def test_trainer_config_uses_atomic_checkpoint_io(tmp_path, trainer_option):
    cfg = compose_train_config(tmp_path / "run", [f"trainer={trainer_option}"])
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_atomic_checkpoint_io_failed_save_keeps_file(fitted, tmp_path, monkeypatch):
    trainer, _ = fitted
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    previous = path.read_bytes()

    real_save = torch.save
    written_to = []

    def save_half_then_fail(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        written_to.append(Path(file.name))
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()

    assert written_to[0].parent == path.parent
    assert written_to[0] != path
    assert path.read_bytes() == previous
    assert sorted(tmp_path.iterdir()) == [path]
    autoexp.load_model(path)


# Checkpoints passed as ckpt_path.


def test_cli_rejects_corrupt_checkpoint(fitted, tmp_path):
    trainer, _ = fitted
    corrupt = tmp_path / "cut.ckpt"
    trainer.save_checkpoint(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:5000])

    result = run_cli(
        ["-m", "autoexp.train", *CLI_FAST, f"ckpt_path={corrupt}"], cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert f"{corrupt} is not a readable checkpoint" in result.stderr
    # Rejected before Hydra started: no run folder, no events and no checkpoint were written.
    assert not (tmp_path / "outputs").exists()
    assert not list((tmp_path / "outputs").rglob("events.out.tfevents*"))
    assert list(tmp_path.rglob("*.ckpt")) == [corrupt]


def test_resolve_ckpt_path_rejects_unfit_checkpoints(fitted, tmp_path):
    trainer, model = fitted
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    weights_only = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(weights_only, weights_only=True)
    cases = [
        (foreign, model, f"{foreign} is not an autoexp checkpoint"),
        (weights_only, model, f"ckpt_path={weights_only} contains no training state"),
        (
            good,
            MLPAutoencoder([1, 8, 8], latent_dim=16),
            "model.latent_dim=32 in the checkpoint, 16 in the config",
        ),
    ]
    other_names = [name for name in MODELS if name != model.model_name]
    if other_names:
        other = MODELS[other_names[0]]([1, 8, 8], latent_dim=4)
        cases.append(
            (
                good,
                other,
                f"ckpt_path={good} is a checkpoint of model mlp_ae, but the config trains "
                f"{other.model_name}; pass model=mlp_ae",
            )
        )

    assert resolve_ckpt_path(str(good), model) == str(good)
    for path, config_model, expected in cases:
        with pytest.raises(ValueError) as error:
            resolve_ckpt_path(str(path), config_model)
        assert expected in str(error.value)


# SIGTERM and SIGINT.


def test_cli_signal_saves_resumable_checkpoint(tmp_path):
    args = [*CLI_FAST, "trainer.max_epochs=1000", "test=false"]
    runs = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        launch_dir = tmp_path / signum.name
        launch_dir.mkdir()
        runs[signum] = (launch_dir, start_cli(args, launch_dir))
    try:
        for signum, (launch_dir, process) in runs.items():
            wait_for_file(launch_dir, "last.ckpt", timeout=240)
            process.send_signal(signum)
        for _, process in runs.values():
            process.wait(timeout=120)
    finally:
        for _, process in runs.values():
            if process.poll() is None:
                process.kill()

    for signum, (launch_dir, process) in runs.items():
        output = (launch_dir / "output.txt").read_text()
        assert process.returncode == 128 + signum, output
        run_dir = next((launch_dir / "outputs").glob("*/*"))
        interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
        assert f"Training stopped by {signum.name} at step" in output
        assert f"checkpoint saved to {interrupted}" in output
        assert "`weights_only` was not set" not in output
        command = re.search(r"Resume with: (.*)", output)[1]
        assert shlex.split(command) == ["autoexp-train", *args, f"ckpt_path={interrupted}"]
        model = autoexp.load_model(interrupted)
        assert model.model_name == "mlp_ae"
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert torch.load(interrupted, weights_only=False)["global_step"] > last["global_step"]
        assert temporary_files(launch_dir) == []

    # The printed command resumes in the same run folder; it stops at the end of the
    # interrupted epoch here. The interrupted checkpoint is removed once training finished.
    launch_dir, _ = runs[signal.SIGTERM]
    interrupted = next(launch_dir.rglob("interrupted.ckpt"))
    epoch = torch.load(interrupted, weights_only=False)["epoch"]
    command = re.search(r"Resume with: (.*)", (launch_dir / "output.txt").read_text())[1]
    resume_args = [
        f"trainer.max_epochs={epoch + 1}" if item.startswith("trainer.max_epochs=") else item
        for item in shlex.split(command)[1:]
    ]
    result = run_cli(["-m", "autoexp.train", *resume_args], cwd=launch_dir, timeout=240)
    assert result.returncode == 0, output_of(result)
    resumed = torch.load(interrupted.parent / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == (epoch + 1) * DIGITS_BATCHES
    assert not interrupted.exists()


class SigintAtFitStart(pl.Callback):
    """Sends SIGINT to its own process when the fit starts, before any training batch."""

    def on_fit_start(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGINT)


class SigintAtCreation(pl.Callback):
    """Sends SIGINT to its own process when the run creates it, before the trainer exists."""

    def __init__(self):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("callback", ["SigintAtFitStart", "SigintAtCreation"])
def test_cli_ctrl_c_before_training_leaves_nothing(tmp_path, callback):
    # Inside the fit, Lightning handles the KeyboardInterrupt itself and exits with 1; outside
    # it, Python would print a traceback. Both end with 130, as for a signal during training,
    # and the run folder, which has no results, is removed.
    result = run_cli(
        [
            "-m",
            "autoexp.train",
            *CLI_FAST,
            f"+callbacks.ctrl_c._target_=tests.test_robustness.{callback}",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 130, output_of(result)
    assert "Stopped by SIGINT (Ctrl-C) outside the training batches" in output_of(result)
    assert "Traceback" not in output_of(result)
    assert list((tmp_path / "outputs").glob("*/*")) == []


def test_interrupt_checkpoint_keeps_ignored_sigint():
    callback = InterruptCheckpoint()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        callback.on_train_start(SimpleNamespace(received_sigterm=False), None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == callback._handle_signal
    finally:
        callback._restore_handlers()
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) != callback._handle_signal


def test_signal_after_launcher_stop_counts_first():
    # SIGTERM to a DDP run's process group reaches the launcher too, which then sends its
    # workers SIGUSR2, so a worker can get that SIGUSR2 before its own SIGTERM.
    callback = InterruptCheckpoint()
    callback._handle_launcher_exit(signal.SIGUSR2, None)
    assert callback._signum == signal.SIGTERM
    callback._handle_signal(signal.SIGTERM, None)
    assert callback._signum == signal.SIGTERM
    assert not callback._stopped_by_launcher
    with pytest.raises(TrainingInterrupted):
        callback._handle_signal(signal.SIGTERM, None)


def test_main_ctrl_c_during_checks_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("autoexp.config.command_line.check_command_line", interrupted)
    monkeypatch.setattr("sys.argv", ["autoexp-train"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "autoexp-train: stopped by SIGINT (Ctrl-C)\n"


# DDP and sweeps.


def files_outside_outputs(launch_dir: Path) -> list[Path]:
    return [path for path in launch_dir.iterdir() if path.name not in ("outputs", "output.txt")]


DDP_FAST = [
    *CLI_FAST,
    "trainer=ddp",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
    "test=false",
]


def check_ddp_job(job_dir: Path) -> None:
    """Check that a finished DDP job wrote its checkpoints into its own folder."""
    last = torch.load(job_dir / "checkpoints" / "last.ckpt", weights_only=False)
    # limit_train_batches counts the batches of each rank; the ranks step together.
    assert last["global_step"] == 4
    states = [
        state for key, state in last["callbacks"].items() if key.startswith("ModelCheckpoint")
    ]
    assert Path(states[0]["best_model_path"]).parent == job_dir / "checkpoints"
    record = json.loads((job_dir / "metrics.json").read_text())
    assert record["epochs"] == 1
    assert record["global_step"] == 4
    assert list(job_dir.glob("events.out.tfevents*"))


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def running_processes(pgid: int, command_part: bytes = b"") -> list[int]:
    """Return the running processes (not zombies) of a group whose command contains a part."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            # The fields after the command name, which is in parentheses: state, ppid, pgrp.
            state, _, group = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z" and command_part in command:
            found.append(int(entry.name))
    return found


def running_ddp_workers(pgid: int) -> list[int]:
    return running_processes(pgid, b"multiprocessing.spawn")


def test_cli_ddp_ctrl_c_saves_checkpoint(tmp_path):
    # Ctrl-C in a terminal signals the whole process group: the launching process and both
    # workers. The workers save interrupted.ckpt; the command exits with 130, no traceback.
    args = [*CLI_FAST, "trainer=ddp", "trainer.max_epochs=1000", "test=false"]
    process = start_cli(args, tmp_path, new_session=True)
    try:
        wait_for_file(tmp_path, "last.ckpt", timeout=240)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        # The launching process ends after its workers.
        assert running_ddp_workers(process.pid) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = (tmp_path / "output.txt").read_text()
    assert process.returncode == 130, output
    assert "Traceback" not in output
    assert "Training stopped by SIGINT at step" in output
    interrupted = next(tmp_path.rglob("interrupted.ckpt"))
    assert autoexp.load_model(interrupted).model_name == "mlp_ae"


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "launcher"])
def test_cli_ddp_sigterm_launcher_ends_last(tmp_path, to_group):
    # A container's first process, or a scheduler that cleans up after the main process, ends
    # the workers with the launcher, so the launcher must end only after they have saved.
    args = [*CLI_FAST, "trainer=ddp", "trainer.max_epochs=1000", "test=false"]
    process = start_cli(args, tmp_path, new_session=True)
    try:
        wait_for_file(tmp_path, "last.ckpt", timeout=240)
        if to_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
        assert running_ddp_workers(process.pid) == []
        interrupted = next(tmp_path.rglob("interrupted.ckpt"))
    finally:
        if not group_is_gone(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    output = (tmp_path / "output.txt").read_text()
    source = "SIGTERM" if to_group else "the launching process (a signal to it, or its end)"
    assert f"Training stopped by {source} at step" in output, output
    assert "Traceback" not in output
    assert autoexp.load_model(interrupted).model_name == "mlp_ae"


def test_cli_ddp_killed_launcher_stops_workers(tmp_path):
    # The workers ignore SIGINT too, so torch's parent-death signal, SIGINT, does nothing.
    # autoexp sets SIGUSR2 as that signal in its place.
    args = [*CLI_FAST, "trainer=ddp", "trainer.max_epochs=1000", "test=false"]
    process = start_cli(args, tmp_path, new_session=True, sigint_ignored=True)
    try:
        wait_for_file(tmp_path, "last.ckpt", timeout=240)
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL
        # The workers are in the launcher's process group, which ends with the last of them.
        deadline = time.monotonic() + 120
        while True:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "DDP workers still run after their launcher"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output = (tmp_path / "output.txt").read_text()
    assert (
        "Training stopped by the launching process (a signal to it, or its end) at step" in output
    ), output
    assert "Traceback" not in output
    interrupted = next(tmp_path.rglob("interrupted.ckpt"))
    assert autoexp.load_model(interrupted).model_name == "mlp_ae"


def test_cli_ddp_single_run(tmp_path):
    # With lr=1e-30 the weights keep their initial values, so train/loss_epoch is the mean loss
    # of the epoch's images: the 4 global batches of 2 x 64 are one process's first 8 of 64.
    frozen = "model.optimizer.lr=1e-30"
    result = run_cli(["-m", "autoexp.train", *DDP_FAST, frozen], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, output_of(result)
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1
    check_ddp_job(run_dirs[0])
    # train/loss_epoch is averaged over the ranks, so Lightning does not advise sync_dist.
    assert "sync_dist=True" not in output_of(result)
    # Lightning's deprecated LeafSpec check is silenced in the workers and in train.log.
    train_log = (run_dirs[0] / "train.log").read_text()
    assert "LeafSpec" not in output_of(result)
    assert "LeafSpec" not in train_log
    # The workers log into train.log, rank 0 only: one data line for the fit, none for the test
    # (test=false).
    assert train_log.count("Loaded digits: train") == 1
    assert files_outside_outputs(tmp_path) == []

    single = tmp_path / "outputs" / "single"
    single_args = [*DDP_FAST, frozen, "trainer=cpu", "+trainer.limit_train_batches=8"]
    single_args.remove("+trainer.limit_train_batches=4")
    single_result = run_cli(
        ["-m", "autoexp.train", *single_args, f"hydra.run.dir={single}"], cwd=tmp_path
    )
    assert single_result.returncode == 0, output_of(single_result)
    ddp_loss = json.loads((run_dirs[0] / "metrics.json").read_text())["metrics"]
    single_loss = json.loads((single / "metrics.json").read_text())["metrics"]
    assert ddp_loss["train/loss_epoch"] == pytest.approx(single_loss["train/loss_epoch"], rel=1e-5)


@pytest.mark.parametrize("trainer", ["ddp", "cpu"])
def test_cli_joblib_sweep_sigterm_leaves_nothing(tmp_path, trainer):
    # A loky worker with a DDP job ends on SIGTERM, and its DDP workers save after it. A loky
    # worker that trains itself saves interrupted.ckpt and then ends.
    args = [
        "-m",
        *CLI_FAST,
        f"trainer={trainer}",
        "trainer.max_epochs=1000",
        "test=false",
        "model.latent_dim=2,4",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    process = start_cli(args, tmp_path, new_session=True)
    try:
        # Wait until both jobs train.
        deadline = time.monotonic() + 240
        while len(list(tmp_path.rglob("last.ckpt"))) < 2:
            assert time.monotonic() < deadline, "timed out waiting for last.ckpt of both jobs"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
        deadline = time.monotonic() + 90
        while running := running_processes(process.pid):
            assert time.monotonic() < deadline, f"processes {running} run after the sweep"
            time.sleep(0.5)
    finally:
        if not group_is_gone(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert len(list(tmp_path.rglob("interrupted.ckpt"))) == 2


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_cli_ddp_sweep_one_folder_per_job(tmp_path, launcher):
    # The joblib launcher runs each job in a loky worker process, whose default start method
    # the spawned DDP workers cannot set unless autoexp switches it to spawn for the fit. Its
    # jobs run side by side, so a MASTER_PORT from the environment, which both would inherit,
    # must give way to a free port for each.
    args = ["-m", "autoexp.train", "-m", *DDP_FAST, "model.latent_dim=2,4"]
    env = {}
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        env["MASTER_PORT"] = str(closed_port())
    result = run_cli(args, cwd=tmp_path, timeout=400, env=env)
    assert result.returncode == 0, output_of(result)
    if launcher == "joblib":
        assert f"Ignoring MASTER_PORT={env['MASTER_PORT']}" in output_of(result)
    sweep_dirs = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 1
    job_dirs = sorted(path for path in sweep_dirs[0].iterdir() if path.is_dir())
    assert [path.name for path in job_dirs] == ["model.latent_dim=2", "model.latent_dim=4"]
    for job_dir in job_dirs:
        check_ddp_job(job_dir)
    assert files_outside_outputs(tmp_path) == []


# Data files.


def write_mnist_files(folder: Path, n_train: int = 40, n_test: int = 20) -> None:
    """Write four small gzipped MNIST IDX files of random pixels and labels into folder."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "train-images-idx3-ubyte.gz": torch.randint(
            0, 256, (n_train, 28, 28), generator=generator
        ),
        "train-labels-idx1-ubyte.gz": torch.randint(0, 10, (n_train,), generator=generator),
        "t10k-images-idx3-ubyte.gz": torch.randint(0, 256, (n_test, 28, 28), generator=generator),
        "t10k-labels-idx1-ubyte.gz": torch.randint(0, 10, (n_test,), generator=generator),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensor in tensors.items():
        write_idx(folder / name, tensor.to(torch.uint8))


def cut_gzip_in_half(folder: Path) -> Path:
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def cut_raw_in_half(folder: Path) -> Path:
    gzipped = folder / "train-labels-idx1-ubyte.gz"
    path = folder / "train-labels-idx1-ubyte"
    data = gzip.decompress(gzipped.read_bytes())
    path.write_bytes(data[: len(data) // 2])
    gzipped.unlink()
    return path


def corrupt_gzip(folder: Path) -> Path:
    path = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[20:40] = b"\xff" * 20
    path.write_bytes(bytes(data))
    return path


def change_magic(folder: Path) -> Path:
    path = folder / "t10k-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[:4] = b"\x50\x4b\x03\x04"
    path.write_bytes(gzip.compress(bytes(data)))
    return path


def drop_one_label(folder: Path) -> Path:
    path = folder / "train-labels-idx1-ubyte.gz"
    write_idx(path, torch.zeros(39, dtype=torch.uint8))
    return path


# (case, change that returns the changed file, text expected after the file's path)
BAD_DATA_FILES = [
    ("raw-half", cut_raw_in_half, ": truncated IDX file: header declares 40 labels"),
    ("gzip-corrupt", corrupt_gzip, ": invalid gzip data"),
    ("magic", change_magic, ": invalid IDX magic number 0x504b0304"),
    ("counts", drop_one_label, " contains 39 labels"),
]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cli_rejects_labels_cut_in_half(tmp_path):
    root = tmp_path / "data"
    write_mnist_files(root)
    path = cut_gzip_in_half(root)
    start = time.monotonic()
    result = run_cli(
        ["-m", "autoexp.train", *CLI_FAST, "data=mnist", f"data.root={root}"],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{path}: invalid gzip data" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))
    # Start-up included; loading the data fails at once.
    assert time.monotonic() - start < 60


def test_cli_sweep_names_each_bad_data_file(tmp_path, monkeypatch):
    """One multirun over data roots, each with one fault, saves a start-up per case.

    Every job has data.download=true with a mirror on a closed port of 127.0.0.1, which only
    the job whose root is empty tries.
    """
    for variable in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    roots, changed = {}, {}
    for case, change, _ in BAD_DATA_FILES:
        roots[case] = tmp_path / case
        write_mnist_files(roots[case])
        changed[case] = change(roots[case])
    roots["offline"] = tmp_path / "offline"
    roots["offline"].mkdir()
    mirror = f"http://127.0.0.1:{closed_port()}/"

    result = run_cli(
        [
            "-m",
            "autoexp.train",
            "-m",
            *CLI_FAST,
            "data=mnist",
            "data.download=true",
            f"data.mirrors=[{mirror}]",
            "data.root=" + ",".join(str(root) for root in roots.values()),
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1, output_of(result)
    failures = {
        Path(record["overrides"][-1].partition("=")[2]).name: record["error"]
        for record in map(json.loads, map(Path.read_text, tmp_path.rglob("failure.json")))
    }
    assert sorted(failures) == sorted(roots)
    for case, _, expected in BAD_DATA_FILES:
        assert f"{changed[case]}{expected}" in failures[case]

    offline = failures["offline"]
    assert f"{mirror}train-images-idx3-ubyte.gz: connection refused" in offline
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        assert f"{stem}-ubyte" in offline
    assert str(roots["offline"] / "MNIST" / "raw") in offline
    assert [path for path in roots["offline"].rglob("*") if path.is_file()] == []
    assert not list(tmp_path.rglob("*.ckpt"))
