"""Read an embedding cache (for training, evaluation and checks). Never writes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.embed.shards import SHARD_NAME
from schemas.embed import PROMPT_TEMPLATES, EmbedIdentity
from schemas.provenance import Provenance


@dataclass
class Embeddings:
    ids: list[str]
    scan_ids: list[str]
    ct: np.ndarray  # (N, 512) float32
    report: np.ndarray  # (N, 512) float32
    labels: np.ndarray  # (N, 18) uint8, 255 = unknown
    temperature: float
    prompts: dict[str, dict[str, np.ndarray]]  # set -> positive/negative (18, 512)
    failures: dict[str, str]
    identity: EmbedIdentity
    provenance: Provenance

    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.ids)}


def load_embeddings(path: str | Path) -> Embeddings:
    """All of a cache in memory (a 50k-volume cache is about 200 MB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding cache {path} does not exist; make it with `x2ct-pipeline embed-ct`")
    parts = path.with_name(path.name + ".parts")
    if parts.is_dir() and any(SHARD_NAME.match(p.name) for p in parts.iterdir()):
        warnings.warn(f"{path}: a run was interrupted; its last committed rows are in {parts} until embed-ct runs again")
    with h5py.File(path, "r") as f:
        return Embeddings(
            ids=list(f["ids"].asstr()[:]),
            scan_ids=list(f["scan_ids"].asstr()[:]),
            ct=f["ct"][:],
            report=f["report"][:],
            labels=f["labels"][:],
            temperature=float(f["temperature"][()]),
            prompts={s: {k: f[f"prompts/{s}/{k}"][:] for k in ("positive", "negative")} for s in PROMPT_TEMPLATES},
            failures=dict(zip(f["failures/ids"].asstr()[:], f["failures/reasons"].asstr()[:])),
            identity=EmbedIdentity.model_validate_json(f.attrs["identity"]),
            provenance=Provenance.model_validate(json.loads(f.attrs["provenance"])),
        )
