"""kmeans_ae against scikit-learn's KMeans on the same training split."""

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.cluster import KMeans, kmeans_plusplus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autoexp import load_model
from autoexp.data import ImageDataModule, load_split
from autoexp.data.splits import Split
from autoexp.models import KMeansAutoencoder
from autoexp.models.clustering import assign_and_sum_chunks
from autoexp.models.clustering import kmeans_plusplus as greedy_kmeans_plusplus
from autoexp.models.kmeans_ae import EmptyClusterWarning
from autoexp.train import train
from tests.conftest import compose_train_config, requires_fashion_mnist

# Without a monitored metric, ModelCheckpoint saves every epoch, so last.ckpt contains the final
# model. With one, Lightning 2.6 rewrites last.ckpt only when the metric improves.
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "callbacks.model_checkpoint.monitor=null",
    "test=false",
]


def fit_run(run_dir: Path, *overrides: str) -> tuple[dict[str, float], KMeansAutoencoder]:
    """Train with the real config and return the metrics and the final model."""
    cfg = compose_train_config(run_dir, ["model=kmeans_ae", *QUIET, *overrides])
    metrics = train(cfg)
    return metrics, load_model(run_dir / "checkpoints" / "last.ckpt")


def training_data() -> torch.Tensor:
    return load_split("digits", "train").flatten(1).double()


def total_inertia(model: KMeansAutoencoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        _, distances = model.assign(x)
    return distances.sum().item()


@pytest.fixture(scope="module")
def sklearn_start(tmp_path_factory) -> tuple[np.ndarray, Path]:
    """scikit-learn's k-means++ centroids for digits, k=10, and a .npy file holding them."""
    centroids, _ = kmeans_plusplus(training_data().numpy(), 10, random_state=0)
    path = tmp_path_factory.mktemp("init") / "centroids.npy"
    np.save(path, centroids)
    return centroids, path


@pytest.fixture(scope="module")
def same_start_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lloyd")


@pytest.fixture(scope="module")
def same_start_run(same_start_dir, sklearn_start):
    _, path = sklearn_start
    return fit_run(same_start_dir, f"model.init={path}")


def test_kmeans_ae_matches_sklearn_from_same_init(same_start_run, sklearn_start):
    metrics, model = same_start_run
    centroids, _ = sklearn_start
    x = training_data()
    reference = KMeans(10, init=centroids, n_init=1, algorithm="lloyd").fit(x.numpy())

    with torch.no_grad():
        labels, _ = model.assign(x)
    assert_array_equal(labels.numpy(), reference.labels_)
    assert_allclose(total_inertia(model, x), reference.inertia_, rtol=1e-6)
    assert_allclose(model.best_centroids.numpy(), reference.cluster_centers_, atol=1e-9)
    # Lloyd stopped on the tolerance, as scikit-learn did, long before max_epochs.
    assert metrics["kmeans/centroid_shift"] <= model.shift_tolerance.item()


def test_kmeans_ae_logs_to_tensorboard(same_start_run, same_start_dir):
    events = EventAccumulator(str(same_start_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for name in ("inertia_per_image", "centroid_shift", "empty_clusters", "cluster_size_min"):
        assert f"kmeans/{name}" in tags["scalars"]
    # The loss is logged per epoch only; see KMeansAutoencoder.log_train_steps.
    assert "train/loss_epoch" in tags["scalars"]
    assert "train/loss" not in tags["scalars"]
    # Histograms and images sit at the steps of the same epoch's scalars.
    scalar_steps = [event.step for event in events.Scalars("kmeans/inertia_per_image")]
    histogram_steps = [event.step for event in events.Histograms("kmeans/cluster_sizes")]
    assert histogram_steps == scalar_steps
    val_steps = {event.step for event in events.Scalars("val/loss")}
    image_steps = {event.step for event in events.Images("images/reconstructions")}
    assert image_steps <= val_steps
    assert "kmeans/cluster_sizes" in tags["histograms"]
    assert "filters/centroids" in tags["images"]
    assert "images/reconstructions" in tags["images"]
    assert "figures/cluster_sizes" in tags["images"]


@pytest.mark.parametrize("threads", [1, 2])
def test_assign_and_sum_matches_float64_reference(threads):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2500, 64, generator=generator)
    # Two runs of three clusters: six centroid rows, padded to eight inside.
    model = KMeansAutoencoder((1, 8, 8), latent_dim=3, n_init=2)
    model.set_initial_centroids(torch.rand(2, 3, 64, generator=generator, dtype=torch.float64))
    previous = torch.get_num_threads()
    # With 2 threads, the 5 chunks of 500 rows run as two parts, one per thread.
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            distances, labels, sums, counts = model._assign_and_sum(x, chunk_size=500)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)

    centroids = model.centroids.detach()
    reference = (x.double()[None, :, None, :] - centroids[:, None]).pow(2).sum(-1)  # (2, n, 3)
    reference_distances, reference_labels = reference.min(dim=2)
    assert_array_equal(labels.numpy(), reference_labels.T.numpy())
    assert_allclose(distances.numpy(), reference_distances.T.numpy(), rtol=1e-5, atol=1e-5)
    for run in range(2):
        one_hot = torch.nn.functional.one_hot(reference_labels[run], 3).double()
        assert_allclose(sums[run].numpy(), (one_hot.T @ x.double()).numpy(), rtol=1e-6)
        assert_array_equal(counts[run].numpy(), one_hot.sum(0).numpy())


def test_kmeans_ae_kmeans_plusplus_within_one_percent(tmp_path):
    x = training_data()
    reference = KMeans(10, n_init=10, random_state=0).fit(x.numpy())
    _, model = fit_run(tmp_path, "model.n_init=10", "logger=csv")
    assert total_inertia(model, x) <= 1.01 * reference.inertia_
    # The model is the best of its 10 runs.
    assert model.best_run.item() == model.run_inertia.argmin().item()


def test_kmeans_ae_checkpoint_round_trip(same_start_run):
    metrics, model = same_start_run
    assert isinstance(model, KMeansAutoencoder)
    x = load_split("digits", "val")
    with torch.no_grad():
        codes = model.encode(x)
        reconstructions = model.decode(codes)
    # One-hot codes, decoded to the nearest centroid.
    assert_array_equal(codes.sum(1).numpy(), np.ones(len(x)))
    expected = model.best_centroids[codes.argmax(1)].float().reshape(x.shape)
    assert_allclose(reconstructions.numpy(), expected.numpy())
    # last.ckpt contains the model of the last validation.
    val_loss = (x - reconstructions).pow(2).flatten(1).sum(1).mean().item()
    assert_allclose(val_loss, metrics["val/loss"], rtol=1e-5)
    assert model.filters()["centroids"].shape == (10, 1, 8, 8)


def test_kmeans_ae_ddp_matches_single_process(tmp_path, sklearn_start):
    _, path = sklearn_start
    common = [f"model.init={path}", "trainer.max_epochs=4", "logger=csv"]
    single_metrics, single = fit_run(tmp_path / "single", *common)
    # With the progress bar on, rank 0 alone reads the epoch's metrics at the end of each
    # epoch, which once made the two processes' collectives mismatch and abort.
    ddp_metrics, ddp = fit_run(
        tmp_path / "ddp", *common, "trainer=ddp", "trainer.enable_progress_bar=true"
    )
    assert_allclose(ddp.centroids.detach().numpy(), single.centroids.detach().numpy(), atol=1e-9)
    assert_allclose(ddp.counts.numpy(), single.counts.numpy())
    for name in ("val/loss", "kmeans/inertia_per_image"):
        assert_allclose(ddp_metrics[name], single_metrics[name], rtol=1e-6, err_msg=name)


def test_kmeans_ae_minibatch_close_to_lloyd(tmp_path, same_start_run, sklearn_start):
    _, lloyd = same_start_run
    _, path = sklearn_start
    _, minibatch = fit_run(
        tmp_path,
        "model.solver=minibatch",
        f"model.init={path}",
        "data.batch_size=64",
        "data.shuffle=true",
        "trainer.max_epochs=10",
        "logger=csv",
    )
    x = training_data()
    assert total_inertia(minibatch, x) <= 1.03 * total_inertia(lloyd, x)


def test_kmeans_ae_minibatch_unshuffled_warns(tmp_path, caplog):
    fit_run(tmp_path, "model.solver=minibatch", "trainer.max_epochs=1", "logger=csv")
    assert "model.solver=minibatch with data.shuffle=false" in caplog.text


def test_kmeans_ae_lloyd_batch_is_view(tmp_path):
    # With the config's unshuffled float32 split, the training batch is the split itself.
    cfg = compose_train_config(tmp_path, ["model=kmeans_ae", *QUIET])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 1
    images, _ = datamodule.on_after_batch_transfer(batches[0], 0)
    split_images = datamodule.batch_splits["train"].images
    assert images.data_ptr() == split_images.data_ptr()
    assert images.shape == split_images.shape
    assert torch.equal(images, datamodule.splits["train"].to_float())


def quiet_trainer(root: Path, max_epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def tiny_datamodule(images: torch.Tensor) -> ImageDataModule:
    """Return a data module whose three splits are the given 8x8 uint8 images."""
    datamodule = ImageDataModule("digits", root=None, batch_size=4)
    labels = torch.zeros(len(images), dtype=torch.long)
    split = Split(images[:, None].contiguous(), labels, pixel_max=16)
    datamodule.splits = {"train": split, "val": split, "test": split}
    return datamodule


@pytest.mark.slow
@requires_fashion_mnist
def test_kmeans_ae_fashion_mnist_cluster_sizes_whole(tmp_path):
    # One batch of 54,000 images: Lightning's float32 batch-size weighting rounded the
    # logged sizes (7417 became 7417.0005) until the epoch scalars were logged with weight 1.
    # An odd size times 54,000 is not a float32 integer, so the epochs below log some sizes
    # that the rounding changed (all twelve even has odds of 1 in 4,096).
    metrics, model = fit_run(tmp_path, "data=fashion_mnist", "trainer.max_epochs=6", "logger=csv")
    assert metrics["kmeans/cluster_size_max"] == model.counts.max().item()
    (csv_path,) = tmp_path.rglob("metrics.csv")
    with csv_path.open() as file:
        rows = [row for row in csv.DictReader(file) if row["kmeans/cluster_size_max"]]
    assert len(rows) == 6
    for row in rows:
        for name in ("kmeans/cluster_size_min", "kmeans/cluster_size_max"):
            assert float(row[name]).is_integer(), (name, row[name])


def test_kmeans_ae_reseeds_empty_clusters(tmp_path):
    # Three distinct images, each repeated: 4 copies of a, 3 of b, 3 of c.
    a, b, c = torch.zeros(8, 8), torch.full((8, 8), 8.0), torch.full((8, 8), 16.0)
    b[0, 0], c[0, 0] = 0.0, 0.0
    images = torch.stack([a] * 4 + [b] * 3 + [c] * 3).to(torch.uint8)
    model = KMeansAutoencoder((1, 8, 8), latent_dim=3)
    # Ties go to the first of two equal centroids, so the second one gets no images. Neither
    # does the third, because every image is nearer to a.
    far = torch.full((64,), -1.0)
    model.set_initial_centroids(torch.stack([a.flatten() / 16, a.flatten() / 16, far]))

    trainer = quiet_trainer(tmp_path, max_epochs=5)
    with pytest.warns(EmptyClusterWarning) as record:
        trainer.fit(model, datamodule=tiny_datamodule(images))
    messages = [str(item.message) for item in record if item.category is EmptyClusterWarning]
    assert messages[0].startswith("2 of 3 clusters had no training images in epoch 0;")

    centroids = model.best_centroids
    assert torch.isfinite(centroids).all()
    distinct = (torch.stack([a, b, c]).flatten(1) / 16).double()
    found = torch.cdist(centroids, distinct).argmin(1).sort().values
    assert found.tolist() == [0, 1, 2]
    assert total_inertia(model, images.flatten(1).double() / 16) == pytest.approx(0, abs=1e-12)


def test_kmeans_ae_more_clusters_than_distinct_images(tmp_path):
    images = torch.stack([torch.zeros(8, 8)] * 5 + [torch.full((8, 8), 16.0)] * 5)
    model = KMeansAutoencoder((1, 8, 8), latent_dim=4, init="random")
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    with pytest.warns(EmptyClusterWarning, match=r"re-seeded \d of them"):
        trainer.fit(model, datamodule=tiny_datamodule(images.to(torch.uint8)))
    assert torch.isfinite(model.centroids).all()
    assert total_inertia(model, images.flatten(1).double() / 16) == pytest.approx(0, abs=1e-12)


def test_kmeans_ae_latent_dim_above_images(train_config, tmp_path):
    # 1% of digits left for training and validation: 16 training images.
    tiny = ["data.test_fraction=0.99", "model=kmeans_ae", "model.latent_dim=20"]
    with pytest.raises(ValueError, match=r"model\.latent_dim=20 \(clusters\) must be <= 16"):
        train(train_config(*tiny))

    # The model checks the same when it is trained without the config checks.
    model = KMeansAutoencoder((1, 8, 8), latent_dim=20)
    datamodule = ImageDataModule("digits", root=None, test_fraction=0.99)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"model\.latent_dim=20 must be <= 16 \(the number of"):
        trainer.fit(model, datamodule=datamodule)


def test_kmeans_ae_initial_centroids_wrong_shape():
    model = KMeansAutoencoder((1, 8, 8), latent_dim=3)
    with pytest.raises(ValueError, match=r"initial centroids have shape \(2, 64\)"):
        model.set_initial_centroids(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.set_initial_centroids(torch.full((3, 64), float("nan")))
    # With several runs, one set of centroids per run is the only accepted shape.
    runs = KMeansAutoencoder((1, 8, 8), latent_dim=3, n_init=2)
    with pytest.raises(ValueError, match=r"\(3, 64\), expected \(2, 3, 64\) \(model.n_init"):
        runs.set_initial_centroids(torch.zeros(3, 64))


def test_kmeans_plusplus_seeded_and_distinct():
    x = training_data()
    first = greedy_kmeans_plusplus(x, 10, torch.Generator().manual_seed(0))
    again = greedy_kmeans_plusplus(x, 10, torch.Generator().manual_seed(0))
    assert_array_equal(first.numpy(), again.numpy())
    assert len(set(first.tolist())) == 10


@pytest.mark.parametrize("runs", [1, 3])
def test_assign_and_sum_chunks_matches_float64(runs):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 20, generator=generator)
    k = 4
    centroids = torch.rand(runs * k, 20, generator=generator)
    # Chunks of 300 rows, the last one shorter.
    distances, labels, sums, counts = assign_and_sum_chunks(x, centroids, runs, k, 300)

    squared = torch.cdist(x.double(), centroids.double().reshape(runs, k, 20)).square()
    expected_distances, expected_labels = squared.min(dim=2)  # (runs, n)
    assert torch.equal(labels, expected_labels.T)
    assert_allclose(distances.numpy(), expected_distances.T.numpy(), rtol=1e-4, atol=1e-5)
    for run in range(runs):
        members = torch.nn.functional.one_hot(expected_labels[run], k).double()
        rows = slice(run * k, (run + 1) * k)
        assert_allclose(sums[rows].numpy(), (members.T @ x.double()).numpy(), rtol=1e-6)
        assert_array_equal(counts[rows].numpy(), members.sum(0).numpy())
    assert sums.dtype == counts.dtype == torch.float64
