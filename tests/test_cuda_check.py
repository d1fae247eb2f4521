"""The CUDA availability check that autoexp leaves torch after Lightning's import."""

import ctypes
import json
import os
import subprocess
import sys

import torch

from autoexp.cuda_check import NVML_CHECK_VARIABLE, NVML_LIBRARY, drop_nvml_check_without_nvml

# Imports Lightning first, as a user's script might, then autoexp, and prints what changed.
REPORT_SCRIPT = f"""
import json, os
import pytorch_lightning, torch
before = (os.environ.get("{NVML_CHECK_VARIABLE}"), torch.cuda.is_available())
import autoexp
after = (os.environ.get("{NVML_CHECK_VARIABLE}"), torch.cuda.is_available())
print(json.dumps({{"before": before, "after": after}}))
"""


def nvml_loads() -> bool:
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def test_import_drops_check_without_nvml():
    env = {key: value for key, value in os.environ.items() if key != NVML_CHECK_VARIABLE}
    result = subprocess.run(
        [sys.executable, "-c", REPORT_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.splitlines()[-1])
    variable_before, available_before = report["before"]
    variable_after, available_after = report["after"]

    assert variable_before == "1"
    assert variable_after == ("1" if nvml_loads() or torch.version.hip else None)
    assert available_after == available_before


def test_drop_keeps_other_values(monkeypatch):
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "0")
    assert not drop_nvml_check_without_nvml()
    assert os.environ[NVML_CHECK_VARIABLE] == "0"


def test_drop_unsets_without_library(monkeypatch):
    def missing_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(ctypes, "CDLL", missing_library)
    assert drop_nvml_check_without_nvml()
    assert NVML_CHECK_VARIABLE not in os.environ


def test_drop_keeps_variable_on_rocm(monkeypatch):
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert not drop_nvml_check_without_nvml()
    assert os.environ[NVML_CHECK_VARIABLE] == "1"


def test_drop_keeps_variable_with_library(monkeypatch):
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    assert not drop_nvml_check_without_nvml()
    assert os.environ[NVML_CHECK_VARIABLE] == "1"
