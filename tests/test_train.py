"""End-to-end training runs of mlp_ae: metrics, checkpoints, TensorBoard events, the CLI."""

import json
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.profilers import SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import autoexp
from autoexp.callbacks import ImageLogger
from autoexp.data import load_split
from autoexp.profiling import QuietProfiler
from autoexp.train import make_trainer, train
from tests.conftest import REPO_ROOT, requires_fashion_mnist, run_cli


def mean_image_mse(name: str) -> float:
    """Per-pixel test MSE of predicting the mean training image for every test image."""
    mean = load_split(name, "train").mean(0, keepdim=True)
    return (load_split(name, "test") - mean).pow(2).mean().item()


def read_events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One short mlp_ae run on digits, shared by the tests that only read its outputs."""
    from tests.conftest import FAST, compose_train_config

    run_dir = tmp_path_factory.mktemp("digits") / "run"
    cfg = compose_train_config(run_dir, [*FAST, "trainer.max_epochs=8", "model.latent_dim=16"])
    train(cfg)
    return run_dir


def test_train_digits_beats_mean_image(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())["metrics"]
    baseline = mean_image_mse("digits")
    assert metrics["test/mse"] < 0.5 * baseline
    assert metrics["test/loss"] == pytest.approx(64 * metrics["test/mse"], rel=1e-5)


def test_train_writes_metrics_json(digits_run):
    record = json.loads((digits_run / "metrics.json").read_text())
    assert record["model"] == "mlp_ae"
    assert record["data"] == "digits"
    assert record["latent_dim"] == 16
    assert record["seed"] == 0
    assert record["epochs"] == 8
    assert record["train_time_s"] > 0
    for name in ("train/loss_epoch", "val/loss", "val/mse", "test/loss", "test/mse"):
        assert name in record["metrics"]
    assert set(record["versions"]) >= {"python", "torch", "pytorch_lightning", "hydra"}


def test_train_writes_checkpoints(digits_run):
    checkpoints = digits_run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = [path for path in checkpoints.glob("best-epoch*.ckpt")]
    assert len(best) == 1


def test_load_model_round_trip(digits_run):
    model = autoexp.load_model(digits_run / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == "MLPAutoencoder"
    assert not model.training
    images = load_split("digits", "test")[:5]
    # The README's analysis snippet: no torch.no_grad() needed for plain tensors out.
    codes = model.encode(images)
    reconstructions = model.decode(codes)
    assert not codes.requires_grad
    assert not reconstructions.requires_grad
    assert reconstructions.numpy().shape == (5, 1, 8, 8)
    assert codes.shape == (5, 16)
    assert reconstructions.shape == images.shape
    assert torch.all((reconstructions >= 0) & (reconstructions <= 1))

    state = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=False)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state["state_dict"][name])


def test_load_model_rejects_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found: .*missing.ckpt"):
        autoexp.load_model(tmp_path / "missing.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.ckpt is not an autoexp checkpoint"):
        autoexp.load_model(foreign)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt is not a readable checkpoint"):
        autoexp.load_model(corrupt)


def test_events_hold_scalars(digits_run):
    scalars = read_events(digits_run).Tags()["scalars"]
    for tag in ("train/loss", "train/loss_epoch", "val/loss", "val/mse", "test/loss", "test/mse"):
        assert tag in scalars
    val_loss = read_events(digits_run).Scalars("val/loss")
    assert len(val_loss) == 8
    assert val_loss[-1].value < val_loss[0].value


def test_events_hold_images(digits_run):
    events = read_events(digits_run)
    assert set(events.Tags()["images"]) == {
        "images/reconstructions",
        "figures/reconstructions",
        "filters/encoder",
        "filters/decoder",
    }
    reconstructions = events.Images("images/reconstructions")
    # One grid per validation epoch, two rows of 8 images of 8x8 with 1-pixel padding.
    assert len(reconstructions) == 8
    assert (reconstructions[-1].height, reconstructions[-1].width) == (2 * 9 + 1, 8 * 9 + 1)
    # 512 encoder filters are cut to the 64 shown per group: an 8x8 grid of 8x8 images.
    encoder = events.Images("filters/encoder")[-1]
    assert (encoder.height, encoder.width) == (8 * 9 + 1, 8 * 9 + 1)


def test_image_logger_every_n_epochs_and_final_epoch(train_config):
    cfg = train_config(
        "trainer.max_epochs=5", "callbacks.image_logger.every_n_epochs=3", "test=false"
    )
    train(cfg)
    events = read_events(Path(cfg.paths.output_dir))
    steps = [event.step for event in events.Images("images/reconstructions")]
    # Epochs 0 and 3 by the interval, then the last epoch, 4, when training ends, each at
    # the step of that epoch's validation scalars.
    val_steps = [event.step for event in events.Scalars("val/loss")]
    assert len(val_steps) == 5
    assert steps == [val_steps[0], val_steps[3], val_steps[4]]
    figures = [event.step for event in events.Images("figures/reconstructions")]
    assert figures == steps


def test_image_logger_rejects_zero_interval():
    with pytest.raises(ValueError, match="every_n_epochs=0 must be an integer >= 1"):
        ImageLogger(every_n_epochs=0)


def test_events_hold_hparams(digits_run):
    events = read_events(digits_run)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "mlp_ae"
    assert hparams["data"].string_value == "digits"
    assert hparams["latent_dim"].number_value == 16
    assert hparams["seed"].number_value == 0
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert {"val/loss", "test/loss", "test/mse"} <= metric_tags


def test_cli_default_run(tmp_path):
    result = run_cli(
        ["-m", "autoexp.train", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", "/".join(run_dirs[0].parts[-2:]))
    assert (run_dirs[0] / ".hydra" / "config.yaml").is_file()
    assert (run_dirs[0] / "metrics.json").is_file()
    assert "Finished in" in result.stderr + result.stdout


def test_cli_runs_from_repo_conf():
    assert (REPO_ROOT / "conf" / "train.yaml").is_file()


@requires_fashion_mnist
def test_train_fashion_mnist_one_epoch(train_config):
    cfg = train_config("data=fashion_mnist", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert metrics["test/mse"] <= 0.030
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["data"] == "fashion_mnist"
    assert record["global_step"] == 211  # ceil(54000 / 256) batches


def test_trainer_profiler_default_and_override(train_config):
    assert isinstance(make_trainer(train_config(), []).profiler, QuietProfiler)
    trainer = make_trainer(train_config("+trainer.profiler=simple"), [])
    assert isinstance(trainer.profiler, SimpleProfiler)


@pytest.mark.parametrize("model", ["mlp_ae", "linear_pca_ae", "kmeans_ae"])
def test_train_double_precision(train_config, model):
    # Batches start as uint8, so the data module, not Lightning, must turn them into float64.
    cfg = train_config(f"model={model}", "+trainer.precision=64-true", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))

    run_dir = Path(cfg.paths.output_dir)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    dtypes = {
        value.dtype for value in checkpoint["state_dict"].values() if value.is_floating_point()
    }
    assert torch.float64 in dtypes
    assert torch.float32 not in dtypes
    assert read_events(run_dir).Tags()["images"], "the image logger wrote no images"
