"""Peak resident memory of an autoexp-train run, measured from a parent process."""

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Seconds between checks for the end of the run.
POLL_INTERVAL_S = 0.1
# Lines of the run's output quoted when it fails.
FAILURE_TAIL_LINES = 40


def peak_rss_mb(overrides: list[str], run_dir: Path, timeout: float = 600) -> float:
    """Run `python -m autoexp.train OVERRIDES` and return its peak resident memory in MB.

    The run is a direct child, reaped with `os.wait4`, which returns the child's own resource
    usage. If the wait ends early (a timeout, Ctrl-C, an error), the child is killed and
    reaped before the exception goes on, so no training run outlives the benchmark.

    Args:
        overrides: Hydra overrides of the run.
        run_dir: The run's output folder. Its parent also receives `memory-run.log`, the run's
            output.
        timeout: Seconds before the run is stopped.

    Returns:
        Peak resident set size in megabytes (1e6 bytes).

    Raises:
        RuntimeError: The run failed or timed out; the message ends with its last output lines.
    """
    command = [
        sys.executable,
        "-m",
        "autoexp.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent}",
    ]
    log_path = run_dir.parent / "memory-run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        status, usage = wait_with_usage(process, timeout)
    finally:
        if process.returncode is None:
            # The time ran out, or Ctrl-C or an error ended the wait.
            process.kill()
            wait_with_usage(process, timeout=None)
    if status is None:
        raise RuntimeError(
            f"the training run for the memory measurement did not end within {timeout:g} s; "
            f"command: {' '.join(command)}\n{output_tail(log_path)}"
        )
    if status != 0:
        raise RuntimeError(
            f"the training run for the memory measurement failed with exit code {status}; "
            f"command: {' '.join(command)}\n{output_tail(log_path)}"
        )
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024
    return usage.ru_maxrss * bytes_per_unit / 1e6


def wait_with_usage(
    process: subprocess.Popen, timeout: float | None
) -> tuple[int | None, resource.struct_rusage | None]:
    """Wait for a child and return its exit code and resource usage.

    Returns (None, None) if it is still running after `timeout` seconds (None: no limit).
    Popen's own wait does not return the usage, so the child is reaped here and its exit code
    stored on `process`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        if deadline is not None and time.monotonic() > deadline:
            return None, None
        time.sleep(POLL_INTERVAL_S)


def output_tail(log_path: Path) -> str:
    """Return the last lines of a run's output file."""
    lines = log_path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-FAILURE_TAIL_LINES:])
