"""What every output records about how it was made."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Provenance(BaseModel):
    """Stored as attributes (JSON) on every Zarr store, HDF5 file and run folder."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="Which stage wrote the output, e.g. 'simulate-drr'.")
    software_version: str
    config: dict[str, Any] = Field(description="The validated stage config, as JSON.")
    config_sha256: str = Field(description="Hash of the part of the config that decides the output's content.")
    manifest_sha256: str | None = None
    checkpoint_sha256: str | None = None
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity of manifests and checkpoints. Read into one reused
    256 KB buffer, so the memory stays the same for any size of file."""
    h = hashlib.sha256()
    buffer = bytearray(1 << 18)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def json_sha256(payload: Any) -> str:
    """sha256 of a JSON-able value with sorted keys: the identity of a config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
