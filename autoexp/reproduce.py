"""`autoexp-reproduce`: run a saved run again from its folder and compare the final metrics."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def relative_difference(stored: float, new: float) -> float:
    if stored == new:
        return 0.0
    return abs(new - stored) / max(abs(stored), 1e-12)


def compare_metrics(
    stored: dict[str, float], new: dict[str, float], rtol: float
) -> tuple[list[str], bool]:
    """Return the report lines and whether every stored metric was reproduced within rtol."""
    lines = [f"{'metric':<20} {'stored':>14} {'reproduced':>14} {'rel. diff':>10}"]
    all_match = True
    for name in sorted(stored):
        if name not in new:
            lines.append(f"{name:<20} {stored[name]:>14.8g} {'missing':>14} {'':>10}  DIFFERS")
            all_match = False
            continue
        difference = relative_difference(stored[name], new[name])
        verdict = "" if difference <= rtol else "  DIFFERS"
        all_match &= difference <= rtol
        lines.append(
            f"{name:<20} {stored[name]:>14.8g} {new[name]:>14.8g} {difference:>10.2e}{verdict}"
        )
    return lines, all_match


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="autoexp-reproduce",
        description="Run a finished run again from RUN_DIR/.hydra/config.yaml into a new folder "
        "and compare its final metrics with RUN_DIR/metrics.json. Exits with 1 when a metric "
        "differs by more than --rtol.",
    )
    parser.add_argument("run_dir", type=Path, help="folder of a finished autoexp-train run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the new run (default: outputs/reproduce/<date>/<time>)",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=1e-6,
        help="largest relative difference accepted per metric (default: 1e-6, for the same "
        "device and software versions)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Reproduce one run and print the comparison; return the exit code."""
    args = parse_args(argv)
    run_dir = args.run_dir.expanduser().absolute()
    config_path = run_dir / ".hydra" / "config.yaml"
    metrics_path = run_dir / "metrics.json"
    for path in (config_path, metrics_path):
        if not path.is_file():
            print(
                f"autoexp-reproduce: {path} not found; RUN_DIR must be the folder of a finished "
                "autoexp-train run (it holds .hydra/config.yaml and metrics.json)",
                file=sys.stderr,
            )
            return 2
    if args.rtol < 0:
        print(f"autoexp-reproduce: --rtol={args.rtol} must be >= 0", file=sys.stderr)
        return 2

    out = args.out or Path("outputs", "reproduce", time.strftime("%Y-%m-%d/%H-%M-%S"))
    out = out.expanduser().absolute()
    if (out / "metrics.json").exists():
        print(
            f"autoexp-reproduce: {out} already contains a run; pass another --out", file=sys.stderr
        )
        return 2
    command = [
        sys.executable,
        "-m",
        "autoexp.train",
        "--config-dir",
        str(config_path.parent),
        "--config-name",
        "config",
        f"hydra.run.dir={out}",
        # A resumed run's config names the checkpoint it resumed from, often its own
        # last.ckpt. Resuming is exact, so training from scratch to trainer.max_epochs
        # reproduces it, with the exception noted below.
        "ckpt_path=null",
    ]
    print(f"Reproducing {run_dir} into {out}", flush=True)
    config = OmegaConf.load(config_path)
    if config.get("ckpt_path") and OmegaConf.select(config, "model.lr_scheduler") is not None:
        print(
            "Note: this run was resumed, and a learning-rate schedule keeps the length it "
            "had when the run started (Lightning restores the scheduler's state). If the "
            "resume raised trainer.max_epochs, the rerun from scratch follows another "
            "schedule and its metrics differ."
        )
    result = subprocess.run(command)
    if result.returncode != 0 or not (out / "metrics.json").is_file():
        print(
            f"autoexp-reproduce: the new run failed with exit code {result.returncode}; "
            "its error is printed above",
            file=sys.stderr,
        )
        return 2

    stored = json.loads(metrics_path.read_text())
    new = json.loads((out / "metrics.json").read_text())
    if stored.get("versions") != new.get("versions"):
        print(
            f"Note: software versions differ (stored {stored.get('versions')}, now "
            f"{new.get('versions')}); metrics may differ by more than rounding."
        )
    lines, all_match = compare_metrics(stored.get("metrics", {}), new["metrics"], args.rtol)
    print("\n".join(lines))
    if all_match:
        print(f"Reproduced: every metric within rtol={args.rtol:g}")
        return 0
    print(f"Not reproduced: some metrics differ by more than rtol={args.rtol:g}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
