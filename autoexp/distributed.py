"""Process-level clean-up for DDP runs."""

import logging
import sys

log = logging.getLogger(__name__)


def destroy_process_group_at_exit() -> None:
    """Destroy the default torch.distributed process group if the process still has one.

    autoexp registers this with atexit when it is imported, so it runs in every process that
    imports autoexp, the DDP workers included, before the interpreter shuts down. Otherwise a
    gloo worker thread may release the tensors of a finished collective during interpreter
    shutdown. That thread then calls std::terminate, and the process aborts with "terminate
    called without an active exception". Lightning 2.6 destroys the group at exit only for NCCL.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    log.debug("Destroying the torch.distributed process group before exit")
    distributed.destroy_process_group()
