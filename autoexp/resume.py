"""`ckpt_path` on the command line: `last`, relative paths, and resuming in the same folder."""

import re
import shutil
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from autoexp.checkpoint_io import check_resume_checkpoint

# Overrides that may change between the legs of one run without making it another config.
RESUME_FREE_KEYS = ("ckpt_path", "trainer.max_epochs", "trainer.max_steps")


class ResumeError(ValueError):
    """A `ckpt_path` that cannot be resumed from."""


def override_value(text: str) -> str:
    """Return a path as the value of a Hydra override, quoted where Hydra's grammar needs it.

    Sweep job folders have names like `model.latent_dim=4`, and Hydra rejects an unquoted
    `=` or `,` in a value.
    """
    if re.fullmatch(r"[\w./~+@:-]*", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def parse_override_value(override: str) -> str | None:
    """Return the value of a `key=value` override as Hydra reads it (quotes removed)."""
    try:
        value = OverridesParser.create().parse_override(override).value()
    except HydraException:
        # Hydra reports the syntax error itself once it parses the command line.
        return override.partition("=")[2]
    return None if value is None else str(value)


def comparable_overrides(overrides: list[str]) -> list[str]:
    kept = []
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key.startswith("hydra") or key in RESUME_FREE_KEYS:
            continue
        kept.append(override)
    return sorted(kept)


# Checkpoints a run can be resumed from: the one saved at each epoch end, and the one saved when
# a signal stopped training.
RESUMABLE_CHECKPOINTS = ("last.ckpt", "interrupted.ckpt")


def find_last_checkpoint(log_dir: Path, overrides: list[str]) -> Path:
    """Return the newest resumable checkpoint of the runs launched with the same overrides.

    Runs are the folders `log_dir/<date>/<time>`; overrides of ckpt_path, trainer.max_epochs
    and trainer.max_steps are ignored in the comparison. The newest of the runs'
    `checkpoints/last.ckpt` and `checkpoints/interrupted.ckpt` files wins.

    Raises:
        ResumeError: No such run has a last checkpoint.
    """
    wanted = comparable_overrides(overrides)
    candidates = []
    for overrides_file in log_dir.glob("*/*/.hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        saved = [str(item) for item in OmegaConf.load(overrides_file)]
        if comparable_overrides(saved) != wanted:
            continue
        for name in RESUMABLE_CHECKPOINTS:
            checkpoint = run_dir / "checkpoints" / name
            if checkpoint.is_file():
                candidates.append((checkpoint.stat().st_mtime, checkpoint))
    if not candidates:
        shown = " ".join(wanted) or "(no overrides)"
        raise ResumeError(
            f"ckpt_path=last: no earlier run with overrides {shown} and a "
            f"checkpoints/last.ckpt was found under {log_dir.absolute()}; start the run "
            "without ckpt_path first, or pass ckpt_path=PATH"
        )
    return max(candidates)[1]


def run_dir_of(checkpoint: Path) -> Path | None:
    """Return the run folder that wrote a checkpoint, or None for a file outside any run."""
    run_dir = checkpoint.parent.parent
    if checkpoint.parent.name == "checkpoints" and (run_dir / ".hydra").is_dir():
        return run_dir
    return None


def keep_previous_config(run_dir: Path) -> Path:
    """Copy the run's .hydra files aside before the resumed leg writes its own there."""
    target = run_dir / ".hydra" / f"before-resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for path in (run_dir / ".hydra").glob("*.yaml"):
        shutil.copy2(path, target / path.name)
    return target


def prepare_resume(overrides: list[str], log_dir: Path, multirun: bool) -> list[str]:
    """Return the overrides with ckpt_path made absolute, plus hydra.run.dir of its run.

    `ckpt_path=last` becomes the newest matching run's last checkpoint. A single run resumed
    from a checkpoint inside a run folder continues in that folder, so its TensorBoard
    run, checkpoints and metrics.json stay in one place. The caller checks the checkpoint
    against the config's model and then calls `keep_previous_config`, before Hydra writes
    the resumed leg's config into that folder.

    Raises:
        ResumeError: `ckpt_path=last` finds no run, or the file does not exist.
    """
    index = next(
        (i for i, item in enumerate(overrides) if item.partition("=")[0] == "ckpt_path"), None
    )
    if index is None:
        return overrides
    value = parse_override_value(overrides[index])
    if value in (None, "", "null"):
        return overrides
    if value == "last":
        checkpoint = find_last_checkpoint(log_dir, overrides)
    else:
        checkpoint = Path(value).expanduser().absolute()
        if not checkpoint.is_file():
            raise ResumeError(f"ckpt_path={value!r} not found: tried {checkpoint}")
    try:
        # The model type and shapes are checked again in train(), against the config's model.
        check_resume_checkpoint(checkpoint, None)
    except ValueError as error:
        raise ResumeError(str(error)) from error

    resolved = [
        *overrides[:index],
        f"ckpt_path={override_value(str(checkpoint))}",
        *overrides[index + 1 :],
    ]
    run_dir = run_dir_of(checkpoint)
    has_run_dir = any(item.startswith("hydra.run.dir=") for item in overrides)
    if run_dir is not None and not multirun and not has_run_dir:
        resolved.append(f"hydra.run.dir={override_value(str(run_dir))}")
    return resolved
