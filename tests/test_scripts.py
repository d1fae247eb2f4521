"""The classroom scripts in scripts/, run in fresh folders on digits and Fashion-MNIST.

Most runs execute a script's file in this process (as `python scripts/NAME.py ARGS` would),
because starting Python with torch and Lightning costs seconds per process on 2 CPU cores.
A few runs start the scripts as executables to cover the shebang line and the exit status.
"""

import contextlib
import io
import json
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
from autoexp.classroom.identities import (
    check_kmeans_identity,
    check_lloyd_monotone,
    check_pca_minimal,
    check_projection_identity,
    random_orthonormal_basis,
)
from autoexp.train import train
from tests.conftest import FAST, REPO_ROOT, compose_train_config, requires_fashion_mnist

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
    pixels = matplotlib.image.imread(path)
    if pixels.ndim == 3:
        pixels = pixels[..., :3]
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
    # Two rows of 16 tiles of 8x8 pixels with 1-pixel padding, enlarged 5 times.
    assert pixels.shape[:2] == (5 * (2 * 9 + 1), 5 * (16 * 9 + 1))
    # Test images keep their scale: the ink of a digit is near 1 and the background near 0.
    assert pixels.max() > 0.9
    assert pixels.min() < 0.1


# PCA, k-means and the identity checks, on digits and on Fashion-MNIST.

DATASETS = [
    pytest.param("digits", id="digits"),
    pytest.param("fashion_mnist", id="fashion_mnist", marks=requires_fashion_mnist),
]
# Fashion-MNIST k-means takes about 30 Lloyd iterations to converge; a few show the pictures.
# Large batches make fewer steps per epoch, and Lloyd sums over all images anyway.
FAST_FITS = {"digits": [], "fashion_mnist": ["trainer.max_epochs=3", "data.batch_size=8192"]}
IMAGE_SHAPES = {"digits": (1, 8, 8), "fashion_mnist": (1, 28, 28)}


@pytest.fixture(scope="module", params=DATASETS)
def classical(request, tmp_path_factory) -> tuple[str, Path, dict[str, Result]]:
    """Run pca.py, plot-eigen.py, kmeans.py and plot-centroids.py in one fresh folder."""
    name = request.param
    folder = tmp_path_factory.mktemp(f"classical-{name}")
    data = f"data={name}"
    results = {
        "pca": call_script("pca.py", data, *CPU, cwd=folder),
        "plot-eigen": call_script("plot-eigen.py", cwd=folder),
        "kmeans": call_script("kmeans.py", data, *CPU, *FAST_FITS[name], cwd=folder),
        "plot-centroids": call_script("plot-centroids.py", cwd=folder),
    }
    return name, folder, results


def test_pca_writes_arrays(classical):
    name, folder, results = classical
    assert_ok(results["pca"])
    assert "explained variance" in results["pca"].stdout
    shape = IMAGE_SHAPES[name]
    n_pixels = int(np.prod(shape))
    mean = np.load(folder / "pca-mean.npy")
    eigenvalues = torch.from_numpy(np.load(folder / "pca-eigenvalues.npy"))
    eigenvectors = torch.from_numpy(np.load(folder / "pca-eigenvectors.npy"))
    assert mean.shape == shape
    assert eigenvalues.shape == (n_pixels,)
    assert eigenvectors.shape == (n_pixels, n_pixels)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])
    assert eigenvalues[0] > 0
    identity = torch.eye(n_pixels, dtype=torch.float64)
    torch.testing.assert_close(eigenvectors.T @ eigenvectors, identity, atol=1e-8, rtol=0)
    # Each column is an eigenvector of the training covariance with its eigenvalue.
    from autoexp.data import load_split

    if name == "digits":
        x = load_split("digits", "train").flatten(1).double()
        covariance = torch.cov(x.T, correction=0)
        torch.testing.assert_close(
            covariance @ eigenvectors, eigenvectors * eigenvalues, atol=1e-9, rtol=0
        )


def test_plot_eigen_pictures(classical):
    _, folder, results = classical
    assert_ok(results["plot-eigen"])
    for picture in ("pca-mean", "pca-eigenvectors", "pca-reconstructions", "pca-spectrum"):
        assert_picture(folder / f"{picture}.png")


def test_kmeans_writes_centroids(classical):
    name, folder, results = classical
    assert_ok(results["kmeans"])
    assert "iteration  objective" in results["kmeans"].stdout
    centroids = torch.from_numpy(np.load(folder / "kmeans-centroids.npy"))
    assignments = torch.from_numpy(np.load(folder / "kmeans-assignments.npy"))
    assert centroids.shape == (10, *IMAGE_SHAPES[name])
    assert centroids.min() >= 0
    assert centroids.max() <= 1
    assert assignments.dtype == torch.int64
    assert set(assignments.tolist()) == set(range(10))
    settings = json.loads((folder / "kmeans.json").read_text())
    objectives = settings["objective_per_iteration"]
    assert len(objectives) >= 2
    assert all(after <= before for before, after in zip(objectives, objectives[1:], strict=False))
    assert sum(settings["cluster_sizes"]) == len(assignments)


def test_plot_centroids_pictures(classical):
    _, folder, results = classical
    assert_ok(results["plot-centroids"])
    centroids = assert_picture(folder / "kmeans-centroids.png")
    # Centroids keep the pixel scale: means of images, so not white on black.
    assert centroids.max() < 1.0
    assert_picture(folder / "kmeans-cluster-sizes.png")
    assert_picture(folder / "kmeans-cluster-members.png")


def test_check_identities_passes(classical):
    name, folder, _ = classical
    result = call_script(
        "check-identities.py",
        "--from-files",
        "--pca-epochs",
        "1",
        "--random-bases",
        "2",
        *CPU,
        *FAST_FITS[name][1:],
        cwd=folder,
    )
    assert_ok(result)
    assert result.stdout.count("PASS") == 6
    assert "FAIL" not in result.stdout
    assert "linear_pca_ae trained 1 epochs" in result.stdout


def test_check_identities_fits_everything(tmp_path):
    result = call_script("check-identities.py", "--kmeans-iterations", "3", *CPU, cwd=tmp_path)
    assert_ok(result)
    assert "all 9 checks passed" in result.stdout
    # Fitting here leaves no files behind.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("classical", ["digits"], indirect=True)
def test_check_identities_fails_on_wrong_eigenvectors(classical, tmp_path):
    _, folder, _ = classical
    for path in folder.glob("*.npy"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    for path in folder.glob("*.json"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    # Smallest eigenvalues first: the "leading" components are now the worst ones.
    eigenvectors = np.load(tmp_path / "pca-eigenvectors.npy")
    np.save(tmp_path / "pca-eigenvectors.npy", eigenvectors[:, ::-1])
    # Every image assigned to cluster 0, which is not its nearest centroid.
    assignments = np.load(tmp_path / "kmeans-assignments.npy")
    np.save(tmp_path / "kmeans-assignments.npy", np.zeros_like(assignments))

    result = call_script(
        "check-identities.py",
        "--from-files",
        "--pca-epochs",
        "0",
        "--random-bases",
        "2",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert_one_line_error(result, "3 of 5 checks failed", "2. PCA reconstruction error")
    assert "3. k-means objective" in result.stderr
    assert "PASS  1." in result.stdout
    assert "failed: random basis 1 reconstructs the data better" in result.stdout
    assert "failed: the codes do not pick each image's nearest centroid" in result.stdout


def test_identity_checks_reject_wrong_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    basis = random_orthonormal_basis(3, 6, generator)
    assert check_projection_identity(x, basis).passed
    skewed = check_projection_identity(x, basis * 2)
    assert not skewed.passed
    assert "not orthonormal" in "\n".join(skewed.lines())

    assert all(check.passed for check in check_pca_minimal(1.0, [("other", 2.0)]))
    assert not check_pca_minimal(2.0, [("other", 1.0)])[0].passed

    centroids = x[:4]
    labels = torch.cdist(x, centroids).argmin(1)
    codes = torch.nn.functional.one_hot(labels, 4)
    assert check_kmeans_identity(x, centroids, codes).passed
    assert not check_kmeans_identity(x, centroids, codes.roll(1, dims=1)).passed

    assert check_lloyd_monotone([5.0, 4.0, 4.0]).passed
    rising = check_lloyd_monotone([5.0, 4.0, 4.5])
    assert not rising.passed
    assert "FAIL" in rising.lines()[0]
    assert "iteration 2 increased the objective" in "\n".join(rising.lines())


@requires_fashion_mnist
def test_train_autoenc_fashion_mnist(tmp_path):
    # A narrower MLP than the default keeps the epoch over 54,000 images to a few seconds.
    overrides = ["data=fashion_mnist", "model.hidden_dims=[64]", "model.latent_dim=16", *CPU]
    assert_ok(call_script("train-autoenc.py", "init", "weight-0.ckpt", *overrides, cwd=tmp_path))
    result = call_script(
        "train-autoenc.py", "train", "weight-0.ckpt", "weight-1.ckpt", cwd=tmp_path
    )
    assert_ok(result)
    assert "summed over 784 pixels" in result.stdout
    assert_ok(call_script("plot-autoenc.py", "weight-1.ckpt", cwd=tmp_path))
    assert_picture(tmp_path / "weight-1-encoder-filters.png")
    assert_picture(tmp_path / "weight-1-decoder-filters.png")
    pixels = assert_picture(tmp_path / "weight-1-test-reconstructions.png")
    # Two rows of 16 tiles of 28x28 pixels with 1-pixel padding, enlarged twice.
    assert pixels.shape[:2] == (2 * (2 * 29 + 1), 2 * (16 * 29 + 1))


# Rejected arguments: one line on stderr, a non-zero exit, and the input left unchanged.


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, digits_chain) -> Path:
    """A folder with a corrupt checkpoint, a kmeans_ae checkpoint and a valid mlp_ae one."""
    from autoexp.models import KMeansAutoencoder

    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    model = KMeansAutoencoder(image_shape=[1, 8, 8], latent_dim=3)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, folder / "kmeans.ckpt")
    (folder / "weight-1.ckpt").write_bytes((digits_chain / "weight-1.ckpt").read_bytes())
    return folder


BAD_ARGUMENTS = [
    ("train-autoenc.py", ["fit", "a.ckpt", "b.ckpt"], "invalid choice: 'fit'"),
    ("train-autoenc.py", ["train"], "the following arguments are required"),
    ("train-autoenc.py", ["train", "missing.ckpt", "out.ckpt"], "missing.ckpt not found"),
    ("train-autoenc.py", ["train", "corrupt.ckpt", "out.ckpt"], "not a readable checkpoint"),
    ("train-autoenc.py", ["train", "kmeans.ckpt", "out.ckpt"], "is a kmeans_ae checkpoint"),
    ("train-autoenc.py", ["train", "weight-1.ckpt", "weight-1.ckpt"], "is the input checkpoint"),
    (
        "train-autoenc.py",
        ["train", "weight-1.ckpt", "out.ckpt", "model.latent_dim=3"],
        "model.latent_dim=3 (checkpoint: 32)",
    ),
    ("train-autoenc.py", ["init", "out.ckpt", "data=cifar"], "Could not find 'data/cifar'"),
    ("train-autoenc.py", ["init", "out.ckpt", "model=kmeans_ae"], "trains mlp_ae only"),
    ("train-autoenc.py", ["init", "no-folder/out.ckpt"], "does not exist"),
    ("train-autoenc.py", ["init", "out.ckpt", "trainer=ddp"], "the trainer runs 2 processes"),
    (
        "train-autoenc.py",
        ["train", "weight-1.ckpt", "out.ckpt", "+callbacks.lr={_target_:x.Y}"],
        "+callbacks.lr={_target_:x.Y}: the scripts use only callbacks.image_logger",
    ),
    ("pca.py", ["~callbacks"], "~callbacks: the scripts use only callbacks.image_logger"),
    ("plot-autoenc.py", ["~callbacks"], "~callbacks: the scripts use only callbacks.image_logger"),
    (
        "plot-autoenc.py",
        ["callbacks.model_checkpoint.save_top_k=2"],
        "callbacks.model_checkpoint.save_top_k=2: the scripts use only",
    ),
    (
        "train-autoenc.py",
        ["init", "out.ckpt", "trainer=ddp", "--tensorboard", "tb"],
        "the trainer runs 2 processes",
    ),
    (
        "train-autoenc.py",
        ["train", "weight-1.ckpt", "out.ckpt", "trainer=ddp"],
        "the trainer runs 2 processes",
    ),
    ("plot-autoenc.py", ["missing.ckpt"], "missing.ckpt not found"),
    ("plot-autoenc.py", ["corrupt.ckpt"], "not a readable checkpoint"),
    ("plot-autoenc.py", ["kmeans.ckpt"], "is a kmeans_ae checkpoint"),
    ("plot-autoenc.py", ["weight-1.ckpt", "data=fashion_mnist"], "pass data=NAME"),
    ("plot-autoenc.py", ["weight-1.ckpt", "--n-images", "0"], "must be >= 1"),
    ("plot-eigen.py", [], "pca-mean.npy not found; run pca.py"),
    ("plot-centroids.py", [], "kmeans-centroids.npy not found; run kmeans.py"),
    ("pca.py", ["model=mlp_ae"], "PCA always uses linear_pca_ae"),
    ("kmeans.py", ["model=mlp_ae"], "k-means uses kmeans_ae"),
    ("check-identities.py", ["--from-files"], "not found; run pca.py"),
    ("check-identities.py", ["--linear-pca", "kmeans.ckpt"], "is a kmeans_ae checkpoint"),
    ("check-identities.py", ["--linear-pca", "missing.ckpt"], "missing.ckpt not found"),
]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    BAD_ARGUMENTS,
    ids=[f"{script}-{message.split()[0]}" for script, _, message in BAD_ARGUMENTS],
)
def test_scripts_reject_bad_arguments(bad_inputs, script, args, message):
    before = {path.name: path.read_bytes() for path in bad_inputs.iterdir()}
    result = call_script(script, *args, cwd=bad_inputs)
    assert_one_line_error(result, message)
    after = {path.name: path.read_bytes() for path in bad_inputs.iterdir()}
    assert after == before, "a rejected call changed or added files"


def test_plot_autoenc_rejects_empty_folder(tmp_path):
    result = call_script("plot-autoenc.py", cwd=tmp_path)
    assert_one_line_error(result, "no .ckpt file in")


def test_plot_eigen_rejects_corrupt_arrays(tmp_path):
    for name in ("pca-mean.npy", "pca-eigenvalues.npy", "pca-eigenvectors.npy"):
        (tmp_path / name).write_bytes(b"garbage")
    result = call_script("plot-eigen.py", cwd=tmp_path)
    assert_one_line_error(result, "is not a readable .npy file")


def test_train_autoenc_leaves_input_unchanged(digits_chain, tmp_path):
    source = tmp_path / "weight-1.ckpt"
    source.write_bytes((digits_chain / "weight-1.ckpt").read_bytes())
    content = source.read_bytes()
    assert_ok(call_script("train-autoenc.py", "train", "weight-1.ckpt", "next.ckpt", cwd=tmp_path))
    assert source.read_bytes() == content
    assert sorted(path.name for path in tmp_path.iterdir()) == ["next.ckpt", "weight-1.ckpt"]


def test_train_autoenc_stops_on_divergence(tmp_path):
    # A learning rate of 1e6 turns the loss into NaN at the first steps.
    args = ("init", "start.ckpt", "data=digits", "model.optimizer.lr=1e6")
    assert_ok(call_script("train-autoenc.py", *args, cwd=tmp_path))
    content = (tmp_path / "start.ckpt").read_bytes()
    result = call_script("train-autoenc.py", "train", "start.ckpt", "next.ckpt", cwd=tmp_path)
    assert_one_line_error(
        result,
        "train/loss=nan",
        "start.ckpt is unchanged and next.ckpt was not written",
        "lower model.optimizer.lr",
    )
    assert (tmp_path / "start.ckpt").read_bytes() == content
    assert [path.name for path in tmp_path.iterdir()] == ["start.ckpt"]


@pytest.mark.parametrize(
    "script",
    [
        "train-autoenc.py",
        "plot-autoenc.py",
        "pca.py",
        "plot-eigen.py",
        "kmeans.py",
        "plot-centroids.py",
        "check-identities.py",
    ],
)
def test_scripts_help(script, tmp_path):
    assert os.access(SCRIPTS / script, os.X_OK)
    assert (SCRIPTS / script).read_text().startswith("#!/usr/bin/env python3\n")
    result = call_script(script, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage:" in result.stdout
    assert "KEY=VALUE" in result.stdout or "COMMAND" in result.stdout


def test_classical_scripts_write_only_their_files(classical):
    _, folder, _ = classical
    expected = {
        "pca-mean.npy",
        "pca-eigenvalues.npy",
        "pca-eigenvectors.npy",
        "pca.json",
        "pca-mean.png",
        "pca-eigenvectors.png",
        "pca-reconstructions.png",
        "pca-spectrum.png",
        "kmeans-centroids.npy",
        "kmeans-assignments.npy",
        "kmeans.json",
        "kmeans-centroids.png",
        "kmeans-cluster-sizes.png",
        "kmeans-cluster-members.png",
    }
    assert {path.name for path in folder.iterdir()} == expected


@pytest.mark.parametrize("classical", ["digits"], indirect=True)
def test_plot_eigen_tensorboard_images(classical, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, folder, _ = classical
    for path in folder.glob("pca*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert_ok(call_script("plot-eigen.py", "--tensorboard", "tb", cwd=tmp_path))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert tags == {"pca-mean", "pca-eigenvectors", "pca-reconstructions", "pca-spectrum"}
    # The event holds the PNG file's own pixels.
    image = events.Images("pca-eigenvectors")[0]
    pixels = matplotlib.image.imread(tmp_path / "pca-eigenvectors.png")
    assert (image.height, image.width) == pixels.shape[:2]
