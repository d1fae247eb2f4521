"""The classroom scripts in scripts/, run in fresh folders on digits and Fashion-MNIST.

Most runs execute a script's file in this process (as `python scripts/NAME.py ARGS` would),
because starting Python with torch and Lightning costs seconds per process on 2 CPU cores.
A few runs start the scripts as executables to cover the shebang line and the exit status.
"""

import contextlib
import io
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import autoexp
from autoexp.train import train
from tests.conftest import FAST, REPO_ROOT, compose_train_config

SCRIPTS = REPO_ROOT / "scripts"
CPU = ["trainer.accelerator=cpu"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call_script(name: str, *args: str, cwd: Path) -> Result:
    """Run scripts/NAME in this process with cwd as the current folder; return its output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_path = sys.argv, Path.cwd(), list(sys.path)
    sys.argv = [str(SCRIPTS / name), *args]
    sys.path.insert(0, str(SCRIPTS))
    os.chdir(cwd)
    returncode = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    except SystemExit as exit_:
        returncode = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
    return Result(returncode, stdout.getvalue(), stderr.getvalue())


def start_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run scripts/NAME as an executable, through its shebang line, in cwd."""
    return subprocess.run(
        [str(SCRIPTS / name), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_ok(result: Result) -> None:
    assert result.returncode == 0, result.stderr


def assert_one_line_error(result, *fragments: str) -> None:
    """Check a rejected call: non-zero exit, no traceback, one error line naming fragments."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def assert_picture(path: Path, min_spread: float = 0.3) -> np.ndarray:
    """Check that a PNG exists, is small, and shows something: its pixel values vary and
    span at least min_spread of the [0, 1] range."""
    assert path.is_file(), f"{path.name} was not written"
    assert path.stat().st_size < 200_000
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0
    assert pixels.std() > 0.05, f"{path.name} is nearly blank"
    assert pixels.max() - pixels.min() >= min_spread, f"{path.name} has a narrow value range"
    return pixels


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def digits_chain(tmp_path_factory) -> Path:
    """A folder with weight-0.ckpt (init) and weight-1..3.ckpt, one train step each."""
    folder = tmp_path_factory.mktemp("chain")
    assert_ok(call_script("train-autoenc.py", "init", "weight-0.ckpt", *CPU, cwd=folder))
    for epoch in range(3):
        result = call_script(
            "train-autoenc.py",
            "train",
            f"weight-{epoch}.ckpt",
            f"weight-{epoch + 1}.ckpt",
            cwd=folder,
        )
        assert_ok(result)
        assert f"epoch {epoch + 1}: train loss" in result.stdout
    return folder


def test_train_autoenc_runs_from_empty_folder(tmp_path):
    result = start_script("train-autoenc.py", "init", "weight-0.ckpt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = start_script(
        "train-autoenc.py", "train", "weight-0.ckpt", "weight-1.ckpt", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1: train loss" in result.stdout
    assert "validation loss" in result.stdout
    # No logs, TensorBoard events or temporary files are left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["weight-0.ckpt", "weight-1.ckpt"]
    for name in ("weight-0.ckpt", "weight-1.ckpt"):
        model = autoexp.load_model(tmp_path / name)
        assert model.model_name == "mlp_ae"
    checkpoint = torch.load(tmp_path / "weight-1.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert checkpoint["autoexp_overrides"] == []
    assert checkpoint["autoexp_config"]["data"]["name"] == "digits"
    assert checkpoint["optimizer_states"][0]["state"], "Adam's moments were not saved"


def test_train_autoenc_chain_equals_multi_epoch_run(digits_chain, tmp_path):
    cfg = compose_train_config(tmp_path / "run", [*FAST, "trainer.max_epochs=3"])
    train(cfg)
    expected = state_dict(tmp_path / "run" / "checkpoints" / "last.ckpt")
    chained = state_dict(digits_chain / "weight-3.ckpt")
    assert expected.keys() == chained.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, chained[name]), f"{name} differs after 3 epochs"
    # The steps really trained: the weights moved at every step.
    for epoch in range(3):
        before = state_dict(digits_chain / f"weight-{epoch}.ckpt")
        after = state_dict(digits_chain / f"weight-{epoch + 1}.ckpt")
        assert not torch.equal(before["encoder.1.0.weight"], after["encoder.1.0.weight"])


def test_train_autoenc_tensorboard_images(digits_chain, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "weight-3.ckpt").write_bytes((digits_chain / "weight-3.ckpt").read_bytes())
    result = call_script(
        "train-autoenc.py",
        "train",
        "weight-3.ckpt",
        "weight-4.ckpt",
        "--tensorboard",
        "tb",
        cwd=tmp_path,
    )
    assert_ok(result)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"images/reconstructions", "filters/encoder", "filters/decoder"} <= set(
        events.Tags()["images"]
    )
    assert "val/loss" in events.Tags()["scalars"]


def test_plot_autoenc_newest_checkpoint(digits_chain):
    result = call_script("plot-autoenc.py", cwd=digits_chain)
    assert_ok(result)
    # weight-3.ckpt is the newest checkpoint in the folder.
    assert_picture(digits_chain / "weight-3-encoder-filters.png")
    assert_picture(digits_chain / "weight-3-decoder-filters.png")
    pixels = assert_picture(digits_chain / "weight-3-test-reconstructions.png")
    # Two rows of 16 tiles of 8x8 pixels enlarged 4 times, with 1-pixel padding.
    assert pixels.shape[:2] == (4 * (2 * 9 + 1), 4 * (16 * 9 + 1))
    # Test images keep their scale: the ink of a digit is near 1 and the background near 0.
    assert pixels.max() > 0.9
    assert pixels.min() < 0.1
