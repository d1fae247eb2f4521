"""Peak resident memory of an autoexp-train run, measured from a parent process."""

import subprocess
import sys
from pathlib import Path

# Runs the command given as its arguments and prints the largest peak resident set size of
# its child processes, which is the training run (DataLoader workers are off by default).
_MEASURE = (
    "import resource, subprocess, sys\n"
    "result = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "if result.returncode != 0:\n"
    "    sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])\n"
    "    sys.exit(result.returncode)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mb(overrides: list[str], run_dir: Path, timeout: float = 600) -> float:
    """Run `python -m autoexp.train OVERRIDES` and return its peak resident memory in MB.

    Args:
        overrides: Hydra overrides of the run.
        run_dir: The run's output folder.
        timeout: Seconds before the run is stopped.

    Returns:
        Peak resident set size in megabytes (1e6 bytes).

    Raises:
        RuntimeError: The run failed; the message ends with its last output lines.
    """
    command = [
        sys.executable,
        "-m",
        "autoexp.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent}",
    ]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the training run for the memory measurement failed with exit code "
            f"{result.returncode}; command: {' '.join(command)}\n{result.stderr}"
        )
    max_rss = int(result.stdout.strip().splitlines()[-1])
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024
    return max_rss * bytes_per_unit / 1e6
