"""Resuming from a checkpoint continues a run exactly where it stopped."""

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import autoexp
from autoexp.callbacks import TrainingInterrupted
from autoexp.models import MODELS
from autoexp.train import train
from tests.conftest import FAST, compose_train_config

# Every scalar is logged here: train/loss each 5 steps, the epoch and validation metrics.
RESUME_FAST = [*FAST, "~callbacks.image_logger", "test=false", "trainer.log_every_n_steps=5"]


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Return every scalar of a run folder's event files as (step, value) pairs by tag."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def run_in_two_legs(
    root: Path, overrides: list[str], n_epochs: int, split_epoch: int
) -> tuple[Path, Path, Path]:
    """Train n_epochs at once, and again as split_epoch epochs plus a resumed second leg."""
    whole, first, second = root / "whole", root / "first", root / "second"
    train(compose_train_config(whole, [*overrides, f"trainer.max_epochs={n_epochs}"]))
    train(compose_train_config(first, [*overrides, f"trainer.max_epochs={split_epoch}"]))
    resume = f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"
    train(compose_train_config(second, [*overrides, f"trainer.max_epochs={n_epochs}", resume]))
    return whole, first, second


def assert_same_tensors(expected: dict, actual: dict, name: str) -> None:
    assert expected.keys() == actual.keys(), name
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_tensors(value, actual[key], f"{name}.{key}")
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, actual[key]), f"{name}.{key} differs"
        else:
            assert value == actual[key], f"{name}.{key} differs"


def test_resume_matches_uninterrupted_run(tmp_path):
    whole, first, second = run_in_two_legs(tmp_path, RESUME_FAST, n_epochs=3, split_epoch=1)
    expected = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)

    assert resumed["epoch"] == expected["epoch"] == 2
    assert resumed["global_step"] == expected["global_step"] == 3 * 21
    assert_same_tensors(expected["state_dict"], resumed["state_dict"], "state_dict")
    assert len(resumed["optimizer_states"]) == len(expected["optimizer_states"]) == 1
    assert_same_tensors(
        expected["optimizer_states"][0], resumed["optimizer_states"][0], "optimizer"
    )
    assert (
        resumed["loops"]["fit_loop"]["epoch_progress"]
        == (expected["loops"]["fit_loop"]["epoch_progress"])
    )

    scalars = read_scalars(whole)
    first_leg, second_leg = read_scalars(first), read_scalars(second)
    assert set(first_leg) == set(second_leg) == set(scalars)
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/mse"} <= set(scalars)
    for tag, values in scalars.items():
        # Steps and values must match exactly; a float32 round trip keeps them bit for bit.
        assert first_leg[tag] + second_leg[tag] == values, tag


@pytest.mark.skipif("linear_pca_ae" not in MODELS, reason="linear_pca_ae is not available")
def test_linear_pca_weights_stay_tied(tmp_path):
    overrides = [*RESUME_FAST, "model=linear_pca_ae", "model.latent_dim=4"]
    _, first, second = run_in_two_legs(tmp_path, overrides, n_epochs=2, split_epoch=1)
    images = torch.rand(5, 1, 8, 8, dtype=torch.float64)

    for path in (first / "checkpoints" / "last.ckpt", second / "checkpoints" / "last.ckpt"):
        model = autoexp.load_model(path).to(torch.float64)
        # One parameter serves as the encoder's weight and, transposed, as the decoder's.
        assert [name for name, _ in model.named_parameters()] == ["weight"]
        weight, mean = model.weight, model.mean
        codes = model.encode(images)
        torch.testing.assert_close(codes, (images.flatten(1) - mean) @ weight.T)
        torch.testing.assert_close(model.decode(codes).flatten(1), codes @ weight + mean)

        with torch.no_grad():
            weight.add_(1.0)
        torch.testing.assert_close(model.decode(codes).flatten(1), codes @ weight + mean)

        moved = model.to("meta")
        assert [name for name, _ in moved.named_parameters()] == ["weight"]
        assert moved.weight.device.type == "meta"


class SignalAtStep(pl.Callback):
    """Sends SIGTERM to this process at the start of one training step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    overrides = [*RESUME_FAST, "trainer.max_epochs=2"]
    train(compose_train_config(whole, overrides))
    cfg = compose_train_config(first, overrides)
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": f"{__name__}.SignalAtStep", "step": 30}
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg)
    assert stop.value.code == 128 + signal.SIGTERM
    interrupted = first / "checkpoints" / "interrupted.ckpt"
    train(compose_train_config(second, [*overrides, f"ckpt_path={interrupted}"]))

    expected = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.load(interrupted, weights_only=False)["global_step"] == 31
    assert resumed["global_step"] == expected["global_step"] == 2 * 21
    assert_same_tensors(expected["state_dict"], resumed["state_dict"], "state_dict")
    assert_same_tensors(
        expected["optimizer_states"][0], resumed["optimizer_states"][0], "optimizer"
    )
    # Validation runs on the same weights at the end of each epoch.
    scalars = read_scalars(whole)
    assert (
        read_scalars(first)["val/loss"] + read_scalars(second)["val/loss"] == (scalars["val/loss"])
    )


@pytest.mark.parametrize(
    ("solver", "n_epochs", "step"), [("eigh", 1, 5), ("gradient", 2, 30)], ids=["eigh", "gradient"]
)
def test_pca_resume_mid_epoch_matches_uninterrupted_run(tmp_path, solver, n_epochs, step):
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    overrides = [
        *RESUME_FAST,
        "model=linear_pca_ae",
        f"model.solver={solver}",
        "model.latent_dim=4",
        f"trainer.max_epochs={n_epochs}",
    ]
    train(compose_train_config(whole, overrides))
    cfg = compose_train_config(first, overrides)
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": f"{__name__}.SignalAtStep", "step": step}
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    interrupted = first / "checkpoints" / "interrupted.ckpt"
    assert torch.load(interrupted, weights_only=False)["global_step"] == step + 1
    train(compose_train_config(second, [*overrides, f"ckpt_path={interrupted}"]))

    expected = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == expected["global_step"] == n_epochs * 21
    # The eigh pass continues from the saved sums, and SVRG from the saved snapshot.
    assert_same_tensors(expected["state_dict"], resumed["state_dict"], "state_dict")


@pytest.mark.parametrize("solver", ["minibatch", "lloyd"])
def test_kmeans_resume_mid_epoch_matches_uninterrupted_run(tmp_path, solver):
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    overrides = [
        *RESUME_FAST,
        "model=kmeans_ae",
        f"model.solver={solver}",
        "model.latent_dim=5",
        "data.batch_size=64",
        "data.shuffle=true",
        "trainer.max_epochs=2",
    ]
    train(compose_train_config(whole, overrides))
    cfg = compose_train_config(first, overrides)
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": f"{__name__}.SignalAtStep", "step": 5}
    with pytest.raises(TrainingInterrupted):
        train(cfg)
    interrupted = first / "checkpoints" / "interrupted.ckpt"
    assert torch.load(interrupted, weights_only=False)["global_step"] == 6
    train(compose_train_config(second, [*overrides, f"ckpt_path={interrupted}"]))

    expected = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == expected["global_step"] == 2 * 21
    # The epoch's sums and its starting centroids come from the checkpoint.
    assert_same_tensors(expected["state_dict"], resumed["state_dict"], "state_dict")
