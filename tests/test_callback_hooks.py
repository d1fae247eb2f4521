"""Per-batch callback hooks that are Lightning's no-ops are skipped, and the others still run."""

from unittest import mock

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import LambdaCallback

from autoexp.callbacks.hooks import BATCH_HOOKS, skip_unused_batch_hooks
from autoexp.train import make_trainer


class BackwardCounter(pl.Callback):
    """Counts on_after_backward calls and overrides no other per-batch hook."""

    def __init__(self):
        self.n_backward = 0

    def on_after_backward(self, trainer, pl_module):
        self.n_backward += 1


class CounterSubclass(BackwardCounter):
    pass


def test_skip_unused_batch_hooks_keeps_overrides():
    counter = CounterSubclass()
    lambda_callback = LambdaCallback(on_train_batch_end=lambda *args: None)
    skip_unused_batch_hooks([counter, lambda_callback])

    assert callable(counter.on_after_backward), "an inherited override was removed"
    assert callable(lambda_callback.on_train_batch_end), "an instance hook was removed"
    for name in BATCH_HOOKS:
        if name != "on_after_backward":
            assert getattr(counter, name) is None, name
        if name != "on_train_batch_end":
            assert getattr(lambda_callback, name) is None, name
    # The class keeps its methods, so other instances are unchanged.
    assert callable(pl.Callback.on_before_backward)
    assert callable(BackwardCounter().on_before_backward)


def test_skip_unused_batch_hooks_leaves_other_objects():
    spec_mock = mock.Mock(spec=pl.Callback)
    other = object()
    skip_unused_batch_hooks([spec_mock, other])
    assert "on_before_backward" not in vars(spec_mock)
    assert callable(spec_mock.on_before_backward)


def test_fit_skips_unused_batch_hooks(train_config):
    cfg = train_config("trainer.max_epochs=1", "trainer.enable_progress_bar=true")
    counter = BackwardCounter()
    trainer = make_trainer(cfg, [counter])
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    trainer.fit(model, datamodule=datamodule)

    assert trainer.global_step > 0
    assert counter.n_backward == trainer.global_step
    assert counter.on_before_backward is None
    # Lightning's own callbacks are covered too, with the methods they define kept.
    bar = trainer.progress_bar_callback
    assert bar is not None
    assert callable(bar.on_train_batch_end)
    assert bar.on_before_zero_grad is None
    assert callable(trainer.checkpoint_callback.on_train_batch_end)
    assert trainer.checkpoint_callback.on_after_backward is None
