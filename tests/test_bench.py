"""autoexp-bench's plumbing on digits with one repeat; the timings themselves are not checked."""

import contextlib
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

from autoexp.bench import cli, report
from autoexp.bench.memory import peak_rss_mb
from autoexp.bench.timing import pair_ratios, run_alternating
from autoexp.bench.training import (
    InMemoryMNIST,
    layer_widths,
    plain_mlp,
    reference_overrides,
    training_flops,
)
from autoexp.data.idx import write_idx
from autoexp.data.sources import IDX_FILE_STEMS
from autoexp.data.splits import Split
from autoexp.models import MLPAutoencoder

SECTION_KEYS = {
    "training": {"n_images", "batch_size", "layer_widths", "optimizer", "flops_per_epoch", "runs"},
    "pca": {"components", "runs", "median", "pca_error_rel_diff_covariance_eigh"},
    "kmeans": {"clusters", "runs", "median"},
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str, str]:
    """One run of autoexp-bench on digits; returns its JSON, its page and its stdout."""
    folder = tmp_path_factory.mktemp("bench")
    json_path, page_path = folder / "bench.json", folder / "benchmarks.md"
    argv = ["--data", "digits", "--repeats", "1", "--json", str(json_path)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main([*argv, "--markdown", str(page_path)]) == 0
    return json.loads(json_path.read_text()), page_path.read_text(), stdout.getvalue()


def test_bench_json_has_every_ratio(bench_run):
    results, _, _ = bench_run
    assert set(results["ratios"]) == set(cli.RATIO_KEYS)
    for key, value in results["ratios"].items():
        assert isinstance(value, float), key
        assert math.isfinite(value), key
        assert value > 0, key


def test_bench_json_has_ratio_ranges(bench_run):
    results, _, _ = bench_run
    assert set(results["ratio_ranges"]) == set(cli.RATIO_KEYS)
    for key, (lowest, highest) in results["ratio_ranges"].items():
        # One repeat: the range is that repeat's value, which is also the median.
        assert lowest == results["ratios"][key], key
        assert highest == results["ratios"][key], key


def test_bench_json_has_sections(bench_run):
    results, _, _ = bench_run
    assert results["data"] == "digits"
    assert results["data_folder"] is None
    assert results["repeats"] == 1
    assert results["peak_rss_mb"] > 0
    for section, keys in SECTION_KEYS.items():
        assert keys <= set(results[section]), section
    assert results["training"]["runs"]["autoexp"]["epoch_s"][0] > 0
    assert results["pca"]["runs"]["sklearn_full"]["error"][0] > 0
    assert results["kmeans"]["runs"]["autoexp"]["iterations"][0] >= 1
    assert set(results["targets"]) == set(report.TARGETS)
    for key in ("cpu", "cpu_count", "torch", "torch_threads", "load_average_1min"):
        assert key in results["machine"], key


def test_bench_prints_and_writes_tables(bench_run):
    results, page, stdout = bench_run
    assert "| `train_vs_plain`" in stdout
    assert "on digits, device cpu, 1 repeat;" in stdout
    assert "The targets are set for fashion_mnist; on digits" in stdout
    assert "autoexp-bench --data digits --repeats 1" in page
    assert "| `kmeans_inertia_vs_sklearn`" in page
    assert results["machine"]["cpu"] in page


def test_bench_falls_back_to_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("autoexp.data.sources.EXTRA_SEARCH_DIRS", {"fashion_mnist": []})
    assert cli.resolve_data("fashion_mnist", str(tmp_path)) == "digits"
    notice = capsys.readouterr().err
    assert "fashion_mnist not found; running on digits instead" in notice
    assert f"  {tmp_path}\n" in notice
    assert f"--data-root={tmp_path} does not contain them" in notice
    assert "data.download" not in notice
    assert "Run apt-get install dataset-fashion-mnist" in notice


def test_bench_rejects_missing_mnist(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.resolve_data("mnist", str(tmp_path))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("autoexp-bench: error: MNIST IDX files not found.")
    assert f"--data-root={tmp_path} does not contain them" in message


def test_bench_records_data_folder(tmp_path, monkeypatch):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for key, stem in IDX_FILE_STEMS.items():
        shape = (3, 28, 28) if key.endswith("images") else (3,)
        write_idx(folder / stem, torch.zeros(shape, dtype=torch.uint8))
    # A relative --data-root is recorded as an absolute path.
    monkeypatch.chdir(tmp_path)
    assert cli.data_folder("mnist", "MNIST/..") == str(folder.resolve())
    assert cli.data_folder("digits", None) is None
    heading = report.run_heading(
        {"data": "mnist", "data_folder": "/x", "device": "cpu", "repeats": 1}
    )
    assert heading.startswith("autoexp-bench on mnist (IDX files in /x), device cpu, 1 repeat;")


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--data-root", "missing-folder", "--data-root=missing-folder is not a folder"),
        ("--json", ".", "--json=. is a folder; choose a writable path"),
        ("--markdown", "/dev/null/page.md", "cannot be created: /dev/null is not a folder"),
        ("--json", "/dev/null", "--json=/dev/null is not a regular file"),
    ],
)
def test_bench_rejects_bad_paths(tmp_path, monkeypatch, capsys, option, value, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args([option, value])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_bench_rejects_one_path_for_both(tmp_path, capsys, spelling):
    json_path = tmp_path / "out"
    markdown_path = {
        "same": json_path,
        "dotdot": tmp_path / "sub" / ".." / "out",
        "symlink": tmp_path / "link",
        "hardlink": tmp_path / "hard",
    }[spelling]
    json_path.write_text("{}")
    (tmp_path / "link").symlink_to(json_path)
    (tmp_path / "hard").hardlink_to(json_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--json", str(json_path), "--markdown", str(markdown_path)])
    assert exit_info.value.code == 2
    assert "name the same file; give two paths" in capsys.readouterr().err


def test_bench_rejects_skipping_every_part(capsys):
    argv = [arg for part in cli.PARTS for arg in ("--skip", part)]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert "--skip leaves no part to run" in capsys.readouterr().err


def test_bench_rejects_damaged_idx_file(tmp_path, capsys):
    for key, stem in IDX_FILE_STEMS.items():
        shape = (3, 28, 28) if key.endswith("images") else (3,)
        write_idx(tmp_path / stem, torch.zeros(shape, dtype=torch.uint8))
    damaged = tmp_path / IDX_FILE_STEMS["train_labels"]
    damaged.write_bytes(b"\x1f\x8b" + b"not gzip data")
    with pytest.raises(SystemExit) as exit_info:
        cli.resolve_data("mnist", str(tmp_path))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith(f"autoexp-bench: error: {damaged}")
    assert "Traceback" not in message


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoexp.bench.cli", "--data", "digits", "--repeats", "1", *args]


def bench_processes(marker: str) -> list[int]:
    """Return the running processes (not zombies) whose command line contains marker."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and marker.encode() in command:
            found.append(int(entry.name))
    return found


def start_bench(args: list[str], tmp_path, **popen_options) -> subprocess.Popen:
    """Start autoexp-bench on digits with its temporary folders in tmp_path / "tmp"."""
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    env = {**os.environ, "TMPDIR": str(temp_root)}
    return subprocess.Popen(
        bench_command(*args),
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        **popen_options,
    )


def read_until(process: subprocess.Popen, line_start: str) -> list[str]:
    """Return the stderr lines of process up to the first that starts with line_start."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith(line_start):
            break
    return seen


def stop_bench_at(
    args: list[str], line_start: str, signals: list[int], tmp_path, gap_s: float = 0.05
) -> tuple[int, str]:
    """Start autoexp-bench, send signals to its process alone after a progress line, gap_s
    seconds apart, and return its exit code and stderr."""
    process = start_bench(args, tmp_path)
    seen = read_until(process, line_start)
    for signum in signals:
        process.send_signal(signum)
        time.sleep(gap_s)
    try:
        rest = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    return process.returncode, "".join(seen) + rest


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGTERM], [signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]],
    ids=["sigterm", "sigint", "sigterm-twice"],
)
def test_bench_stop_in_training_leaves_nothing(tmp_path, signals):
    signum = signals[0]
    json_path = tmp_path / "out.json"
    code, stderr = stop_bench_at(
        ["--json", str(json_path)], "autoexp-bench: training: warm-up round", signals, tmp_path
    )
    assert code == 128 + signum, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"autoexp-bench: stopped by {signal.Signals(signum).name}")
    assert "no file was written" in last_line
    assert "Traceback" not in stderr
    # No resume command for a checkpoint in the deleted temporary folder.
    assert "Resume with" not in stderr
    assert not json_path.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bench_stop_by_two_pending_signals(tmp_path):
    # Sent together, both can be pending when Python runs its handlers, SIGINT first.
    code, stderr = stop_bench_at(
        [], "autoexp-bench: training: warm-up round", [signal.SIGTERM, signal.SIGINT], tmp_path, 0
    )
    assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM), stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("autoexp-bench: stopped by SIG")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_peak_rss_leaves_out_parent_memory(tmp_path):
    # Written to, so the pages are resident in this process.
    ballast = bytearray(b"\x01") * 1_500_000_000
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    overrides = reference_overrides("digits", torch.device("cpu"))
    peak_mb = peak_rss_mb(overrides, tmp_path / "run")
    assert len(ballast) == 1_500_000_000
    assert parent_mb > 1500
    # A run started by this process itself would report at least parent_mb.
    assert 100 < peak_mb < parent_mb - 500


MEMORY_ONLY = ["--skip", "training", "--skip", "pca", "--skip", "kmeans"]


def test_bench_stop_ends_memory_run(tmp_path):
    code, stderr = stop_bench_at(MEMORY_ONLY, "autoexp-bench: memory:", [signal.SIGINT], tmp_path)
    assert code == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr
    # The training run of the memory measurement ended with the benchmark, and its folder went
    # with the temporary folder.
    assert bench_processes(str(tmp_path / "tmp")) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bench_killed_ends_memory_run(tmp_path):
    process = start_bench(MEMORY_ONLY, tmp_path)
    read_until(process, "autoexp-bench: memory:")
    process.kill()
    process.communicate(timeout=60)
    # The measuring process gets SIGTERM when the benchmark dies, and ends the run.
    marker = str(tmp_path / "tmp")
    deadline = time.monotonic() + 60
    while bench_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bench_processes(marker) == []


def test_bench_keeps_inherited_ignored_sigint(tmp_path):
    # As under nohup or in a script's background job: SIGINT to the group is ignored.
    process = start_bench(
        MEMORY_ONLY,
        tmp_path,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    read_until(process, "autoexp-bench: memory:")
    # The measuring process has set up its signals once it has started the training run.
    marker = str(tmp_path / "tmp")
    deadline = time.monotonic() + 60
    while len(bench_processes(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    try:
        stderr = process.communicate(timeout=300)[1]
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by" not in stderr


def test_output_path_accepts_new_folders(tmp_path):
    assert cli.output_path_problem(tmp_path / "new" / "out.json") is None
    assert list(tmp_path.iterdir()) == []


def test_bench_rejects_zero_repeats(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--repeats", "0"])
    assert "--repeats=0 must be at least 1" in capsys.readouterr().err


def test_run_alternating_rotates_order():
    calls = []
    contenders = {name: (lambda r, name=name: calls.append((r, name)) or {}) for name in "abc"}
    results = run_alternating(contenders, 3)
    assert [name for _, name in calls] == list("abcbcacab")
    assert {name: len(runs) for name, runs in results.items()} == {"a": 3, "b": 3, "c": 3}


def test_pair_ratios_per_repeat():
    assert pair_ratios([2.0, 9.0, 3.0], [1.0, 3.0, 1.0]) == [2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="equally long"):
        pair_ratios([1.0], [1.0, 2.0])


def test_summarize_pairs_gives_median_and_range():
    ratios, ranges = cli.summarize_pairs({"train_vs_plain": [1.3, 1.05, 1.1, 0.98]})
    assert ratios["train_vs_plain"] == pytest.approx(1.075)
    assert ranges["train_vs_plain"] == [0.98, 1.3]
    # Parts that did not run keep their keys, with None.
    assert set(ratios) == set(ranges) == set(cli.RATIO_KEYS)
    assert ratios["pca_vs_sklearn_full"] is None
    assert ranges["pca_vs_sklearn_full"] is None


def test_ratio_table_shows_ranges():
    checks = report.check_targets({"train_vs_plain": 1.075, "per_sample_vs_train": 3.0})
    ranges = {"train_vs_plain": [0.98, 1.3], "per_sample_vs_train": [3.0, 3.0]}
    rows = {
        line.split("|")[1].strip(): line
        for line in report.ratio_table(checks, ranges).splitlines()
    }
    assert "| 0.98 to 1.3 " in rows["`train_vs_plain`"]
    assert "to" not in rows["`per_sample_vs_train`"].split("|")[4]
    assert rows["`peak_rss_mb`"].split("|")[4].strip() == "-"


def test_plain_mlp_matches_mlp_ae():
    reference = MLPAutoencoder(image_shape=(1, 28, 28), latent_dim=32, hidden_dims=[512, 128])
    plain = plain_mlp(784)
    reference_shapes = [tuple(p.shape) for p in reference.parameters()]
    assert [tuple(p.shape) for p in plain.parameters()] == reference_shapes
    values = reference.state_dict().values()
    plain.load_state_dict(dict(zip(plain.state_dict(), values, strict=True)))
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(plain(x.flatten(1)), reference(x).flatten(1))


@pytest.mark.parametrize("pixel_max", [255, 16])
def test_per_sample_dataset_uses_torchvision(pixel_max):
    images = torch.randint(0, pixel_max + 1, (6, 1, 8, 8), dtype=torch.uint8)
    dataset = InMemoryMNIST(Split(images, torch.arange(6) % 3, pixel_max))
    # Each item goes through torchvision's own MNIST.__getitem__, PIL image and ToTensor.
    assert type(dataset).__getitem__ is MNIST.__getitem__
    assert len(dataset) == 6
    x, label = dataset[4]
    assert label == 1
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, images[4].float() / pixel_max)


def test_training_flops_counts():
    assert layer_widths(784) == [784, 512, 128, 32, 128, 512, 784]
    n_parameters = sum(p.numel() for p in plain_mlp(784).parameters())
    flops = training_flops(784, 10)
    assert flops["six_n_params"] == 6 * n_parameters * 10
    weights = 784 * 512 + 512 * 128 + 128 * 32
    assert flops["matmul_exact"] == 2 * (3 * 2 * weights - 784 * 512) * 10


def test_check_targets_sides():
    checks = report.check_targets({"train_vs_plain": 1.2, "per_sample_vs_train": 3.0})
    assert checks["train_vs_plain"]["met"] is False
    assert checks["per_sample_vs_train"]["met"] is True
    assert checks["peak_rss_mb"]["met"] is None


def test_import_sets_openblas_thread_timeout_unless_set():
    code = "import autoexp, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "20"
    env["OPENBLAS_THREAD_TIMEOUT"] = "8"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "8"
