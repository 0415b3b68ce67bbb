"""Job configs: YAML file + CLI overrides, validated by pydantic at the boundary.

Every error is reported at once, each naming its field (`model.rate_limit.requests_per_s: ...`),
before any Ray work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError

from bpo_ray.errors import ConfigError

C = TypeVar("C", bound=BaseModel)

Paths = Annotated[list[str], BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]
"""A config's input paths: one path or a list of them."""


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build `cls` from an optional YAML file, then dotted-key overrides (None values skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config: {path}: no such file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config: {path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config: {path}: expected a mapping at the top level")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(path) if path else None)) from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def format_validation_error(exc: ValidationError, source: str | None = None) -> str:
    lines = [f"invalid config{f' ({source})' if source else ''}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)
