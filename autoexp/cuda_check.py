"""The setting that keeps torch.cuda.is_available() cheap on machines without NVIDIA's NVML."""

import ctypes
import logging
import os

import torch

log = logging.getLogger(__name__)

NVML_CHECK_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"


def drop_nvml_check_without_nvml() -> bool:
    """Unset PYTORCH_NVML_BASED_CUDA_CHECK where NVML's library cannot be loaded.

    Lightning sets the variable when it is imported, so that torch.cuda.is_available() queries
    NVML instead of initializing CUDA. Until CUDA is initialized, torch then loads
    libnvidia-ml.so.1 anew on each call, and torch's Adam and several other optimizers call it
    on every step. Where the library is missing, as on machines without an NVIDIA driver, each
    call searched for it in vain and then queried the CUDA runtime anyway: 0.09 ms a call on a
    2-core CPU, 0.002 ms without the variable. Unsetting it there does not change the value
    that torch.cuda.is_available() returns.

    ROCm builds of torch query AMD's library in place of NVML, so they keep the variable.

    Returns:
        Whether the variable was unset.
    """
    if os.environ.get(NVML_CHECK_VARIABLE) != "1" or torch.version.hip:
        return False
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        del os.environ[NVML_CHECK_VARIABLE]
        log.debug("Unset %s: %s cannot be loaded", NVML_CHECK_VARIABLE, NVML_LIBRARY)
        return True
    return False
