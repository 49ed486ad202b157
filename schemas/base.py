"""The one base of every stage config: unknown keys are an error, not silently ignored
(a misspelt option in a ``--config`` file must not fall back to its default)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
