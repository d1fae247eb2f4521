"""Fixtures that compose the real configs from conf/ with small overrides for fast runs."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from autoexp.train import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Overrides that keep a test run short and quiet.
FAST = [
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]

requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (scripts/install-fashion-mnist.sh)",
)


def compose_train_config(output_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml as autoexp-train would, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Return a function that composes the training config for tmp_path/run with overrides."""

    def make(*overrides: str, fast: bool = True, run_dir: Path | None = None) -> DictConfig:
        return compose_train_config(
            run_dir or tmp_path / "run", [*FAST, *overrides] if fast else list(overrides)
        )

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo what a test changed in os.environ, such as the MASTER_PORT that Lightning sets in
    the process that launches DDP workers, so that later tests and their subprocesses start
    from the same environment."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def restore_default_sigint() -> None:
    """Reset SIGINT to its default handling in a child process, as a terminal would.

    A shell that starts the suite in the background (`make test &`) makes its children ignore
    SIGINT, and Python then keeps ignoring it, so tests of Ctrl-C would see a run go on.
    Passed to subprocess as preexec_fn.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    **kwargs,
) -> subprocess.CompletedProcess:
    """Run `python -m autoexp.train ARGS` (or another module given as args[0] with -m) in cwd,
    with the variables of env added to the environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=restore_default_sigint,
        **kwargs,
    )
