"""Epoch times of the reference mlp_ae trained three ways: autoexp, a plain loop, per-sample.

All three train the same network on the same in-memory training split. The network is
784-512-128-32-128-512-784 for 28x28 images, with ReLU between layers and a sigmoid at the
end. They use batches of 256 and the optimizer of conf/model/mlp_ae.yaml, and each repeat
starts all three from the same seed.
"""

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import Compose, Lambda, ToTensor

from autoexp.bench.timing import matmul_gflops, synchronize
from autoexp.data import ImageDataModule, Split
from autoexp.models.base import reconstruction_loss
from autoexp.train import CONFIG_DIR, make_callbacks, make_trainer, run_settings

BATCH_SIZE = 256
HIDDEN_DIMS = (512, 128)
LATENT_DIM = 32


def reference_overrides(data: str, device: torch.device) -> list[str]:
    """Return the Hydra overrides of one epoch of the reference mlp_ae on a data set.

    Everything else (logger, callbacks, progress bar, logging frequency) stays as the configs
    in conf/ set it for a user's run.
    """
    return [
        f"data={data}",
        "model=mlp_ae",
        f"model.latent_dim={LATENT_DIM}",
        f"model.hidden_dims=[{','.join(str(width) for width in HIDDEN_DIMS)}]",
        f"data.batch_size={BATCH_SIZE}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.max_epochs=1",
        "test=false",
    ]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml as autoexp-train does, with the run's outputs in output_dir.

    The callback that saves a checkpoint on SIGTERM or Ctrl-C is left out: the benchmark's
    fits run in a temporary folder, and the benchmark stops on those signals itself.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "~callbacks.interrupt_checkpoint"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def layer_widths(n_pixels: int) -> list[int]:
    """Return the widths of the reference network from the input to the output."""
    encoder = [n_pixels, *HIDDEN_DIMS, LATENT_DIM]
    return encoder + encoder[-2::-1]


def plain_mlp(n_pixels: int) -> nn.Sequential:
    """Build the reference network as a torch.nn.Sequential on flattened images."""
    widths = layer_widths(n_pixels)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    # No ReLU at the code, as in mlp_ae, and a sigmoid in place of the last one.
    code_relu = len(HIDDEN_DIMS) * 2 + 1
    del layers[code_relu]
    layers[-1] = nn.Sigmoid()
    return nn.Sequential(*layers)


def training_flops(n_pixels: int, n_samples: int) -> dict[str, float]:
    """Count the floating-point operations of one epoch of the reference network.

    Returns:
        `six_n_params`: 6 * parameters * samples, the usual estimate of forward plus backward.
        `matmul_exact`: the multiply-adds (2 FLOPs each) of the forward products, the weight
        gradients and the input gradients of every layer but the first, whose input needs no
        gradient.
    """
    widths = layer_widths(n_pixels)
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    weights = sum(n_in * n_out for n_in, n_out in pairs)
    biases = sum(n_out for _, n_out in pairs)
    first = pairs[0][0] * pairs[0][1]
    return {
        "six_n_params": 6.0 * (weights + biases) * n_samples,
        "matmul_exact": 2.0 * (3 * weights - first) * n_samples,
    }


class EpochTimer(pl.Callback):
    """Records wall times of a fit: each training pass, the first epoch and the whole fit.

    A training pass runs from the start of an epoch to the end of its last training batch.
    That end is taken as the start of validation or the end of the epoch, whichever comes
    first, so the pass includes the work that models do in `on_train_batch_end` after their
    last batch (PCA's eigh, k-means' centroid update). The first epoch runs on to the start
    of the next one or the end of training, so it adds validation, checkpoints and logging.
    """

    def __init__(self):
        self.train_pass_s: list[float] = []
        self.first_epoch_s: float | None = None
        # From the start of the fit (after Trainer setup) to the start of the first epoch.
        self.before_first_epoch_s: float | None = None
        self._fit_start: float | None = None
        self._epoch_start: float | None = None
        self._pass_done = True

    def _now(self, pl_module: pl.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before the model's own on_fit_start, where k-means chooses its centroids.
        self._fit_start = self._now(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self._now(pl_module)
        if self._epoch_start is None and self._fit_start is not None:
            self.before_first_epoch_s = now - self._fit_start
        if self._epoch_start is not None and self.first_epoch_s is None:
            self.first_epoch_s = now - self._epoch_start
        self._epoch_start = now
        self._pass_done = False

    def _end_pass(self, pl_module: pl.LightningModule) -> None:
        if self._pass_done or self._epoch_start is None:
            return
        now = self._now(pl_module)
        self.train_pass_s.append(now - self._epoch_start)
        self._pass_done = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_pass(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_pass(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first_epoch_s is None and self._epoch_start is not None:
            self.first_epoch_s = self._now(pl_module) - self._epoch_start


def fit_with_timer(cfg: DictConfig, datamodule: ImageDataModule, seed: int) -> dict[str, Any]:
    """Fit the model of cfg as autoexp-train does, with an EpochTimer among its callbacks.

    Returns:
        The EpochTimer's figures (`train_pass_s`, `first_epoch_s`), `solve_s` (the time
        before the first epoch, where models initialize, plus all training passes), `fit_s`
        (the whole Trainer.fit call), `epochs` (the number of epochs run) and the fitted
        `model`, moved to the CPU.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    timer = EpochTimer()
    callbacks = [*make_callbacks(cfg, run_settings(cfg, model)), timer]
    trainer = make_trainer(cfg, callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    return {
        "train_pass_s": timer.train_pass_s,
        "first_epoch_s": timer.first_epoch_s,
        "solve_s": (timer.before_first_epoch_s or 0.0) + sum(timer.train_pass_s),
        "fit_s": fit_s,
        "epochs": len(timer.train_pass_s),
        "model": model.cpu(),
    }


class InMemoryMNIST(MNIST):
    """torchvision's MNIST dataset class over a split already in memory.

    `__getitem__` is torchvision's own, as FashionMNIST runs it: one PIL image per index,
    then the transform. Only the constructor differs, so no files are looked for under a
    root folder.

    Args:
        split: The in-memory split to serve.
    """

    def __init__(self, split: Split):
        transform = ToTensor()
        if split.pixel_max != 255:
            # ToTensor maps 255 to 1; digits' white pixels are 16.
            scale = 255.0 / split.pixel_max
            transform = Compose([transform, Lambda(lambda x: x.mul_(scale))])
        VisionDataset.__init__(self, root=None, transform=transform)
        self.train = True
        # (n, H, W) uint8 and (n,) labels, the attributes torchvision's MNIST reads.
        self.data = split.images[:, 0]
        self.targets = split.labels


class TrainingBench:
    """The contenders of the training benchmark, each one epoch of the reference network.

    Args:
        data: Data set name, e.g. "fashion_mnist".
        device: Where to train.
        data_root: Folder searched for the IDX files; None keeps the config's default.
        work_dir: Folder for the run folders of autoexp's fits.
    """

    def __init__(
        self, data: str, device: torch.device, data_root: str | None, work_dir: Path
    ) -> None:
        self.device = device
        self.work_dir = work_dir
        # Fits run so far; each gets its own run folder.
        self.n_fits = 0
        self.overrides = reference_overrides(data, device)
        if data_root is not None:
            self.overrides.append(f"data.root={data_root}")
        cfg = compose_config(self.overrides, work_dir / "compose-check")
        self.optimizer_config = cfg.model.optimizer
        self.datamodule: ImageDataModule = instantiate(cfg.data)
        self.split = self.datamodule.load()["train"]
        self.n_pixels = self.split.images[0].numel()
        self.flops = training_flops(self.n_pixels, len(self.split))
        # The plain loop's floor: the whole split on the device once, batches gathered there.
        self.device_images = self.split.images.to(device)

    def _plain_model(self, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = plain_mlp(self.n_pixels).to(self.device)
        optimizer = instantiate(self.optimizer_config, params=model.parameters())
        return model, optimizer

    def autoexp(self, repeat: int) -> dict[str, Any]:
        """Run Trainer.fit for one epoch with the data module and configs of conf/."""
        self.n_fits += 1
        cfg = compose_config(self.overrides, self.work_dir / f"autoexp-{self.n_fits}")
        run = fit_with_timer(cfg, self.datamodule, seed=repeat)
        return {
            "epoch_s": run["train_pass_s"][0],
            "epoch_with_validation_s": run["first_epoch_s"],
            "fit_s": run["fit_s"],
        }

    def plain(self, repeat: int) -> dict[str, Any]:
        """Run a plain loop over batches indexed from the uint8 split on the device."""
        model, optimizer = self._plain_model(repeat)
        generator = torch.Generator().manual_seed(repeat)
        pixel_max = self.split.pixel_max
        synchronize(self.device)
        start = time.perf_counter()
        order = torch.randperm(len(self.device_images), generator=generator).to(self.device)
        for index in order.split(BATCH_SIZE):
            # The same gather and conversion as autoexp's data module.
            x = self.device_images.index_select(0, index).flatten(1).float().div_(pixel_max)
            loss = reconstruction_loss(x, model(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return {
            "epoch_s": seconds,
            "gflops": self.flops["six_n_params"] / seconds / 1e9,
            "gflops_matmul_exact": self.flops["matmul_exact"] / seconds / 1e9,
        }

    def per_sample(self, repeat: int) -> dict[str, Any]:
        """Run the usual pipeline: torchvision's dataset class, ToTensor, default collate."""
        model, optimizer = self._plain_model(repeat)
        generator = torch.Generator().manual_seed(repeat)
        loader = DataLoader(
            InMemoryMNIST(self.split),
            batch_size=BATCH_SIZE,
            shuffle=True,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        synchronize(self.device)
        start = time.perf_counter()
        for images, _ in loader:
            x = images.to(self.device, non_blocking=True).flatten(1)
            loss = reconstruction_loss(x, model(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize(self.device)
        return {"epoch_s": time.perf_counter() - start}

    def matmul(self, repeat: int) -> dict[str, Any]:
        """Measure the device's float32 matmul throughput next to the training runs."""
        return {"gflops": matmul_gflops(self.device)}

    def contenders(self) -> dict[str, Any]:
        return {
            "autoexp": self.autoexp,
            "plain": self.plain,
            "per_sample": self.per_sample,
            "matmul": self.matmul,
        }
