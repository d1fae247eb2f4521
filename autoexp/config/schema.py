"""Typed schemas (OmegaConf structured configs) of the config groups.

The schema of a node with a `_target_` is a dataclass made from the target's annotated
signature, so the code that a config builds is also the one place that states its keys and
their types. Nodes without a target (the top level, `paths`) have hand-written dataclasses.
"""

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from hydra.utils import get_class
from omegaconf import MISSING

SIMPLE_TYPES = (int, float, bool, str)

# Keys that Hydra's instantiate reads from any node with a target.
INSTANTIATE_KEYS = ("_target_", "_recursive_", "_partial_", "_convert_", "_args_")


@dataclass
class TopLevelSchema:
    """Keys at the top of conf/train.yaml, besides the config groups."""

    seed: int = 0
    ckpt_path: Optional[str] = None  # noqa: UP045 (OmegaConf 2.3 reads typing.Optional only)
    test: bool = True


@dataclass
class PathsSchema:
    """The `paths` group."""

    data_dir: str = "data"
    log_dir: str = "outputs"
    output_dir: str = MISSING


@dataclass
class TargetSchema:
    """A dataclass schema made from a target's signature, and whether it takes **kwargs."""

    schema: type
    accepts_any_key: bool
    keys: tuple[str, ...] = field(default_factory=tuple)


def omegaconf_type(hint: Any) -> Any:
    """Return the closest type that OmegaConf 2.3 can check for an annotation, or Any."""
    if hint in SIMPLE_TYPES:
        return hint
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        others = [argument for argument in arguments if argument is not type(None)]
        inner = [omegaconf_type(argument) for argument in others]
        if len(inner) == 1 and inner[0] is not Any:
            # OmegaConf 2.3 reads typing.Optional, not the X | None union type.
            return Optional[inner[0]] if len(others) < len(arguments) else inner[0]  # noqa: UP045
        if set(others) == {int, float}:
            return float
        lists = [kind for kind in inner if typing.get_origin(kind) is list]
        if lists and len(lists) == len(inner):
            return Optional[lists[0]] if len(others) < len(arguments) else lists[0]  # noqa: UP045
        return Any
    if origin in (list, tuple) and arguments and arguments[0] in SIMPLE_TYPES:
        if origin is tuple and len(arguments) > 1 and arguments[1] is not Ellipsis:
            return Any  # a fixed-length tuple such as (channels, height, width)
        return list[arguments[0]]
    return Any


@functools.cache
def target_schema(target: str) -> TargetSchema:
    """Return the schema of the keyword arguments that `target` (a class path) accepts.

    Raises:
        ImportError: The target cannot be imported.
    """
    target_class = get_class(target)
    signature = inspect.signature(target_class)
    try:
        hints = typing.get_type_hints(target_class.__init__)
    except (NameError, TypeError, AttributeError):
        hints = {}

    fields: list[tuple[str, Any, Any]] = [
        (name, Any, dataclasses.field(default=None)) for name in INSTANTIATE_KEYS
    ]
    accepts_any_key = False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any_key = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        fields.append(
            (name, omegaconf_type(hints.get(name, Any)), dataclasses.field(default=MISSING))
        )
    schema = dataclasses.make_dataclass(f"{target_class.__name__}Schema", fields)
    keys = tuple(name for name, _, _ in fields)
    return TargetSchema(schema, accepts_any_key, keys)
