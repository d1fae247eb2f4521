"""Alternating timed runs, per-pair ratios, and the machine's matmul throughput."""

import time
from collections.abc import Callable
from typing import Any

import torch


def run_alternating(
    contenders: dict[str, Callable[[int], dict[str, Any]]], repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """Run each contender once per repeat, rotating their order from one repeat to the next.

    Contenders run back to back in one process, so a change in the machine's speed (another
    job starting, clock throttling) hits all of them alike instead of one contender's runs.

    Args:
        contenders: Functions by name; each takes the repeat index and returns its figures.
        repeats: Number of runs of each contender.

    Returns:
        The figures of each contender's runs by name, in repeat order.
    """
    names = list(contenders)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(contenders[name](repeat))
    return results


def column(runs: list[dict[str, Any]], key: str) -> list[float]:
    """Return one figure of every run, in repeat order."""
    return [float(run[key]) for run in runs]


def pair_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Return numerators[i] / denominators[i] for each repeat i.

    Both runs of a pair come from the same repeat, so they ran close together in time.
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(
            f"pair_ratios needs two equally long, non-empty lists; got {len(numerators)} "
            f"and {len(denominators)} values"
        )
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int | None = None, n_calls: int = 8) -> float:
    """Measure the float32 throughput of square matrix products on a device, in GFLOP/s.

    Args:
        device: Where to multiply.
        size: Side of the square matrices; None means 2048 on a CPU and 8192 on a GPU, large
            enough to run at the BLAS library's peak.
        n_calls: Number of timed products, after one untimed warm-up product.

    Returns:
        2 * size**3 * n_calls divided by the wall time of the n_calls products, over 1e9.
    """
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    # The values do not change the time, so they come from the global generator, on the device.
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n_calls):
        torch.mm(a, b, out=out)
    synchronize(device)
    return 2 * size**3 * n_calls / (time.perf_counter() - start) / 1e9
