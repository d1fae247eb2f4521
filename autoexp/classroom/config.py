"""Compose conf/train.yaml for the scripts, and keep the overrides with the files they make."""

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from autoexp.train import CONFIG_DIR

# Applied before the user's overrides, so the user can still turn them back on. A progress bar
# for each of many short runs would bury the losses the scripts print.
SCRIPT_DEFAULTS = ["trainer.enable_progress_bar=false"]


def override_key(override: str) -> str:
    """Return the key or config group that a Hydra override sets, without its +, ++ or ~."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.get_key_element().lstrip("+~")


def merge_overrides(previous: list[str], new: list[str]) -> list[str]:
    """Return previous followed by new, without the earlier overrides of a key that new sets.

    Each override is parsed, so an invalid one raises Hydra's OverrideParseException here.
    """
    new_keys = {override_key(override) for override in new}
    kept = [override for override in previous if override_key(override) not in new_keys]
    return [*kept, *new]


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose conf/train.yaml with overrides as autoexp-train does, outside a Hydra run.

    Args:
        overrides: Hydra overrides, e.g. ["data=fashion_mnist", "model.latent_dim=16"].
        output_dir: Value of paths.output_dir, which autoexp-train takes from Hydra's run folder.

    Raises:
        hydra.errors.HydraException: An override is invalid or names an unknown option.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*SCRIPT_DEFAULTS, *overrides])
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """Return the config as plain containers, without the paths of one invocation."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("paths", None)
    return container
