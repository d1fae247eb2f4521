"""The benchmark's targets, its Markdown tables and the description of the machine."""

import os
import platform
from pathlib import Path
from typing import Any

import sklearn
import torch

# Bound of each ratio (and of peak_rss_mb) and the side it must stay on.
TARGETS: dict[str, tuple[str, float]] = {
    "train_vs_plain": ("<=", 1.10),
    "per_sample_vs_train": (">=", 2.5),
    "plain_flops_vs_matmul": (">=", 0.60),
    "pca_vs_sklearn_covariance_eigh": ("<=", 1.5),
    "pca_vs_sklearn_full": ("<=", 0.25),
    "kmeans_time_vs_sklearn": ("<=", 1.0),
    "kmeans_inertia_vs_sklearn": ("<=", 1.005),
    "peak_rss_mb": ("<=", 1500.0),
    "pca_error_rel_diff_covariance_eigh": ("<=", 1e-6),
    "pca_error_rel_diff_full": ("<=", 1e-6),
}

RATIO_DESCRIPTIONS = {
    "train_vs_plain": "autoexp epoch / plain loop epoch",
    "per_sample_vs_train": "per-sample epoch / autoexp epoch",
    "plain_flops_vs_matmul": "plain loop GFLOP/s / float32 matmul GFLOP/s",
    "pca_vs_sklearn_covariance_eigh": "autoexp PCA time / scikit-learn covariance_eigh time",
    "pca_vs_sklearn_full": "autoexp PCA time / scikit-learn full time",
    "kmeans_time_vs_sklearn": "autoexp k-means time / scikit-learn time",
    "kmeans_inertia_vs_sklearn": "autoexp inertia / scikit-learn inertia",
    "peak_rss_mb": "peak resident memory of a training run, MB",
    "pca_error_rel_diff_covariance_eigh": "PCA error, relative difference to covariance_eigh",
    "pca_error_rel_diff_full": "PCA error, relative difference to full",
}


def check_targets(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Compare each figure that has a target with its bound.

    Returns:
        For each target: `value`, `bound`, `op` and `met` (None where the value is missing).
    """
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = values.get(key)
        met = None
        if value is not None:
            met = value <= bound if op == "<=" else value >= bound
        checks[key] = {"value": value, "op": op, "bound": bound, "met": met}
    return checks


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    """Describe the machine and the software versions behind the figures."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit_learn": sklearn.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(value: float | None, digits: int = 3) -> str:
    """Format a figure with `digits` significant digits; a dash where it is missing."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Return a Markdown table with each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def ratio_table(
    targets: dict[str, dict[str, Any]], ranges: dict[str, list[float] | None] | None = None
) -> str:
    """Return the table of ratios and peak memory against their targets.

    Args:
        targets: The checks of `check_targets`.
        ranges: The lowest and highest per-repeat value of each ratio, shown beside its median
            where they differ.
    """
    ranges = ranges or {}
    rows = []
    for key, check in targets.items():
        met = {True: "yes", False: "NO", None: "-"}[check["met"]]
        spread = ranges.get(key)
        rows.append(
            [
                f"`{key}`",
                RATIO_DESCRIPTIONS[key],
                fmt(check["value"], 4),
                f"{fmt(spread[0], 4)} to {fmt(spread[1], 4)}"
                if spread and spread[0] != spread[1]
                else "-",
                f"{check['op']} {check['bound']:g}",
                met,
            ]
        )
    return markdown_table(
        ["key", "figure", "value", "repeats, lowest to highest", "target", "met"], rows
    )


def training_table(training: dict[str, Any]) -> str:
    """Return the table of epoch times and throughputs, medians over the repeats."""
    median = training["median"]
    rows = [
        ["autoexp Trainer.fit, training pass", fmt(median["autoexp"]["epoch_s"]), ""],
        [
            "autoexp Trainer.fit, epoch with validation and checkpoints",
            fmt(median["autoexp"].get("epoch_with_validation_s")),
            "",
        ],
        [
            "plain loop",
            fmt(median["plain"]["epoch_s"]),
            f"{fmt(median['plain']['gflops'])} GFLOP/s (6 x params x images); "
            f"{fmt(median['plain']['gflops_matmul_exact'])} GFLOP/s (exact matmul count)",
        ],
        ["per-sample pipeline", fmt(median["per_sample"]["epoch_s"]), ""],
        ["float32 matmul", "", f"{fmt(median['matmul']['gflops'])} GFLOP/s"],
    ]
    return markdown_table(["training, one epoch", "seconds", "throughput"], rows)


def pca_table(pca: dict[str, Any]) -> str:
    """Return the table of PCA fit times and reconstruction errors, medians."""
    median = pca["median"]
    names = {
        "autoexp": "autoexp linear_pca_ae, solver eigh",
        "sklearn_covariance_eigh": 'scikit-learn PCA, svd_solver="covariance_eigh"',
        "sklearn_full": 'scikit-learn PCA, svd_solver="full"',
    }
    rows = [
        [
            label,
            fmt(median[name]["time_s"]),
            fmt(median[name].get("fit_s")),
            fmt(median[name]["error"], 10),
        ]
        for name, label in names.items()
    ]
    header = [
        f"PCA, {pca['components']} components",
        "seconds",
        "whole fit, seconds",
        "error per image",
    ]
    return markdown_table(header, rows)


def kmeans_table(kmeans: dict[str, Any]) -> str:
    """Return the table of k-means times, iterations and inertias, medians."""
    median = kmeans["median"]
    names = {
        "autoexp": "autoexp kmeans_ae, Lloyd",
        "sklearn": "scikit-learn KMeans, n_init=1",
    }
    rows = [
        [
            label,
            fmt(median[name]["time_s"]),
            fmt(median[name].get("fit_s")),
            fmt(median[name]["iterations"]),
            fmt(median[name]["inertia"], 8),
        ]
        for name, label in names.items()
    ]
    header = [
        f"k-means, k={kmeans['clusters']}, k-means++",
        "seconds",
        "whole fit, seconds",
        "iterations",
        "inertia",
    ]
    return markdown_table(header, rows)


def run_heading(results: dict[str, Any]) -> str:
    """Return the line above the tables: data set and its folder, device and repeats."""
    repeats = results["repeats"]
    folder = results.get("data_folder")
    source = f" (IDX files in {folder})" if folder else ""
    return (
        f"autoexp-bench on {results['data']}{source}, device {results['device']}, {repeats} "
        f"repeat{'' if repeats == 1 else 's'}; medians, ratios are medians of per-repeat ratios"
    )


def tables(results: dict[str, Any]) -> str:
    """Return all tables of a benchmark run, separated by blank lines."""
    parts = [run_heading(results)]
    if "training" in results:
        parts.append(training_table(results["training"]))
    if "pca" in results:
        parts.append(pca_table(results["pca"]))
    if "kmeans" in results:
        parts.append(kmeans_table(results["kmeans"]))
    parts.append(ratio_table(results["targets"], results.get("ratio_ranges")))
    if results["data"] != TARGET_DATA:
        parts.append(target_data_note(results["data"]))
    return "\n\n".join(parts) + "\n"


# The data set whose figures the targets were set for.
TARGET_DATA = "fashion_mnist"


def target_data_note(data: str) -> str:
    """Return the sentence that marks the targets as set for another data set than data."""
    return f"The targets are set for {TARGET_DATA}; on {data} they are shown for reference only."


METHOD = """\
## What is measured

All contenders run in one process, one after the other, and the order rotates from one
repeat to the next, so a change in the machine's speed hits every contender alike. Each
figure above is the median over the repeats; each ratio is the median of the ratios of
runs from the same repeat. The table of ratios also shows the lowest and highest of those
per-repeat ratios, which the JSON keeps under `ratio_ranges`: on a machine whose speed
drifts, they tell a median near its bound from a clear miss.

- **Training.** One epoch over the whole training split of the reference `mlp_ae`
  (784-512-128-32-128-512-784 for 28x28 images, 64 in place of 784 for digits; ReLU,
  sigmoid output, batch 256) with the optimizer of
  `conf/model/mlp_ae.yaml`. Each contender starts from the same seed in each repeat, and
  one untimed round runs first.
  - *autoexp*: `Trainer.fit` with the data module and the configs composed from `conf/`,
    as `autoexp-train data=... trainer=cpu` (or `trainer=gpu`) builds them: TensorBoard
    logger, checkpoints, image and hparams callbacks, and the progress bar on. The one
    callback left out saves a checkpoint on SIGTERM or Ctrl-C: the benchmark's runs live in
    a temporary folder, and the benchmark handles those signals itself. The training pass
    runs from the start of the epoch to the end of its last batch. The epoch with
    validation and checkpoints runs on to the end of training.
  - *plain loop*: a `torch.nn.Sequential` of the same layers, trained on batches indexed
    from the uint8 split held as one tensor on the device, converted to float per batch.
    Its loss is the function autoexp's models call, `autoexp.models.base.reconstruction_loss`.
  - *per-sample pipeline*: torchvision's `MNIST` dataset class, which `FashionMNIST`
    extends, over the same split in memory: its own `__getitem__` makes one `PIL.Image`
    per index and passes it through `ToTensor`. A `DataLoader` with `shuffle=True`, the
    default collate and no worker processes draws the batches.
  - GFLOP/s of the plain loop count 6 x parameters x images per epoch. The exact count of
    the matrix products (forward, weight gradients, and input gradients of every layer but
    the first) is 14% lower for the 784-wide network and is shown beside it. The float32 matmul
    figure is the throughput of 2048 x 2048 products (8192 on a GPU), measured once per
    repeat.
- **PCA and k-means.** autoexp's models run in `Trainer.fit` with the configs of `conf/`.
  Their time runs from the start of the fit to the first epoch, where k-means++ runs,
  plus every training pass, each up to the end of its last batch. The work between the
  passes (validation, checkpoints, images) is left out of that time but included in the
  whole fit's time, shown beside it. scikit-learn's time is that of `fit` on the split as
  a float32 array in memory.
- **PCA.** `linear_pca_ae` with `solver=eigh` and 32 components: one pass that sums each
  batch's float32 Gram matrix in float64, then eigh. It runs with `data.batch_size=8192`,
  which does not change its result. Against scikit-learn's `PCA(n_components=32)` with
  `svd_solver="covariance_eigh"` and `"full"`. The error is the mean squared
  reconstruction error per image on the training split, computed in float64 from each
  fit's mean and components.
- **k-means.** `kmeans_ae` with its config (Lloyd, greedy k-means++, k=10, tolerance
  1e-4, each epoch one unshuffled batch that is a view of the float32 training split)
  against scikit-learn's `KMeans(n_clusters=10, n_init=1)` with its defaults (Lloyd,
  greedy k-means++, tolerance 1e-4). Each repeat seeds both with the repeat's index. Both
  inertias are recomputed in float64 from the final centroids.
- **Memory.** Peak resident set size of `python -m autoexp.train` with the reference
  model, one epoch and the test, read by its parent from `getrusage(RUSAGE_CHILDREN)`.

## The JSON file

`--json FILE` writes one object:

- `command`, `date`, `data`, `data_folder` (the folder of the IDX files; null for
  digits), `device`, `repeats`, `total_time_s`, and `machine` (CPU, thread count, load
  average before and after, software versions).
- `training`, `pca` and `kmeans`, one object per part that ran: its settings, `runs` (each
  contender's figures per repeat, in repeat order) and `median` (their medians). `pca`
  also holds `pca_error_rel_diff_covariance_eigh` and `pca_error_rel_diff_full`.
- `ratios`: the median of each ratio over the repeats; `ratio_ranges`: its lowest and
  highest value. A part left out with `--skip` leaves its ratios null.
- `peak_rss_mb`: the peak resident memory of the training run, in MB; null when skipped.
- `targets`: for each figure with a target, its `value`, `op`, `bound` and `met`.

## Where the time goes

Profiles on fashion_mnist, on a 2-core AMD EPYC (December 2026), where
a plain-loop step of 256 images takes 10 to 12 ms:

- Lightning's loop (its hooks, the optimizer closure, the progress counters) costs about
  0.75 ms per step more than the plain loop, measured with a model of 4 hidden units, whose
  arithmetic is negligible. With the reference model the median step took 1.3 to 1.4 ms
  longer than the plain loop's, in sets of 6 to 8 alternating pairs of epochs. Python work
  between torch operations can cost more inside a training loop than alone. A loop of plain
  Python that took 0.85 ms by itself added 1.2 ms to each plain-loop step in one set of 6
  epochs and 0.92 ms in another of 12, with 2 torch threads. With 1 thread it added 0.86 ms.
- In sets of 10 alternating pairs of epochs on 2026-12-05, the median ratio to the plain
  loop varied more between sets taken minutes apart than between contenders within a set.
  In one set, Lightning alone (a minimal LightningModule on autoexp's data module, with no
  callbacks, logger or progress bar) took 1.082 times the plain loop's epoch, and autoexp's
  model and data module without callbacks, logger or progress bar took 1.088. In another
  set, the latter took 1.129 and the full autoexp run 1.135. Single pairs ranged from 0.97
  to 1.33. So the excess over the plain loop is Lightning's own work per step, and
  `train_vs_plain` lies near or above its 1.10 target on that machine.
- Later sets that day, of 4 to 8 pairs, tie that spread to the machine's speed, which
  changed within minutes. The plain epoch took 2.5 s in some sets and 1.75 to 1.8 s in
  others, while autoexp's extra time per step stayed between 0.8 and 1.2 ms. The median
  ratio was 1.06 to 1.08 in the slow sets and 1.10 to 1.14 in the fast ones. These were
  measured in those sets and are not the cause:
  - Python's garbage collector: 17 young-generation collections, about 3 ms per epoch.
  - The forward and backward passes: the same time per layer in both loops, within 2%.
  - torch's second thread spinning next to Lightning's Python: a Python loop ran no slower
    right after a matrix product than after a pause.
  - The TensorBoard writes: in one set of 8 pairs, 1.116 with the defaults, 1.090 with
    `trainer.log_every_n_steps=50` and 1.116 with no logger and no progress bar.
  - The data path: autoexp's DataLoader and batch transfer hook took 253 us per batch
    against 179 us for the plain loop's indexing, under 1% of a step.
- Time stamps at Lightning's hooks, over 633 steps of the reference model on 2026-12-05,
  locate the excess. About 0.8 ms of the median step lay inside the automatic optimization:
  building the closure, the wrappers around the optimizer step, and the hooks around
  zero_grad and backward. About 0.65 ms lay between steps: the batch-end hooks, the logger
  connector, the epoch loop's bookkeeping, the batch transfer hooks, and 0.13 ms of the
  DataLoader's own work around autoexp's batch indexing. Two ways to skip parts of it
  were measured and not kept. Serving the training batches from a plain iterable instead of
  the DataLoader changed the epoch time by less than 1% (median of 8 pairs). Lightning's
  manual optimization gave 1.077 against 1.099 for the automatic one (6 pairs), within the
  spread between sets, and it would turn off the Trainer's gradient clipping, gradient
  accumulation and learning rate scheduling.
- Lightning calls each per-batch hook of every callback. autoexp sets the hooks that a
  callback inherits as Lightning's no-ops to None, which Lightning skips
  (`autoexp.callbacks.hooks`): the 5 hooks before the optimizer step took 13 us per step
  in place of 71 us. Each step that writes `train/loss` (every `trainer.log_every_n_steps`,
  10 by default) costs about 1.4 ms more, measured with the small model: 0.55 ms in the
  step and 0.8 ms when Lightning writes the metrics after it.
- Lightning sets `PYTORCH_NVML_BASED_CUDA_CHECK=1`, after which torch's Adam looked for
  NVIDIA's NVML library on every step, 0.09 ms each time on a machine without it. autoexp
  unsets the variable where the library is missing (`autoexp.cuda_check`). The plain loop
  runs in the same process, so it gains as much.
- The per-sample pipeline spends 46 to 116 us per image in Python (PIL, `ToTensor`, the
  collate), depending on the hour, against about 40 us of arithmetic per image. So
  `per_sample_vs_train` ranged from 1.9 to 3.4 between runs on the same machine: below 2.5 in
  hours when Python runs fast, the same hours in which `train_vs_plain` is lowest.
- The PCA pass spends two thirds of its time in the Gram matrices of the batches. Computed by
  numpy (BLAS syrk), they took from 0.43 to 0.88 s per pass where numpy was imported before
  autoexp: OpenBLAS's threads then spin-wait after each call and slow torch's threads on the
  same two cores. autoexp computes them in torch by blocks of columns, which took 0.38 to
  0.44 s whatever the import order (`autoexp.models.linear_pca_ae.gram_matrix`). Where
  autoexp is imported first, as in its commands, it shortens OpenBLAS's spin, and numpy's
  products took as long as the blocks.
- A k-means iteration spent 49 to 55 ms of its 68 to 75 ms assigning the images and summing
  them per cluster. Summing with `index_add_` in place of a product with a one-hot matrix
  cut that to 44 to 46 ms. Lightning's `self.log` of the five k-means scalars adds about
  3.5 ms per iteration.
- `train_vs_plain` is the one target that fails in most runs. On 2026-12-05 between 11:45
  and 12:00 UTC, after the change to callback hooks, two runs of `autoexp-bench --json`
  with 3 repeats gave 1.130 and 1.025. Two with 5 repeats, the default since then, gave
  1.133 and 1.119, and a third right after them 1.136. Their other ratios met their targets,
  with `kmeans_time_vs_sklearn` from 0.77 to 0.91 and `pca_vs_sklearn_covariance_eigh` from
  1.19 to 1.25. Nine runs earlier that day, with 3 repeats, gave `train_vs_plain` from 1.063
  to 1.213, median 1.146.
- Two runs with 5 repeats at 17:40 and 17:45 UTC that day gave `train_vs_plain` 1.139 and
  1.189, and `per_sample_vs_train` 1.79 and 2.00. Their per-sample epochs took 4.6 and 4.7 s,
  against 8.4 s in the run at 16:19, so in those minutes even the plain loop was only 1.9 and
  2.4 times as fast as the per-sample pipeline. Two runs of the training part alone right
  after them gave `train_vs_plain` 1.112 and 1.122.
"""


def machine_lines(results: dict[str, Any]) -> list[str]:
    """Return Markdown list items that describe the machine and the software."""
    machine = results["machine"]
    lines = [
        f"- CPU: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch threads",
        f"- Load average (1 min): {machine['load_average_1min']} before the run, "
        f"{machine.get('load_average_1min_end', '-')} at its end (the benchmark's own threads "
        "included)",
        f"- torch {machine['torch']}, scikit-learn {machine['scikit_learn']}, "
        f"Python {machine['python']}, {machine['platform']}",
    ]
    if "gpu" in machine:
        lines.insert(1, f"- GPU: {machine['gpu']}")
    return lines


def markdown_page(results: dict[str, Any], tables_text: str) -> str:
    """Return docs/benchmarks.md: the command, the machine, the tables and the method."""
    lines = [
        "# Benchmarks",
        "",
        "`autoexp-bench` times autoexp against a plain PyTorch loop, the per-sample",
        "`DataLoader` pipeline and scikit-learn. This page is written by its `--markdown`",
        "option; rerun the command below to replace it.",
        "",
        "## Latest run",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"- Date: {results['date']}, total time {results['total_time_s']:.0f} s",
        *machine_lines(results),
        "",
        tables_text.rstrip(),
        "",
        METHOD,
    ]
    return "\n".join(lines)
