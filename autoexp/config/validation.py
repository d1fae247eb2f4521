"""Checks of a composed config, run before anything is created, downloaded or trained.

Each problem becomes one line that names the full key, the value given and what is expected.
"""

import difflib
import math
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from autoexp.config.schema import PathsSchema, TopLevelSchema, target_schema

CONFIG_GROUPS = ("data", "model", "trainer", "logger", "callbacks", "paths")


class ConfigError(ValueError):
    """An invalid config; the message has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def describe_type(kind: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if kind in names:
        return names[kind]
    arguments = [argument for argument in typing.get_args(kind) if argument is not type(None)]
    if typing.get_origin(kind) is list:
        return f"a list of {describe_type(arguments[0]).removeprefix('an ').removeprefix('a ')}s"
    if len(arguments) == 1:
        return f"null or {describe_type(arguments[0])}"
    return str(kind)


def suggestion(key: str, candidates: list[str], substrings: bool = False) -> str:
    """Return "; did you mean 'x'?" for the closest candidate, or "" when none is close.

    With substrings, a candidate that contains key (`linear_pca_ae` for `pca`) also counts
    when no candidate is close by spelling.
    """
    matches = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not matches and substrings and len(key) >= 2:
        matches = [candidate for candidate in candidates if key.lower() in candidate.lower()]
    if len(matches) > 1:
        # When every candidate matches, the hint would only repeat the list of options.
        return f"; did you mean one of {matches}?" if len(matches) < len(candidates) else ""
    return f"; did you mean '{matches[0]}'?" if matches else ""


def raw_value(node: DictConfig, key: str) -> Any:
    child = node._get_node(key)
    if isinstance(child, DictConfig | ListConfig):
        return OmegaConf.to_container(child)
    return child._value()


def check_node(node: DictConfig, schema: type, prefix: str, accepts_any_key: bool) -> list[str]:
    """Return the unknown keys and wrong value types of one node under a dataclass schema."""
    problems = []
    fields = schema.__dataclass_fields__
    public = sorted(name for name in fields if not name.startswith("_"))
    structured = OmegaConf.structured(schema)
    for key in node.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            if not accepts_any_key:
                hint = suggestion(
                    path, [f"{prefix}.{name}" if prefix else name for name in public]
                )
                problems.append(f"{path}: unknown key{hint or f' (valid keys: {public})'}")
            continue
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        value = raw_value(node, key)
        try:
            structured[key] = value
        except ValidationError:
            expected = describe_type(fields[key].type)
            problems.append(f"{path}={value!r} is invalid: expected {expected}")
            continue
        # OmegaConf turns a quoted "3" into 3 for an int field, but the config keeps the
        # string, which the range checks and the target's code would then receive.
        converted = structured[key]
        if isinstance(converted, bool) and not isinstance(value, bool):
            # OmegaConf also reads 1, 0, "yes", "no", "on" and "off" as booleans.
            problems.append(
                f"{path}={value!r} is invalid: expected true or false; pass "
                f"{path}={str(converted).lower()}"
            )
            continue
        if isinstance(value, str) and isinstance(converted, bool | int | float):
            expected = describe_type(fields[key].type)
            problems.append(
                f"{path}={value!r} is invalid: expected {expected}, got a string; "
                f"drop the quotes: {path}={value}"
            )
    return problems


def target_nodes(node: Any, prefix: str) -> Iterator[tuple[str, DictConfig]]:
    """Yield each node at or below `node` that has a `_target_`, with its dotted path."""
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        yield prefix, node
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from target_nodes(child, f"{prefix}.{key}")


def check_schema(cfg: DictConfig) -> list[str]:
    """Return unknown keys and wrong value types, checked against each group's schema."""
    top_level = OmegaConf.masked_copy(
        cfg, [key for key in cfg.keys() if key not in (*CONFIG_GROUPS, "hydra")]
    )
    problems = check_node(top_level, TopLevelSchema, "", accepts_any_key=False)
    if isinstance(cfg.get("paths"), DictConfig):
        problems += check_node(cfg.paths, PathsSchema, "paths", accepts_any_key=False)

    for group in ("data", "model", "trainer", "logger", "callbacks"):
        for path, node in target_nodes(cfg._get_node(group) if group in cfg else None, group):
            target = raw_value(node, "_target_")
            try:
                schema = target_schema(target)
            except (ImportError, ValueError) as error:
                problems.append(f"{path}._target_={target!r} cannot be imported: {error}")
                continue
            problems += check_node(node, schema.schema, path, schema.accepts_any_key)
    return problems


def leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for key in node.keys():
            yield from leaf_keys(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, ListConfig):
        yield prefix
    else:
        yield prefix


def check_resolvable(cfg: DictConfig) -> list[str]:
    """Return the missing mandatory values (`???`) and the interpolations that fail."""
    problems = []
    for key in leaf_keys(cfg):
        # Hydra fills these in when the job starts.
        if key.startswith("hydra.") or key == "paths.output_dir":
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig) and OmegaConf.is_missing(parent, leaf):
            problems.append(f"{key}: missing mandatory value (???); set it with {key}=VALUE")
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as error:
            detail = str(error).splitlines()[0]
            problems.append(f"{key}: interpolation failed to resolve: {detail}")
    return problems


def model_name(cfg: DictConfig) -> str | None:
    from autoexp.models import MODELS

    target = str(OmegaConf.select(cfg, "model._target_", default="")).rsplit(".", 1)[-1]
    names = [name for name, model_class in MODELS.items() if model_class.__name__ == target]
    return names[0] if names else None


def check_values(cfg: DictConfig) -> list[str]:
    """Return out-of-range values and model limits that the data set breaks."""
    from autoexp.data.datamodule import PIXEL_DTYPES
    from autoexp.data.splits import DATASETS, IMAGE_SHAPES, count_split_images

    problems = []
    data, model, trainer = cfg.get("data"), cfg.get("model"), cfg.get("trainer")
    latent_dim = model.get("latent_dim") if model is not None else None
    if latent_dim is not None and latent_dim < 1:
        problems.append(f"model.latent_dim={latent_dim} must be >= 1")
    lr = OmegaConf.select(cfg, "model.optimizer.lr", default=None)
    if isinstance(lr, int | float) and not (lr > 0 and math.isfinite(lr)):
        problems.append(f"model.optimizer.lr={lr} must be finite and > 0, for example 1e-3")
    elif isinstance(lr, str):
        problems.append(
            f"model.optimizer.lr={lr!r} is invalid: expected a number, got a string; drop the "
            f"quotes: model.optimizer.lr={lr}"
        )
    examples = {
        "model.optimizer": "torch.optim.Adam",
        "model.lr_scheduler": "torch.optim.lr_scheduler.StepLR",
    }
    for key, example in examples.items():
        node = OmegaConf.select(cfg, key, default=None)
        if isinstance(node, DictConfig) and "_target_" not in node:
            problems.append(
                f"{key} has no _target_, so no class can be built from it; name one, for "
                f"example +{key}._target_={example}"
            )
    seed = cfg.get("seed")
    if isinstance(seed, int) and not 0 <= seed < 2**32:
        problems.append(f"seed={seed} must be in [0, 2**32 - 1], the range that seeds NumPy")
    activation = OmegaConf.select(cfg, "model.activation", default=None)
    if model_name(cfg) == "mlp_ae" and activation is not None:
        from autoexp.models.mlp_ae import ACTIVATIONS

        if activation not in ACTIVATIONS:
            supported = sorted(ACTIVATIONS)
            problems.append(
                f"model.activation={activation!r} is not supported; use one of {supported}"
            )
    if trainer is not None:
        max_epochs = trainer.get("max_epochs")
        if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
            problems.append(f"trainer.max_epochs={max_epochs} must be >= 1 (or -1 for no limit)")
        max_steps = trainer.get("max_steps")
        if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
            problems.append(f"trainer.max_steps={max_steps} must be >= 1 (or -1 for no limit)")
        problems += check_accelerator(trainer.get("accelerator"))
        problems += check_profiler(trainer.get("profiler"))
    every_n_epochs = OmegaConf.select(cfg, "callbacks.image_logger.every_n_epochs", default=None)
    if isinstance(every_n_epochs, int) and every_n_epochs < 1:
        problems.append(
            f"callbacks.image_logger.every_n_epochs={every_n_epochs} must be >= 1 (1 logs "
            "images after every validation epoch)"
        )
    if data is None:
        return problems

    for key in ("batch_size", "eval_batch_size"):
        if data.get(key) is not None and data[key] < 1:
            problems.append(f"data.{key}={data[key]} must be >= 1")
    if data.get("num_workers") is not None and data.num_workers < 0:
        problems.append(f"data.num_workers={data.num_workers} must be >= 0 (0 loads in-process)")
    pixel_dtype = data.get("pixel_dtype")
    if pixel_dtype is not None and pixel_dtype not in PIXEL_DTYPES:
        problems.append(f"data.pixel_dtype={pixel_dtype!r} must be one of {PIXEL_DTYPES}")
    val_fraction = data.get("val_fraction")
    if val_fraction is not None and not 0 < val_fraction < 1:
        problems.append(f"data.val_fraction={val_fraction} must be in (0, 1), for example 0.1")
    name = data.get("name")
    if name not in DATASETS:
        problems.append(f"data.name={name!r} is not a known data set; use one of {DATASETS}")
        return problems
    test_fraction = data.get("test_fraction")
    if name == "digits" and (test_fraction is None or not 0 < test_fraction < 1):
        problems.append(
            f"data.test_fraction={test_fraction} must be in (0, 1) for digits, which has no "
            "test split of its own; for example 0.2"
        )
    if problems or latent_dim is None or latent_dim < 1:
        return problems

    if name != "digits" and not data.get("download"):
        from autoexp.data.sources import find_idx_files

        try:
            find_idx_files(name, data.get("root") or "data")
        except FileNotFoundError as error:
            return [*problems, f"data.root={data.get('root')!r}: {error}"]

    n_pixels = math.prod(IMAGE_SHAPES[name])
    counts = count_split_images(name, data.get("root"), val_fraction, test_fraction)
    n_train = None if counts is None else counts["train"]
    if n_train == 0:
        fractions = f"data.val_fraction={val_fraction}"
        if name == "digits":
            fractions += f" and data.test_fraction={test_fraction}"
        return [
            *problems,
            f"{fractions} leave no training images of {name}; choose smaller fractions",
        ]
    if counts is not None and counts["val"] == 0:
        fix = "a larger data.val_fraction"
        if name == "digits":
            fix += " or a smaller data.test_fraction"
        return [
            *problems,
            f"data.val_fraction={val_fraction} of the {counts['train']} images left for "
            f"training and validation leaves no validation images of {name}; choose {fix}",
        ]
    if counts is not None and counts["test"] == 0:
        return [
            *problems,
            f"data.test_fraction={test_fraction} leaves no test images of {name}; choose a "
            "larger fraction, e.g. 0.2",
        ]
    kind = model_name(cfg)
    if kind == "linear_pca_ae" and latent_dim > n_pixels:
        problems.append(
            f"model.latent_dim={latent_dim} must be <= {n_pixels}, the number of pixels of "
            f"{name} images, for linear_pca_ae; choose fewer components"
        )
    limit_by_images = kind in ("linear_pca_ae", "kmeans_ae")
    if limit_by_images and n_train is not None and latent_dim > n_train:
        what = "clusters" if kind == "kmeans_ae" else "components"
        problems.append(
            f"model.latent_dim={latent_dim} ({what}) must be <= {n_train}, the number of "
            f"training images of {name}, for {kind}; choose a smaller model.latent_dim"
        )
    problems += check_eigh_steps(cfg, n_train)
    return problems


def check_eigh_steps(cfg: DictConfig, n_train: int | None) -> list[str]:
    """Return a problem when trainer.max_steps ends the eigh solver's pass before its end.

    Only one process without limit_train_batches is checked here. The model checks the other
    cases when training starts, from the trainer's count of batches.
    """
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    batch_size = OmegaConf.select(cfg, "data.batch_size", default=None)
    single_process = (
        OmegaConf.select(cfg, "trainer.devices", default=1) == 1
        and OmegaConf.select(cfg, "trainer.num_nodes", default=1) == 1
        and OmegaConf.select(cfg, "trainer.limit_train_batches", default=None) in (None, 1.0)
    )
    if (
        model_name(cfg) != "linear_pca_ae"
        or OmegaConf.select(cfg, "model.solver", default=None) != "eigh"
        or not single_process
        or n_train is None
        or not isinstance(max_steps, int)
        or not isinstance(batch_size, int)
        or batch_size < 1
        or max_steps < 1
    ):
        return []
    n_batches = math.ceil(n_train / batch_size)
    if max_steps >= n_batches:
        return []
    return [
        f"trainer.max_steps={max_steps} stops the eigh solver before the end of its pass over "
        f"the {n_batches} training batches, so PCA would not be fitted; remove "
        f"trainer.max_steps or set it to {n_batches} or more"
    ]


def check_accelerator(accelerator: Any) -> list[str]:
    """Return a problem when the config requests a GPU that this machine does not have."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [
            f"trainer.accelerator={accelerator!r} but no CUDA GPU is available here; use "
            "trainer=cpu, or trainer=default to take a GPU only where there is one"
        ]
    return []


# The names that pytorch_lightning 2.6's Trainer accepts for its `profiler` argument. Any
# other string fails inside the Trainer with MisconfigurationException.
PROFILER_NAMES = ("simple", "advanced", "pytorch", "xla")


def check_profiler(profiler: Any) -> list[str]:
    """Return a problem when trainer.profiler is a string that Lightning does not accept."""
    if isinstance(profiler, str) and profiler.lower() not in PROFILER_NAMES:
        return [
            f"trainer.profiler={profiler!r} is not a Lightning profiler; use one of "
            f"{list(PROFILER_NAMES)}, for example +trainer.profiler=simple, or leave it unset"
        ]
    return []


def validate_config(cfg: DictConfig) -> None:
    """Check a composed training config.

    Raises:
        ConfigError: One or more problems, each on a line naming the key, value and fix.
    """
    problems = check_schema(cfg) + check_resolvable(cfg)
    if not problems:
        problems = check_values(cfg)
    if not problems:
        problems = check_model(cfg)
    if problems:
        raise ConfigError(problems)


def check_model(cfg: DictConfig) -> list[str]:
    """Build the config's model as training would, and check its initial centroids file
    and ckpt_path against it.

    The models check their own arguments (solver names, tolerances, counts) when they are
    built, so this catches those errors before any run folder exists.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from autoexp.checkpoint_io import check_resume_checkpoint
    from autoexp.data.splits import IMAGE_SHAPES
    from autoexp.models.kmeans_ae import INITS, read_centroids

    name = OmegaConf.select(cfg, "data.name", default=None)
    if cfg.get("model") is None or name not in IMAGE_SHAPES:
        return []
    try:
        model = instantiate(cfg.model, image_shape=list(IMAGE_SHAPES[name]))
    except InstantiationException as error:
        return [" ".join(str(error.__cause__ or error).split())]

    init = getattr(model, "init", None)
    if getattr(model, "model_name", None) == "kmeans_ae" and init not in INITS:
        try:
            model.set_initial_centroids(read_centroids(init))
        except FileNotFoundError as error:
            return [str(error)]
        except (ValueError, RuntimeError, OSError) as error:
            return [f"model.init={init!r}: {error}"]

    ckpt_path = cfg.get("ckpt_path")
    # `last` is resolved to a file before Hydra starts, and checked again then.
    if ckpt_path in (None, "", "last"):
        return []
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        return [f"ckpt_path={ckpt_path!r} not found: tried {path}"]
    # Checked here, before Hydra rewrites the run folder's config for the resumed leg.
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    try:
        check_resume_checkpoint(path, model, max_epochs)
    except ValueError as error:
        return [str(error)]
    return []
