"""Checks of `autoexp-train`'s command line, before Hydra creates any run folder."""

import itertools
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from autoexp.config.validation import ConfigError, leaf_keys, suggestion, validate_config

# Exit code for an invalid command line or config, as argparse uses.
USAGE_ERROR = 2

# Hydra flags that print something and run no job.
INFORMATIONAL_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "version")


def _compose(config_dir: str, config_name: str, overrides: list[str], extra_dir: str | None):
    GlobalHydra.instance().clear()
    # With --config-dir (a saved run's .hydra folder, say), the config comes from that folder.
    primary_dir = str(Path(extra_dir).absolute()) if extra_dir else config_dir
    try:
        with initialize_config_dir(config_dir=primary_dir, version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    # Hydra sets the run folder only when the job starts, and nothing may create it before, so
    # interpolations of ${hydra:runtime.output_dir} resolve to a placeholder during the checks.
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = "RUN_FOLDER"
    HydraConfig.instance().set_config(cfg)
    return cfg


def _options_with_key(config_dir: str, key: str) -> list[str]:
    """Return the options of a config group whose YAML file sets key, e.g. the model configs
    that have `solver` for key `model.solver`."""
    group, _, rest = key.partition(".")
    folder = Path(config_dir) / group
    if not rest or not folder.is_dir():
        return []
    options = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            node = OmegaConf.load(path)
        except Exception:  # a file that does not parse cannot hold the key
            continue
        # A config in the _global_ package spells the group in its keys (model.solver).
        global_package = "@package _global_" in path.read_text().split("\n", 1)[0]
        selected = key if global_package else rest
        if OmegaConf.select(node, selected, default=None, throw_on_missing=False) is not None:
            options.append(path.stem)
    return options


def _explain_nested_key(full_key: str, compose_groups_only) -> str:
    """Explain an override value that sets a key (full_key) its config node lacks."""
    # The node that lacks the key, which can lie deeper than the overridden key.
    parent = full_key.rpartition(".")[0]
    try:
        node = OmegaConf.select(compose_groups_only(), parent, default=None)
    except HydraException:
        node = None
    names = [str(name) for name in node] if isinstance(node, DictConfig) else []
    keys = f" (its keys: {', '.join(names)})" if names else ""
    # A replacement must name its class again, or instantiating it fails.
    value = "{_target_:...,...}" if "_target_" in names else "{...}"
    return (
        f"{full_key}: unknown key in {parent}{keys}; to replace {parent} as a whole, remove "
        f"it first: ~{parent} '+{parent}={value}'"
    )


def _explain_composition_error(error: HydraException, compose_groups_only, config_dir: str) -> str:
    message = str(error).strip()
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        # A dict value with a key that the config node lacks: model.lr_scheduler={...,step_size:1}.
        full_key = getattr(error.__cause__, "full_key", None)
        if isinstance(full_key, str) and full_key.startswith(key + "."):
            return _explain_nested_key(full_key, compose_groups_only)
        owners = _options_with_key(config_dir, key)
        if owners:
            group = key.partition(".")[0]
            return (
                f"{key}: unknown key for the selected {group}; it is a setting of "
                f"{', '.join(owners)} (select one with {group}=...)"
            )
        try:
            candidates = list(leaf_keys(compose_groups_only()))
        except HydraException:
            candidates = []
        # Keys such as _target_ and _recursive_ are instantiation flags, not settings.
        candidates = [name for name in candidates if not re.search(r"(^|\.)_", name)]
        hint = suggestion(key, candidates)
        return f"{key}: unknown key{hint}"
    missing = re.match(r"In '[^']+': Could not find '([^/']+)/([^']+)'", message)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", message, flags=re.MULTILINE)
        hint = suggestion(option, options, substrings=True)
        return f"{group}={option}: no such option of group '{group}' (options: {options}){hint}"
    return " ".join(message.split())


def _explain_value_error(error: ValueError, overrides: list[str]) -> str:
    """Explain a ValueError that Hydra raised while composing, e.g. for `callbacks=null`."""
    message = " ".join(str(error).split())
    if message.startswith("Config group override must be"):
        for override in overrides:
            group, _, value = override.partition("=")
            if value == "null" and "." not in group:
                return (
                    f"{override}: a config group cannot be set to null on the command line; "
                    f"drop its default with ~{group}"
                )
    return message


def _sweep_values(override) -> list[str]:
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _job_overrides(overrides: list[str], cfg: DictConfig, multirun: bool) -> list[list[str]]:
    """Return the overrides of each job: one job unless this is a multirun sweep."""
    if not multirun:
        return [overrides]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    command_line_keys = {override.get_key_element() for override in parsed}
    from_config = parser.parse_overrides(
        [f"{key}={value}" for key, value in params.items() if key not in command_line_keys]
    )
    choices = []
    for override in [*from_config, *parsed]:
        if override.is_sweep_override():
            choices.append(_sweep_values(override))
        else:
            choices.append([override.input_line])
    return [list(combination) for combination in itertools.product(*choices)]


def check_command_line(argv: list[str], config_dir: str, config_name: str) -> int:
    """Compose and validate the config of every job that `argv` would run.

    Prints one line per problem to stderr. Returns 0 when the jobs may start, else
    USAGE_ERROR. In a multirun, combinations that are invalid while others are valid only get
    a warning: those jobs fail on their own and the rest of the sweep runs.
    """
    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag, None) for flag in INFORMATIONAL_FLAGS):
        return 0
    name = args.config_name or config_name
    overrides = list(args.overrides)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as error:
        return report([" ".join(str(error).split())])

    fixed = [o.input_line for o in parsed if not (args.multirun and o.is_sweep_override())]
    groups_only = [o.input_line for o in parsed if "." not in o.get_key_element()]

    def compose_groups_only():
        return _compose(
            config_dir, name, [g for g in groups_only if "," not in g], args.config_dir
        )

    try:
        base = _compose(config_dir, name, fixed, args.config_dir)
        jobs = _job_overrides(overrides, base, args.multirun)
    except (ConfigCompositionException, MissingConfigException, HydraException) as error:
        return report([_explain_composition_error(error, compose_groups_only, config_dir)])
    except ValueError as error:
        return report([_explain_value_error(error, fixed)])

    failures: dict[str, list[str]] = {}
    for job in jobs:
        try:
            cfg = _compose(config_dir, name, job, args.config_dir)
            validate_config(cfg)
        except ConfigError as error:
            failures[",".join(job)] = error.problems
        except (ConfigCompositionException, MissingConfigException, HydraException) as error:
            failures[",".join(job)] = [
                _explain_composition_error(error, compose_groups_only, config_dir)
            ]
        except ValueError as error:
            failures[",".join(job)] = [_explain_value_error(error, job)]

    if not failures:
        return 0
    if len(failures) < len(jobs):
        for job, problems in failures.items():
            for problem in problems:
                print(f"autoexp-train: warning: job {job} will fail: {problem}", file=sys.stderr)
        return 0
    first_problems = next(iter(failures.values()))
    return report(first_problems)


def report(problems: list[str]) -> int:
    for problem in problems:
        print(f"autoexp-train: error: {problem}", file=sys.stderr)
    print("autoexp-train: nothing was run; fix the config and try again", file=sys.stderr)
    return USAGE_ERROR
