"""Read an embedding cache (for training, evaluation and checks). Never writes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.embed.shards import SHARD_NAME, read_shard
from schemas.embed import PROMPT_TEMPLATES, EmbedIdentity
from schemas.errors import InputMissingError, PipelineError
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
    row_sha256: list[str] = field(default_factory=list)  # per row: hash of the manifest row it came from

    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.ids)}


class NotACacheError(PipelineError):
    """The file is not an embed-ct cache (another file, or a damaged one)."""


def load_embeddings(path: str | Path, include_pending: bool = True) -> Embeddings:
    """All of a cache in memory (a 50k-volume cache is about 200 MB).

    Rows committed by a run that was killed before its final merge wait in
    ``<path>.parts/``; with ``include_pending`` (the default) they are read too, so
    the cache holds every row committed before the kill. Nothing is written: the
    next ``embed-ct`` run merges them into the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"embedding cache {path} does not exist; make it with `x2ct-pipeline embed-ct`")
    try:
        emb, identity_sha256 = _read_cache(path)
    except (OSError, KeyError, ValueError) as e:  # not HDF5, truncated, or an HDF5 file of another kind
        raise NotACacheError(
            f"{path} is not an embed-ct cache ({type(e).__name__}: {str(e)[:120]}); give the .h5 file embed-ct wrote"
        ) from None
    parts = path.with_name(path.name + ".parts")
    pending = sorted(p for p in parts.iterdir() if SHARD_NAME.match(p.name)) if parts.is_dir() else []
    if pending and not include_pending:
        warnings.warn(
            f"{path}: a run was interrupted; its last committed rows are in {parts} until embed-ct runs again",
            stacklevel=2,
        )
    elif pending:
        _add_pending(emb, pending, identity_sha256)
    return emb


def _read_cache(path: Path) -> tuple[Embeddings, str]:
    """The HDF5 file's rows and its identity hash (pending commit files aside)."""
    with h5py.File(path, "r") as f:
        emb = Embeddings(
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
            row_sha256=list(f["row_sha256"].asstr()[:]) if "row_sha256" in f else [""] * f["ids"].shape[0],
        )
        return emb, str(f.attrs["identity_sha256"])


def _add_pending(emb: Embeddings, shards: list[Path], identity_sha256: str) -> None:
    """Append the rows of pending commit files that the HDF5 file does not hold yet (in commit order)."""
    known = set(emb.ids)
    for shard in shards:
        try:
            rows = read_shard(shard, identity_sha256)
        except Exception as e:  # the writer sets such a file aside on its next run; a reader only skips it
            warnings.warn(f"{shard}: unusable commit file ({e}); its rows are left out", stacklevel=2)
            continue
        new = [i for i, v in enumerate(rows.ids) if v not in known]
        if new:
            emb.ids += [rows.ids[i] for i in new]
            emb.scan_ids += [rows.scan_ids[i] for i in new]
            emb.ct = np.concatenate([emb.ct, rows.ct[new]])
            emb.report = np.concatenate([emb.report, rows.report[new]])
            emb.labels = np.concatenate([emb.labels, rows.labels[new]])
            emb.row_sha256 += [rows.row_sha256[i] for i in new]
            known.update(rows.ids[i] for i in new)
        emb.failures.update(zip(rows.failed_ids, rows.failed_reasons))
    for vid in known & emb.failures.keys():  # a later success clears an earlier failure
        del emb.failures[vid]
