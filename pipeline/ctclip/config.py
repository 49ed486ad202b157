"""Named CT-CLIP configs (JSON files in ``model_configs/``), open_clip style."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config_file import ConfigError
from schemas.ctclip import CTCLIPConfig

CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_config(name: str | Path | CTCLIPConfig = "official") -> CTCLIPConfig:
    """A config by name ('official', 'tiny'), by path to a JSON file, or passed through."""
    if isinstance(name, CTCLIPConfig):
        return name
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        path = Path(name)
        if not (path.suffix == ".json" and path.is_file()):
            raise ConfigError(
                f"unknown CT-CLIP config {str(name)!r}: use one of {list_configs()} or a path to a JSON file"
            )
    try:
        return CTCLIPConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid CT-CLIP config: {e}") from e
