"""Process-group clean-up at exit, in a real subprocess with a gloo process group."""

import subprocess
import sys

# The check is registered before autoexp is imported, so atexit runs it after autoexp's handler.
SCRIPT = """
import atexit
import sys

import torch.distributed as dist

atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
if sys.argv[2] == "import":
    import autoexp  # noqa: F401
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
print("initialized:", dist.is_initialized())
"""


def run_script(tmp_path, mode: str) -> subprocess.CompletedProcess:
    store = tmp_path / f"store-{mode}"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(store), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_process_group_destroyed_at_exit(tmp_path):
    result = run_script(tmp_path, "import")
    assert result.returncode == 0, result.stderr
    assert "initialized: True" in result.stdout
    assert "initialized at exit: False" in result.stdout


def test_process_group_kept_without_autoexp(tmp_path):
    # Shows that the check above can fail: without autoexp, torch leaves the group in place.
    result = run_script(tmp_path, "plain")
    assert result.returncode == 0, result.stderr
    assert "initialized at exit: True" in result.stdout
