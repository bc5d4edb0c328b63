"""What every YAML-backed configuration shares: strict pydantic models, pixel-unit budgets, one YAML
loader, ``key=value`` overrides and error messages that name the key and the fix.

Why one module: run configs, experiment files and sweep files are validated the same way; each error
(an unknown key with the nearest valid spelling, ``eps=8`` that must mean ``8/255``, a file that is not
a YAML mapping) is worded once here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from robustdx.core.errors import ConfigError
from robustdx.core.registry import suggest

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


def parse_fraction(value: Any) -> Any:
    """Accept ``"8/255"`` as well as ``0.0314`` for pixel-unit budgets."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise ValueError(f"{value!r} divides by zero")
            return float(m.group(1)) / den
    return value


def pixel_budget_error(value: float, name: str = "eps") -> str:
    """The message for a budget above 1 on [0, 1] images (almost always a forgotten ``/255``)."""
    return f"got {name}={value:g} but inputs are in [0, 1]: did you mean {value:g}/255?"


def check_pixel_budget(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(pixel_budget_error(value))
    return value


PixelFloat = Annotated[float, BeforeValidator(parse_fraction)]
"""A float that may be written as a fraction (``"4/255"``)."""
PixelBudget = Annotated[PixelFloat, AfterValidator(check_pixel_budget)]
"""An L∞ budget in [0, 1] pixel units (``"4/255"`` allowed); above 1 is refused with the /255 hint."""


def _section(model: type[BaseModel], path: Sequence[str]) -> type[BaseModel]:
    """The pydantic model at ``path`` below ``model`` (unwrapping ``X | None``)."""
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return model
        model = nested[0]
    return model


def format_errors(err: ValidationError, model: type[BaseModel], what: str = "configuration") -> str:
    """One line per problem, naming the key; an unknown key gets the valid keys of *its* section and the
    nearest spelling."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            valid = list(_section(model, loc[:-1]).model_fields)
            msg = f"unknown key.{suggest(loc[-1], valid)} Valid: {', '.join(valid)}"
        elif "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {'.'.join(loc) or '<root>'}: {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. pretrain.epochs=2)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def validate(model: type[M], raw: Mapping[str, Any], overrides: Sequence[str] = (), what: str = "configuration") -> M:
    """``model`` from a raw mapping plus overrides (the mapping is not modified); :class:`ConfigError` on failure."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a {what} must be a mapping at the top level, got {type(raw).__name__}")
    data = apply_overrides(copy.deepcopy(dict(raw)), overrides)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, model, what)) from None


def load_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file's top-level mapping; :class:`ConfigError` naming the file when it is missing, not YAML or
    not a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def resolve_beside(path: Path, reference: Path) -> Path:
    """A relative ``path`` named in the file ``reference``: next to that file when it exists there, else as given
    (from the working directory)."""
    if path.is_absolute():
        return path
    beside = reference.parent / path
    return beside if beside.is_file() else path
