"""The checkpoint written at the end of every epoch, `checkpoints/last.ckpt`."""

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Rewrites `<dirpath>/last.ckpt` at the end of every epoch.

    pytorch-lightning 2.6's `save_last` rewrites last.ckpt only in epochs that also saved a new
    best checkpoint, so after an epoch without improvement it contains an older epoch. This
    callback saves without a monitor instead. Its own class gives it a state key of its own, so
    it can sit next to a ModelCheckpoint with any settings, `monitor=null` included.

    Args:
        dirpath: Folder of the checkpoint.
        filename: File name without the `.ckpt` suffix.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
        )
