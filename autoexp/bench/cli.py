"""`autoexp-bench`: time autoexp against a plain PyTorch loop, per-sample loading and sklearn."""

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from autoexp.bench import report
from autoexp.bench.memory import peak_rss_mb
from autoexp.bench.solvers import KMEANS_CLUSTERS, PCA_COMPONENTS, SolverBench
from autoexp.bench.timing import column, pair_ratios, run_alternating
from autoexp.bench.training import BATCH_SIZE, TrainingBench, layer_widths, reference_overrides
from autoexp.callbacks.safety import TrainingInterrupted
from autoexp.data import load_splits
from autoexp.data.sources import SUPPLY_HEADING, find_idx_files

PARTS = ("training", "pca", "kmeans", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="autoexp-bench",
        description=(
            "Time autoexp against a plain PyTorch loop, the per-sample DataLoader pipeline and "
            "scikit-learn, alternating the contenders in one process. Prints a table and "
            "optionally writes the figures as JSON and the table as a Markdown page."
        ),
    )
    parser.add_argument(
        "--data",
        default="fashion_mnist",
        choices=("fashion_mnist", "mnist", "digits"),
        help="data set; fashion_mnist falls back to digits, with a notice, when its files are "
        "missing (default: %(default)s)",
    )
    parser.add_argument(
        "--data-root", default=None, help="folder searched for the IDX files (default: data.root)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each contender (default: 5)"
    )
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default: cpu)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="write the tables as a Markdown page here"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=PARTS,
        help="leave out a part of the benchmark; may be repeated",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be at least 1")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        parser.error(
            f"--data-root={args.data_root} is not a folder; pass the folder that contains the "
            "IDX files, or leave the option out to search the default folders"
        )
    if len(set(args.skip)) == len(PARTS):
        parser.error(
            f"--skip leaves no part to run ({', '.join(PARTS)} are all skipped); skip fewer parts"
        )
    if args.json is not None and args.markdown is not None:
        # resolve() follows symbolic links and ".."; samefile also matches hard links.
        same = args.json.resolve() == args.markdown.resolve()
        if not same and args.json.exists() and args.markdown.exists():
            same = os.path.samefile(args.json, args.markdown)
        if same:
            parser.error(
                f"--json={args.json} and --markdown={args.markdown} name the same file; "
                "give two paths"
            )
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None and (problem := output_path_problem(path)):
            # Checked before the run, which takes minutes, so that its figures are not lost.
            parser.error(f"{option}={path} {problem}; choose a writable path")
    return args


def output_path_problem(path: Path) -> str | None:
    """Return why a file cannot be written at path, or None if it can.

    Missing parent folders are created later, so a file is created and removed at once in the
    nearest existing one. An existing file is opened for appending, which leaves it unchanged.
    """
    if path.is_dir():
        return "is a folder"
    if path.exists() and not path.is_file():
        # A FIFO or a device: opening it could block, and it would not keep the file.
        return "is not a regular file"
    folder = path.parent.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot be created: {folder} is not a folder"
    try:
        if path.exists():
            with open(path, "a"):
                pass
        else:
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as error:
        return f"cannot be written ({error.strerror})"
    return None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        print(
            "autoexp-bench: error: --device cuda requested but torch.cuda.is_available() is "
            "False; run on a machine with a CUDA GPU or pass --device cpu",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return torch.device(name)


def missing_data_message(error: FileNotFoundError, data_root: str | None) -> str:
    """Return the lines of a missing-IDX-files error that name the folders and files, with
    autoexp-bench's option in place of the training command's settings."""
    lines = str(error).splitlines()
    if SUPPLY_HEADING in lines:
        heading = lines.index(SUPPLY_HEADING)
        # The Debian package applies to autoexp-bench too, the training settings do not.
        apt_lines = [
            line.strip().removeprefix("- ") for line in lines[heading:] if "apt-get" in line
        ]
        lines = lines[:heading] + [line[0].upper() + line[1:] for line in apt_lines]
    if data_root is None:
        lines.append("Pass --data-root FOLDER, a folder that contains them.")
    else:
        lines.append(f"--data-root={data_root} does not contain them; pass a folder that does.")
    return "\n".join(lines)


def resolve_data(name: str, data_root: str | None) -> str:
    """Return the data set to run on: `name`, or digits where fashion_mnist is missing.

    The IDX files are read here, so a damaged one stops the run before it starts.

    Raises:
        SystemExit: mnist's IDX files are missing, or a file is damaged (exit code 2).
    """
    if name == "digits":
        return name
    try:
        load_splits(name, root=data_root or "data", test_fraction=None)
    except ValueError as error:
        # The message names the file and the fix: download it again.
        print(f"autoexp-bench: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    except FileNotFoundError as error:
        if name != "fashion_mnist":
            print(
                f"autoexp-bench: error: {missing_data_message(error, data_root)}", file=sys.stderr
            )
            raise SystemExit(2) from error
        print(
            "autoexp-bench: fashion_mnist not found; running on digits instead. "
            f"{missing_data_message(error, data_root)}",
            file=sys.stderr,
        )
        return "digits"
    return name


def data_folder(name: str, data_root: str | None) -> str | None:
    """Return the absolute path of the folder whose IDX files the run reads, or None for digits."""
    if name == "digits":
        return None
    return str(find_idx_files(name, data_root or "data")["train_images"].parent.resolve())


def rounds(repeats: int) -> str:
    """Return "1 timed round" or "N timed rounds"."""
    return f"{repeats} timed round{'' if repeats == 1 else 's'}"


def progress(message: str) -> None:
    print(f"autoexp-bench: {message}", file=sys.stderr, flush=True)


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(column(runs, key))


def columns(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list[float]]:
    return {key: column(runs, key) for key in keys if runs and runs[0].get(key) is not None}


def medians(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Return the median of each figure of each contender."""
    return {
        name: {key: statistics.median(values) for key, values in figures.items()}
        for name, figures in raw.items()
    }


def measure_training(bench: TrainingBench, repeats: int) -> dict[str, Any]:
    """Run the training contenders after one untimed warm-up round and summarize them."""
    progress("training: warm-up round, not timed")
    run_alternating(bench.contenders(), 1)
    progress(f"training: {rounds(repeats)}")
    runs = run_alternating(bench.contenders(), repeats)
    raw = {
        "autoexp": columns(runs["autoexp"], ("epoch_s", "epoch_with_validation_s", "fit_s")),
        "plain": columns(runs["plain"], ("epoch_s", "gflops", "gflops_matmul_exact")),
        "per_sample": columns(runs["per_sample"], ("epoch_s",)),
        "matmul": columns(runs["matmul"], ("gflops",)),
    }
    pairs = {
        "train_vs_plain": pair_ratios(raw["autoexp"]["epoch_s"], raw["plain"]["epoch_s"]),
        "per_sample_vs_train": pair_ratios(
            raw["per_sample"]["epoch_s"], raw["autoexp"]["epoch_s"]
        ),
        "plain_flops_vs_matmul": pair_ratios(raw["plain"]["gflops"], raw["matmul"]["gflops"]),
    }
    summary = {
        "n_images": len(bench.split),
        "batch_size": BATCH_SIZE,
        "layer_widths": layer_widths(bench.n_pixels),
        "optimizer": dict(bench.optimizer_config),
        "flops_per_epoch": bench.flops,
        "flop_count": "six_n_params: 6 * parameters * images per epoch",
        "runs": raw,
        "median": medians(raw),
    }
    return {"summary": summary, "pairs": pairs}


def measure_pca(bench: SolverBench, repeats: int) -> dict[str, Any]:
    progress(f"PCA: {rounds(repeats)}")
    runs = run_alternating(
        {
            "autoexp": bench.pca_autoexp,
            "sklearn_covariance_eigh": bench.pca_sklearn_covariance_eigh,
            "sklearn_full": bench.pca_sklearn_full,
        },
        repeats,
    )
    raw = {
        name: columns(name_runs, ("time_s", "fit_s", "error")) for name, name_runs in runs.items()
    }
    autoexp = raw["autoexp"]
    pairs, error_diffs = {}, {}
    for solver in ("covariance_eigh", "full"):
        other = raw[f"sklearn_{solver}"]
        pairs[f"pca_vs_sklearn_{solver}"] = pair_ratios(autoexp["time_s"], other["time_s"])
        error_diffs[f"pca_error_rel_diff_{solver}"] = statistics.median(
            abs(mine - theirs) / theirs
            for mine, theirs in zip(autoexp["error"], other["error"], strict=True)
        )
    summary = {
        "components": PCA_COMPONENTS,
        "runs": raw,
        "median": medians(raw),
        **error_diffs,
    }
    return {"summary": summary, "pairs": pairs}


def measure_kmeans(bench: SolverBench, repeats: int) -> dict[str, Any]:
    progress(f"k-means: {rounds(repeats)}")
    runs = run_alternating(
        {"autoexp": bench.kmeans_autoexp, "sklearn": bench.kmeans_sklearn}, repeats
    )
    keys = ("time_s", "fit_s", "iterations", "inertia")
    raw = {name: columns(name_runs, keys) for name, name_runs in runs.items()}
    pairs = {
        "kmeans_time_vs_sklearn": pair_ratios(raw["autoexp"]["time_s"], raw["sklearn"]["time_s"]),
        "kmeans_inertia_vs_sklearn": pair_ratios(
            raw["autoexp"]["inertia"], raw["sklearn"]["inertia"]
        ),
    }
    summary = {
        "clusters": KMEANS_CLUSTERS,
        "runs": raw,
        "median": medians(raw),
    }
    return {"summary": summary, "pairs": pairs}


RATIO_KEYS = (
    "train_vs_plain",
    "per_sample_vs_train",
    "plain_flops_vs_matmul",
    "pca_vs_sklearn_covariance_eigh",
    "pca_vs_sklearn_full",
    "kmeans_time_vs_sklearn",
    "kmeans_inertia_vs_sklearn",
)


def summarize_pairs(
    pairs: dict[str, list[float]],
) -> tuple[dict[str, float | None], dict[str, list[float] | None]]:
    """Return the median and the [lowest, highest] of each ratio's per-repeat values.

    Both have every key of RATIO_KEYS, with None for the ratios of parts that did not run.
    """
    ratios: dict[str, float | None] = dict.fromkeys(RATIO_KEYS)
    ranges: dict[str, list[float] | None] = dict.fromkeys(RATIO_KEYS)
    for key, values in pairs.items():
        ratios[key] = statistics.median(values)
        ranges[key] = [min(values), max(values)]
    return ratios, ranges


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the benchmark's parts and return all figures, ratios and target checks."""
    device = resolve_device(args.device)
    data = resolve_data(args.data, args.data_root)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "data_folder": data_folder(data, args.data_root),
        "device": str(device),
        "repeats": args.repeats,
        "machine": report.machine(device),
    }
    # Each ratio's value in every repeat, in repeat order.
    pairs: dict[str, list[float]] = {}

    with tempfile.TemporaryDirectory(prefix="autoexp-bench-") as work_dir:
        work = Path(work_dir)
        # Lightning's progress bars go to stdout; stderr keeps the table on stdout readable.
        with contextlib.redirect_stdout(sys.stderr):
            training = TrainingBench(data, device, args.data_root, work)
            if "training" not in args.skip:
                measured = measure_training(training, args.repeats)
                results["training"] = measured["summary"]
                pairs.update(measured["pairs"])
            solvers = SolverBench(data, device, args.data_root, training.datamodule, work)
            if "pca" not in args.skip:
                measured = measure_pca(solvers, args.repeats)
                results["pca"] = measured["summary"]
                pairs.update(measured["pairs"])
            if "kmeans" not in args.skip:
                measured = measure_kmeans(solvers, args.repeats)
                results["kmeans"] = measured["summary"]
                pairs.update(measured["pairs"])

        results["peak_rss_mb"] = None
        if "memory" not in args.skip:
            progress("memory: one epoch and the test of autoexp-train in a child process")
            overrides = [o for o in reference_overrides(data, device) if o != "test=false"]
            if args.data_root is not None:
                overrides.append(f"data.root={args.data_root}")
            results["peak_rss_mb"] = peak_rss_mb(overrides, work / "memory-run")

    ratios, results["ratio_ranges"] = summarize_pairs(pairs)
    results["ratios"] = ratios
    checked = {**ratios, "peak_rss_mb": results["peak_rss_mb"]}
    for key in ("pca_error_rel_diff_covariance_eigh", "pca_error_rel_diff_full"):
        checked[key] = results.get("pca", {}).get(key)
    results["targets"] = report.check_targets(checked)
    results["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    results["total_time_s"] = time.perf_counter() - start
    return results


@contextlib.contextmanager
def signals_stop_run() -> Iterator[None]:
    """Make SIGTERM and SIGINT raise TrainingInterrupted, so the temporary folder is deleted.

    Only the first signal counts: the handler stays installed after a stop, also after the
    block, and does nothing on a repeat, so a repeat cannot cut the deletion short. The
    handler does not set the signals to SIG_IGN, because Python then prints an error for a
    repeat that is already pending. main sets SIG_IGN once it has reported the stop. A
    signal that the process inherited as ignored stays ignored.
    """
    stopped: list[int] = []

    def stop(signum: int, frame) -> None:
        if stopped:
            return
        stopped.append(signum)
        raise TrainingInterrupted(128 + signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        if not stopped:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its tables and write the requested files.

    SIGINT (Ctrl-C) or SIGTERM stops it with exit code 128 plus the signal number. It then
    prints one line, deletes its temporary runs and writes no file.
    """
    args = parse_args(argv)
    command = shlex.join(["autoexp-bench", *(sys.argv[1:] if argv is None else argv)])
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with signals_stop_run():
            results = run(args, command)
    except (KeyboardInterrupt, TrainingInterrupted) as error:
        exit_code = 128 + signal.SIGINT
        if isinstance(error, TrainingInterrupted) and isinstance(error.code, int):
            exit_code = error.code
        name = signal.Signals(exit_code - 128).name
        if exit_code == 128 + signal.SIGINT:
            name += " (Ctrl-C)"
        # Python puts back the default handlers when it shuts down, and with torch loaded that
        # takes a second or more. Ignored signals keep a repeat from killing the process then.
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, signal.SIG_IGN)
        # A progress bar may be half drawn on the line.
        print(file=sys.stderr)
        progress(f"stopped by {name}; its temporary runs were deleted and no file was written")
        return exit_code
    tables = report.tables(results)
    print(tables)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown_page(results, tables))
    unmet = [key for key, check in results["targets"].items() if check["met"] is False]
    if unmet:
        message = f"targets not met: {', '.join(unmet)}"
        if results["data"] != report.TARGET_DATA:
            message += f" ({report.target_data_note(results['data'])})"
        progress(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
