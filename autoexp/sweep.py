"""Multirun support: readable job folder names, failure records and the end-of-sweep summary."""

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"

# Overrides that select presets or launchers rather than describe the job itself.
NAME_EXCLUDED_KEYS = ("experiment",)

# Set by SweepSummary at the start of a multirun to the keys that take several values, so that
# job names leave out the overrides shared by every job. Launchers pass it on to their workers.
SWEPT_KEYS_VARIABLE = "AUTOEXP_SWEPT_KEYS"


def swept_keys(config: DictConfig) -> list[str]:
    """Return the keys that a multirun sweeps over, from the command line and sweeper params."""
    command_line = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parsed = OverridesParser.create().parse_overrides(command_line)
    keys = [override.get_key_element().lstrip("+~") for override in parsed]
    keys = [
        key for key, override in zip(keys, parsed, strict=True) if override.is_sweep_override()
    ]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return sorted({*keys, *params})


def job_name(overrides: list[str]) -> str:
    """Return a job folder name built from its overrides, config groups first.

    For example ["model.latent_dim=8", "model=kmeans_ae"] gives
    "model=kmeans_ae,model.latent_dim=8". Inside a multirun only the swept keys count. Slashes
    in values become "_" so the name stays one folder.
    """
    swept = os.environ.get(SWEPT_KEYS_VARIABLE)
    swept = set(swept.split(",")) if swept else None
    items = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra") or key in NAME_EXCLUDED_KEYS:
            continue
        if swept is not None and key not in swept:
            continue
        is_group = "." not in key
        items.append((not is_group, key, f"{key}={value}".replace("/", "_")))
    items.sort()
    return ",".join(item for _, _, item in items) or "default"


# The folders that reserve_run_dir created above each run folder, deepest first, by run folder.
CREATED_PARENTS: dict[str, list[Path]] = {}


def reserve_run_dir(path: str) -> str:
    """Create the run folder `path`, or `path_1`, `path_2`... when it exists, and return it.

    Creating the folder claims it, so two runs started in the same second get distinct folders.
    The parents it had to create are kept in CREATED_PARENTS, for remove_created_parents.
    """
    base = Path(path)
    missing = [folder for folder in base.absolute().parents if not folder.exists()]
    candidate, suffix = base, 0
    while True:
        try:
            # With parents=True the mkdir also succeeds after another run removed a parent.
            candidate.mkdir(parents=True)
            break
        except FileExistsError:
            suffix += 1
            candidate = base.with_name(f"{base.name}_{suffix}")
    CREATED_PARENTS[str(candidate.absolute())] = missing
    return str(candidate)


def remove_created_parents(run_dir: Path) -> None:
    """Remove the folders that reserve_run_dir created above run_dir, while they are empty."""
    for folder in CREATED_PARENTS.pop(str(run_dir.absolute()), []):
        try:
            folder.rmdir()
        except OSError:  # not empty: another run uses it
            return


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("autoexp.job_name"):
        OmegaConf.register_new_resolver("autoexp.job_name", job_name)
    if not OmegaConf.has_resolver("autoexp.reserve_run_dir"):
        # Cached, so that resolving hydra.run.dir again returns the same folder.
        OmegaConf.register_new_resolver("autoexp.reserve_run_dir", reserve_run_dir, use_cache=True)


def describe_error(error: BaseException) -> str:
    """Return "Type: message" on one line, for the error that Hydra's instantiate wrapped."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return " ".join(f"{type(error).__name__}: {error}".split())


def record_failure(output_dir: Path, error: BaseException, overrides: list[str]) -> Path:
    """Write the error of a failed job into its folder and return the file's path."""
    path = output_dir / FAILURE_FILE
    record = {
        "job": output_dir.name,
        "overrides": overrides,
        "error": describe_error(error),
        "traceback": "".join(traceback.format_exception(error)),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def find_failures(sweep_dir: Path) -> list[dict[str, Any]]:
    """Return the failure records of the jobs below sweep_dir, sorted by job folder."""
    records = []
    for path in sorted(sweep_dir.rglob(FAILURE_FILE)):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            records.append({"job": path.parent.name, "error": f"unreadable {path}"})
    return records


class SweepSummary(Callback):
    """Hydra callback that names a multirun's jobs and ends it with a list of failed jobs.

    A sweep with failed jobs exits with code 1 after every job has run.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEPT_KEYS_VARIABLE] = ",".join(swept_keys(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = find_failures(sweep_dir)
        if not failures:
            log.info("Sweep finished, outputs in %s", sweep_dir)
            return
        names = "; ".join(record.get("job", "?") for record in failures)
        # On stderr alone: Hydra's console log goes to stdout, and a second copy there would
        # print the line twice in a terminal.
        print(f"{len(failures)} failed job(s) in {sweep_dir}: {names}", file=sys.stderr)
        sys.exit(1)
