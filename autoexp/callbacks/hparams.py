"""The run's key settings in TensorBoard's HPARAMS tab, next to its final metrics."""

import pytorch_lightning as pl
from torch.utils.tensorboard.summary import hparams

from autoexp.callbacks.images import tensorboard_writer

# Scalar tags that the HPARAMS tab shows for each run; their last logged values are the final
# ones. Lightning's own log_hyperparams would also log these at step 0, so it is not used.
HPARAM_METRICS = ("val/loss", "val/mse", "test/loss", "test/mse")


class HparamsLogger(pl.Callback):
    """Writes the HPARAMS summary (model, data, latent_dim, seed and more) at the start of fit.

    Args:
        settings: The settings to list; train.py fills these in from the config.
    """

    def __init__(self, settings: dict | None = None):
        self.settings = dict(settings or {})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        writer = tensorboard_writer(trainer)
        if not trainer.is_global_zero or writer is None or not self.settings:
            return
        metric_dict = dict.fromkeys(HPARAM_METRICS, 0.0)
        experiment, session_start, session_end = hparams(self.settings, metric_dict)
        file_writer = writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
