"""``--config FILE`` (YAML or JSON) merged with command-line flags, validated by pydantic.

Flags override the file; a flag left at ``None`` (not given) does not. Nested
fields are addressed with dots, e.g. ``{"ct.hu_policy": "csv"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas.errors import PipelineError

M = TypeVar("M", bound=BaseModel)


class ConfigError(PipelineError, ValueError):
    """A config file or option is unusable; the message names the option."""


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return data


def build_config(model: type[M], config_file: Path | None, overrides: dict[str, Any]) -> M:
    """The file's values, then every override that is not None, validated as ``model``."""
    data = read_config_file(config_file) if config_file is not None else {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f" (from {config_file} and flags)" if config_file else ""
        msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(config)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid {model.__name__}{where}: {msgs}") from None
