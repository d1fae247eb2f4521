"""Peak resident memory of an autoexp-train run, measured from a parent process."""

import subprocess
import sys
from pathlib import Path

# Lines of the run's output quoted when it fails.
FAILURE_TAIL_LINES = 40
# Seconds that the measuring process may take to end its run after a stop.
STOP_WAIT_S = 30

# Runs the command after its first argument, writing the command's output to the file named by
# that argument, and prints the peak resident set size of its children: the training run
# (DataLoader workers are off by default). It sits between the benchmark and the run because
# Linux adds a process's peak before exec to the peak of the program it execs, so a run started
# by the benchmark itself would count the benchmark's memory. SIGTERM or SIGINT to it, and the
# end of the benchmark's process, end the run too.
_MEASURE = """\
import ctypes, os, resource, signal, subprocess, sys
run = None
def stop(signum, frame):
    # The handler does not wait, because the main code may be inside run.wait(), which holds
    # a lock. The init process reaps the killed run after this process exits.
    if run is not None:
        run.kill()
    os._exit(128 + signum)
for signum in (signal.SIGTERM, signal.SIGINT):
    if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, stop)
try:
    # PR_SET_PDEATHSIG: SIGTERM when the parent ends.
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
except (OSError, AttributeError):
    pass
with open(sys.argv[1], "w") as log:
    run = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
code = run.wait()
if code != 0:
    sys.exit(code)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(overrides: list[str], run_dir: Path, timeout: float = 600) -> float:
    """Run `python -m autoexp.train OVERRIDES` and return its peak resident memory in MB.

    If the wait ends early (a timeout, Ctrl-C, SIGTERM, an error), the run is ended before
    the exception goes on, so no training run outlives the benchmark.

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
    process = subprocess.Popen(
        [sys.executable, "-c", _MEASURE, str(log_path), *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        raise RuntimeError(
            f"the training run for the memory measurement timed out after {timeout:g} s; "
            f"command: {' '.join(command)}\n{output_tail(log_path)}"
        ) from None
    except BaseException:
        stop(process)
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"the training run for the memory measurement failed with exit code "
            f"{process.returncode}; command: {' '.join(command)}\n{output_tail(log_path)}\n"
            f"{stderr}"
        )
    max_rss = int(stdout.strip().splitlines()[-1])
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024
    return max_rss * bytes_per_unit / 1e6


def stop(process: subprocess.Popen) -> None:
    """Terminate the measuring process, which kills its run first.

    The process is killed if it has not ended after STOP_WAIT_S seconds.
    """
    process.terminate()
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def output_tail(log_path: Path) -> str:
    """Return the last lines of a run's output file."""
    if not log_path.is_file():
        return ""
    lines = log_path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-FAILURE_TAIL_LINES:])
