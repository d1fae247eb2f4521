"""`autoexp-report`: one table and one plot for the runs of one or more sweeps."""

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from autoexp.sweep import FAILURE_FILE

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "model",
    "latent_dim",
    "data",
    "seed",
    "test/loss",
    "test/mse",
    "n_parameters",
    "train_time_s",
    "status",
)
MODEL_ORDER = ("mlp_ae", "linear_pca_ae", "kmeans_ae")


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Return the run folders at or below the given paths, each holding metrics or a failure."""
    run_dirs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"Not a folder: {path.absolute()}")
        markers = [*path.rglob("metrics.json"), *path.rglob(FAILURE_FILE)]
        run_dirs.extend(marker.parent for marker in markers)
    unique = sorted(set(run_dirs))
    if not unique:
        folders = ", ".join(str(path) for path in paths)
        raise FileNotFoundError(
            f"No runs found in {folders}: expected folders holding metrics.json (finished runs) "
            f"or {FAILURE_FILE} (failed jobs), as written by autoexp-train"
        )
    return unique


def saved_config(run_dir: Path):
    path = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def read_row(run_dir: Path, base: Path) -> dict[str, Any]:
    """Return the summary row of one run: its settings and final metrics, or its failure."""
    job = str(run_dir.relative_to(base)) if run_dir != base else run_dir.name
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        record = json.loads(metrics_path.read_text())
        metrics = record.get("metrics", {})
        return {
            "job": job,
            "model": record.get("model"),
            "latent_dim": record.get("latent_dim"),
            "data": record.get("data"),
            "seed": record.get("seed"),
            "test/loss": metrics.get("test/loss"),
            "test/mse": metrics.get("test/mse"),
            "n_parameters": record.get("n_parameters"),
            "train_time_s": record.get("train_time_s"),
            "status": "ok",
        }
    config = saved_config(run_dir)
    failure = json.loads((run_dir / FAILURE_FILE).read_text())

    def setting(key: str):
        return OmegaConf.select(config, key, default=None) if config is not None else None

    from autoexp.models import MODELS

    target_class = (setting("model._target_") or "").rsplit(".", 1)[-1]
    names = [name for name, model_class in MODELS.items() if model_class.__name__ == target_class]
    return {
        "job": job,
        "model": names[0] if names else None,
        "latent_dim": setting("model.latent_dim"),
        "data": setting("data.name"),
        "seed": setting("seed"),
        "status": "failed: " + failure.get("error", "unknown error").splitlines()[0],
    }


def sort_key(row: dict[str, Any]):
    model = row.get("model")
    rank = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    return (row.get("data") or "", rank, model or "", row.get("latent_dim") or 0, row["job"])


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in COLUMNS})


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [format_value(row.get(key)).replace("|", "\\|") for key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def exact_pca_mse(run_dir: Path, latent_dims: list[int]) -> dict[int, float] | None:
    """Return the test per-pixel MSE of exact PCA on a run's data split, by latent dimension.

    The PCA is fitted on the training split that the run used (same data, seed and fractions):
    the optimum that any linear code of that size can reach.
    """
    from autoexp.data import load_splits

    config = saved_config(run_dir)
    if config is None:
        return None
    data = config.data
    splits = load_splits(
        data.name,
        root=OmegaConf.select(config, "data.root"),
        val_fraction=data.val_fraction,
        test_fraction=OmegaConf.select(config, "data.test_fraction"),
        split_seed=OmegaConf.select(config, "data.split_seed"),
    )
    train = splits["train"].to_float().flatten(1).double()
    test = splits["test"].to_float().flatten(1).double()
    mean = train.mean(0)
    centred = train - mean
    covariance = centred.T @ centred / len(train)
    _, eigenvectors = torch.linalg.eigh(covariance)
    components = eigenvectors.flip(1)  # (n_pixels, n_pixels), by decreasing variance
    test_centred = test - mean
    total = test_centred.pow(2).sum(1).mean()
    captured = (test_centred @ components).pow(2).mean(0).cumsum(0)
    n_pixels = train.shape[1]
    return {
        k: float((total - captured[k - 1]) / n_pixels) for k in latent_dims if 1 <= k <= n_pixels
    }


def plot_mse_vs_latent(rows: list[dict[str, Any]], run_dirs: dict[str, Path], path: Path) -> None:
    """Plot test per-pixel MSE against latent dimension: one line per model, one panel per data
    set, with the exact PCA curve of the same data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [row for row in rows if row["status"] == "ok" and row.get("test/mse") is not None]
    datasets = sorted({row["data"] for row in finished})
    if not datasets:
        log.warning("No finished runs to plot")
        return
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        dataset_rows = [row for row in finished if row["data"] == dataset]
        models = sorted(
            {row["model"] for row in dataset_rows}, key=lambda m: sort_key({"model": m, "job": ""})
        )
        for model in models:
            by_dim: dict[int, list[float]] = {}
            for row in dataset_rows:
                if row["model"] == model:
                    by_dim.setdefault(row["latent_dim"], []).append(row["test/mse"])
            dims = sorted(by_dim)
            means = [sum(by_dim[d]) / len(by_dim[d]) for d in dims]
            axis.plot(dims, means, marker="o", label=model)

        dims = sorted({row["latent_dim"] for row in dataset_rows})
        reference_dir = run_dirs[dataset_rows[0]["job"]]
        exact = exact_pca_mse(reference_dir, list(range(1, max(dims) + 1)))
        if exact:
            exact_dims = sorted(exact)
            axis.plot(
                exact_dims,
                [exact[d] for d in exact_dims],
                color="black",
                linestyle="--",
                linewidth=1,
                label="exact PCA (optimum of linear codes)",
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("latent dimension")
        axis.set_ylabel("test MSE per pixel")
        axis.set_title(dataset)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="autoexp-report",
        description="Summarise runs of autoexp-train: writes summary.csv, summary.md and "
        "mse_vs_latent.png and prints the table.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders or single run folders")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the summary files (default: the first path given)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip mse_vs_latent.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the summary of the runs below the given folders; return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        run_dirs = find_run_dirs(args.paths)
    except FileNotFoundError as error:
        print(f"autoexp-report: {error}", file=sys.stderr)
        return 2

    rows, dirs_by_job = [], {}
    for run_dir in run_dirs:
        base = next(path for path in args.paths if run_dir.is_relative_to(path))
        row = read_row(run_dir, base if len(args.paths) == 1 else base.parent)
        rows.append(row)
        dirs_by_job[row["job"]] = run_dir
    rows.sort(key=sort_key)

    out = args.out or args.paths[0]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "summary.csv")
    table = markdown_table(rows)
    (out / "summary.md").write_text(table)
    if not args.no_plot:
        plot_mse_vs_latent(rows, dirs_by_job, out / "mse_vs_latent.png")
    print(table, end="")
    n_failed = sum(row["status"] != "ok" for row in rows)
    print(f"{len(rows)} runs ({n_failed} failed); summary in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
