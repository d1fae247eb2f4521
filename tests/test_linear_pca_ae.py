"""linear_pca_ae against scikit-learn's PCA on the same training split."""

import copy
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from numpy.testing import assert_allclose
from sklearn.decomposition import PCA
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autoexp import load_model
from autoexp.data import ImageDataModule, load_split
from autoexp.models import LinearPCAAutoencoder
from autoexp.models.linear_pca_ae import (
    full_gradient,
    gram_matrix,
    max_principal_angle,
    orthonormal_rows,
    top_eigenvectors,
)
from autoexp.train import train
from tests.conftest import compose_train_config, requires_fashion_mnist

# Without a monitored metric, ModelCheckpoint saves every epoch, so last.ckpt contains the final
# model. With one, Lightning 2.6 rewrites last.ckpt only when the metric improves.
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "callbacks.model_checkpoint.monitor=null",
]


def fit_run(run_dir: Path, *overrides: str) -> tuple[dict[str, float], LinearPCAAutoencoder]:
    """Train with the real config and return the metrics and the final model."""
    cfg = compose_train_config(run_dir, ["model=linear_pca_ae", *QUIET, *overrides])
    metrics = train(cfg)
    return metrics, load_model(run_dir / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def digits_pca() -> PCA:
    x = load_split("digits", "train").flatten(1).double().numpy()
    return PCA(8).fit(x)


@pytest.fixture(scope="module")
def gradient_run(tmp_path_factory):
    """The default gradient solver with its default 30 epochs, latent_dim 8 on digits."""
    # The CSV logger skips the image logging of 30 epochs; eigh_run covers TensorBoard.
    return fit_run(tmp_path_factory.mktemp("gradient"), "model.latent_dim=8", "logger=csv")


@pytest.fixture(scope="module")
def eigh_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eigh")


@pytest.fixture(scope="module")
def eigh_run(eigh_dir):
    return fit_run(eigh_dir, "model.latent_dim=8", "model.solver=eigh")


def sklearn_test_mse(pca: PCA, name: str = "digits") -> float:
    x = load_split(name, "test").flatten(1).double().numpy()
    return float(((x - pca.inverse_transform(pca.transform(x))) ** 2).mean())


def test_linear_pca_ae_gradient_matches_sklearn(gradient_run, digits_pca):
    metrics, model = gradient_run
    learned, _ = model.principal_components()
    exact = torch.from_numpy(digits_pca.components_)
    angle = math.degrees(max_principal_angle(learned, exact).item())
    assert angle < 2.0
    assert metrics["pca/max_principal_angle_deg"] < 2.0
    assert_allclose(metrics["test/mse"], sklearn_test_mse(digits_pca), rtol=0.01)


def test_linear_pca_ae_eigh_matches_sklearn(eigh_run, digits_pca):
    metrics, model = eigh_run
    components, _ = model.principal_components()
    cosines = (components * torch.from_numpy(digits_pca.components_)).sum(1).abs()
    assert (cosines > 0.9999).all(), cosines
    ratios = model.explained_variance_ratio().numpy()
    assert_allclose(ratios, digits_pca.explained_variance_ratio_, atol=1e-4)
    assert_allclose(metrics["pca/explained_variance_ratio_cumulative"], ratios.sum(), rtol=1e-6)
    assert_allclose(metrics["test/mse"], sklearn_test_mse(digits_pca), rtol=1e-4)
    # One pass over the data is the whole fit.
    assert model.n_samples.item() == len(load_split("digits", "train"))


def test_linear_pca_ae_logs_to_tensorboard(eigh_run, eigh_dir):
    events = EventAccumulator(str(eigh_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert "pca/explained_variance_ratio_cumulative" in tags["scalars"]
    assert "pca/max_principal_angle_deg" in tags["scalars"]
    assert "pca/explained_variance_ratio/text_summary" in tags["tensors"]
    assert "filters/components" in tags["images"]
    assert "figures/explained_variance_ratio" in tags["images"]


def test_linear_pca_ae_filters_same_for_both_solvers(gradient_run, eigh_run):
    _, gradient_model = gradient_run
    _, eigh_model = eigh_run
    gradient_filters = gradient_model.filters()["components"].flatten(1)
    eigh_filters = eigh_model.filters()["components"].flatten(1)
    assert gradient_filters.shape == (8, 64)
    # Same order and same signs: each pair of components points the same way.
    cosines = (gradient_filters * eigh_filters).sum(1)
    assert (cosines > 0.999).all(), cosines
    assert_allclose(gradient_filters.numpy(), eigh_filters.numpy(), atol=0.01)
    # Sign rule: the entry of largest absolute value of each component is positive.
    largest = eigh_filters.abs().argmax(1)
    assert (eigh_filters.gather(1, largest[:, None]) > 0).all()
    # Components come in order of explained variance.
    _, variances = eigh_model.principal_components()
    assert (variances[:-1] >= variances[1:]).all()


def test_linear_pca_ae_checkpoint_round_trip(gradient_run):
    metrics, model = gradient_run
    assert isinstance(model, LinearPCAAutoencoder)
    # f and g share one weight: it is the model's only parameter.
    assert [name for name, _ in model.named_parameters()] == ["weight"]
    # last.ckpt contains the model of the last validation.
    x = load_split("digits", "val")
    with torch.no_grad():
        val_loss = (x - model(x)).pow(2).flatten(1).sum(1).mean().item()
    assert_allclose(val_loss, metrics["val/loss"], rtol=1e-5)

    # A cast model still decodes with the encoder's weight.
    moved = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        moved.weight.mul_(2)
        code = moved.encode(x.double())
        expected = code @ moved.weight + moved.mean
        assert_allclose(moved.decode(code).flatten(1).numpy(), expected.numpy())


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_linear_pca_ae_resume_keeps_statistics(tmp_path):
    run_dir = tmp_path / "run"
    _, first = fit_run(run_dir, "model.latent_dim=4", "trainer.max_epochs=1", "test=false")
    last = run_dir / "checkpoints" / "last.ckpt"
    steps_per_epoch = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    cfg = compose_train_config(
        run_dir,
        [
            "model=linear_pca_ae",
            *QUIET,
            "model.latent_dim=4",
            "trainer.max_epochs=2",
            "test=false",
            f"ckpt_path={last}",
        ],
    )
    train(cfg)
    resumed = load_model(last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert checkpoint["global_step"] == 2 * steps_per_epoch
    # The statistics come from the checkpoint, not from a second pass.
    assert_allclose(resumed.mean.numpy(), first.mean.numpy())
    assert_allclose(resumed.covariance.numpy(), first.covariance.numpy())
    assert [name for name, _ in resumed.named_parameters()] == ["weight"]


def test_linear_pca_ae_plain_gradient_learns(train_config):
    cfg = train_config(
        "model=linear_pca_ae",
        "model.latent_dim=8",
        "model.orthonormal=false",
        "model.variance_reduction=false",
        "model.optimizer.lr=1e-2",
        "trainer.max_epochs=3",
        "test=false",
    )
    metrics = train(cfg)
    # Reconstructing every image as the mean scores the total variance per image.
    x = load_split("digits", "val").flatten(1).double()
    mean_only = (x - x.mean(0)).pow(2).sum(1).mean().item()
    assert metrics["val/loss"] < 0.6 * mean_only


def test_linear_pca_ae_latent_dim_above_pixels(train_config):
    with pytest.raises(ValueError, match=r"model\.latent_dim=65 must be <= 64"):
        train(train_config("model=linear_pca_ae", "model.latent_dim=65"))
    with pytest.raises(ValueError, match=r"model\.latent_dim=65 must be <= 64 \(the number of"):
        LinearPCAAutoencoder((1, 8, 8), latent_dim=65)


def test_linear_pca_ae_latent_dim_above_images(train_config, tmp_path):
    # 1% of digits left for training and validation: 16 training images.
    tiny = ["data.test_fraction=0.99", "model=linear_pca_ae", "model.latent_dim=20"]
    with pytest.raises(ValueError, match=r"model\.latent_dim=20 \(components\) must be <= 16"):
        train(train_config(*tiny))

    # The model checks the same when it is trained without the config checks.
    model = LinearPCAAutoencoder((1, 8, 8), latent_dim=20)
    datamodule = ImageDataModule("digits", root=None, test_fraction=0.99)
    trainer = pl.Trainer(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match=r"model\.latent_dim=20 must be <= 16 \(the number of"):
        trainer.fit(model, datamodule=datamodule)


def test_linear_pca_ae_eigh_rejects_short_max_steps(train_config, tmp_path):
    # 1294 digits training images in batches of 100: 13 batches.
    short = ["model=linear_pca_ae", "model.solver=eigh", "data.batch_size=100"]
    expected = r"trainer\.max_steps=3 stops the eigh solver before the end of its pass over the 13"
    with pytest.raises(ValueError, match=expected):
        train(train_config(*short, "trainer.max_steps=3"))

    # The model checks the same when it is trained without the config checks.
    model = LinearPCAAutoencoder((1, 8, 8), latent_dim=4, solver="eigh")
    datamodule = ImageDataModule("digits", root=None, batch_size=100)
    trainer = pl.Trainer(
        max_steps=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match=expected):
        trainer.fit(model, datamodule=datamodule)


def test_linear_pca_ae_ddp_matches_single_process(eigh_run, tmp_path):
    single_metrics, single = eigh_run
    ddp_metrics, ddp = fit_run(tmp_path, "model.latent_dim=8", "model.solver=eigh", "trainer=ddp")
    assert ddp.n_samples.item() == single.n_samples.item()
    assert_allclose(ddp.mean.numpy(), single.mean.numpy(), atol=1e-12)
    assert_allclose(ddp.weight.detach().numpy(), single.weight.detach().numpy(), atol=1e-5)
    # The 359 test images split 180/179 over the two processes; the metrics still average
    # over every image once.
    for name in ("val/loss", "test/loss", "test/mse"):
        assert_allclose(ddp_metrics[name], single_metrics[name], rtol=1e-5, err_msg=name)


def test_top_eigenvectors_match_full_eigh():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(200, 50, generator=generator, dtype=torch.float64)
    covariance = factor.T @ factor / 200
    components, variances = top_eigenvectors(covariance, 5)
    values, vectors = torch.linalg.eigh(covariance)
    assert_allclose(variances.numpy(), values.flip(0)[:5].numpy(), rtol=1e-12)
    cosines = (components @ vectors.flip(1)[:, :5]).diagonal().abs()
    assert_allclose(cosines.numpy(), 1.0, atol=1e-10)
    # fix_signs: the entry of largest absolute value of each component is positive.
    largest = components.gather(1, components.abs().argmax(1, keepdim=True))
    assert (largest > 0).all()


@pytest.mark.parametrize("width", [784, 64, 5, 3, 1])
def test_gram_matrix_blocks_match_product(width):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, width, generator=generator)
    expected = x.double().T @ x.double()
    gram = gram_matrix(x)
    assert gram.dtype == torch.float32
    assert_allclose(gram.double().numpy(), expected.numpy(), rtol=1e-5)
    # The blocks below the diagonal are copies of those above it.
    edges = [round(i * width / 4) for i in range(5)]
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        assert torch.equal(gram[end:, start:end], gram[start:end, end:].T)
    # Columns of a wider tensor (a view with a row stride) and uint8 pixels.
    wide = torch.randint(0, 256, (50, width + 7), generator=generator, dtype=torch.uint8)
    view = wide[:, 3 : 3 + width]
    assert_allclose(
        gram_matrix(view).double().numpy(),
        (view.double().T @ view.double()).numpy(),
        rtol=1e-6,
    )


def test_full_gradient_matches_autograd():
    x = load_split("digits", "train").flatten(1).double()
    centred = x - x.mean(0)
    covariance = centred.T @ centred / len(x)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 64, dtype=torch.float64, generator=generator)
    weight = (orthonormal_rows(weight) + 0.1 * weight).requires_grad_(True)
    loss = (centred - centred @ weight.T @ weight).pow(2).sum(1).mean()
    (expected,) = torch.autograd.grad(loss, weight)
    assert_allclose(full_gradient(weight.detach(), covariance).numpy(), expected.numpy())


@pytest.mark.slow
@requires_fashion_mnist
def test_linear_pca_ae_eigh_fashion_mnist(tmp_path):
    x = load_split("fashion_mnist", "train").flatten(1).double().numpy()
    pca = PCA(10, svd_solver="covariance_eigh").fit(x)
    metrics, model = fit_run(
        tmp_path, "data=fashion_mnist", "model.solver=eigh", "model.latent_dim=10", "logger=csv"
    )
    assert_allclose(metrics["test/mse"], sklearn_test_mse(pca, "fashion_mnist"), rtol=0.005)
    ratios = model.explained_variance_ratio().numpy()
    assert_allclose(ratios, pca.explained_variance_ratio_, atol=1e-4)
