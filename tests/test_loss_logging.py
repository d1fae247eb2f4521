"""Training-loss logging of AutoencoderModule: train/loss per written step, train/loss_epoch,
and the progress bar's refresh rate."""

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from autoexp.data import ImageDataModule
from autoexp.models import MLPAutoencoder


class BatchLosses(pl.Callback):
    """Records the loss and the batch size of every training step."""

    def __init__(self):
        self.losses: list[float] = []
        self.sizes: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.sizes.append(len(batch[0]))


def fit_digits(
    tmp_path, batch_size: int, log_every_n_steps: int, progress_bar: bool = False
) -> tuple[pl.Trainer, BatchLosses]:
    pl.seed_everything(0, verbose=False)
    datamodule = ImageDataModule("digits", batch_size=batch_size)
    model = MLPAutoencoder(image_shape=(1, 8, 8), latent_dim=4, hidden_dims=[16])
    losses = BatchLosses()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[losses],
        log_every_n_steps=log_every_n_steps,
        enable_progress_bar=progress_bar,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, losses


def test_train_loss_epoch_weighted_mean(tmp_path):
    # 1,294 training images in batches of 500: two full batches and one of 294.
    trainer, losses = fit_digits(tmp_path, batch_size=500, log_every_n_steps=1)
    assert losses.sizes == [500, 500, 294]
    expected = sum(loss * n for loss, n in zip(losses.losses, losses.sizes, strict=True)) / 1294
    assert trainer.callback_metrics["train/loss_epoch"].item() == pytest.approx(expected, rel=1e-5)


def test_train_loss_logged_on_written_steps(tmp_path):
    # 1,294 images in batches of 64 give 21 steps; the CSV logger writes steps 4, 9, 14, 19.
    trainer, losses = fit_digits(tmp_path, batch_size=64, log_every_n_steps=5)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    written = [dict(zip(header, row.split(","), strict=True)) for row in rows[1:]]
    steps = [int(row["step"]) for row in written if row["train/loss"]]
    assert steps == [4, 9, 14, 19]
    values = [float(row["train/loss"]) for row in written if row["train/loss"]]
    assert values == pytest.approx([losses.losses[step] for step in steps], rel=1e-5)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(losses.losses[19])


def test_progress_bar_refreshes_with_logs(tmp_path):
    trainer, _ = fit_digits(tmp_path, batch_size=64, log_every_n_steps=5, progress_bar=True)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    assert trainer.progress_bar_callback.refresh_rate == 5


def test_progress_bar_off_stays_off(tmp_path):
    trainer, _ = fit_digits(tmp_path, batch_size=64, log_every_n_steps=5, progress_bar=False)
    assert trainer.progress_bar_callback is None
