"""Commit files of the embedding cache: one small .npz per commit, made visible atomically.

A shard is written to a temporary name, flushed to disk (fsync) and renamed into
place (``os.replace``, atomic on POSIX), and the folder is fsynced so that the
rename itself survives a power cut. A process killed at any moment therefore
leaves either a complete shard or none; leftovers with temporary names are
removed by the next run. Shards hold only NumPy arrays (no pickle).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.runtime import TMP_MARK, atomic_path
from schemas.labels import N_LABELS

SHARD_NAME = re.compile(r"^(\d{8})\.npz$")


@dataclass
class Rows:
    """Finished cache rows (and failed items) of one commit."""

    ids: list[str] = field(default_factory=list)
    scan_ids: list[str] = field(default_factory=list)
    ct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (n, latent dim)
    report: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, N_LABELS), np.uint8))
    failed_ids: list[str] = field(default_factory=list)
    failed_reasons: list[str] = field(default_factory=list)
    # sha256 of the manifest row each latent was made from (schemas.embed.embed_row_sha256); '' = not recorded
    row_sha256: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not self.row_sha256:
            self.row_sha256 = [""] * n
        if len(self.row_sha256) != n:
            raise ValueError(f"inconsistent rows: {n} ids, {len(self.row_sha256)} row hashes")
        shapes = {
            "scan_ids": (len(self.scan_ids),),
            "ct": self.ct.shape,
            "report": self.report.shape,
            "labels": self.labels.shape,
        }
        dim = self.ct.shape[1] if self.ct.ndim == 2 else -1
        expected = {"scan_ids": (n,), "ct": (n, dim), "report": (n, dim), "labels": (n, N_LABELS)}
        bad = {k: v for k, v in shapes.items() if tuple(v) != expected[k]}
        if bad or len(self.failed_ids) != len(self.failed_reasons):
            raise ValueError(f"inconsistent rows for {n} ids: {bad or 'failed ids/reasons differ in length'}")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        full = [p for p in parts if len(p)]  # commits of failures only have no latents to stack
        if not full:
            return Rows(
                failed_ids=[i for p in parts for i in p.failed_ids],
                failed_reasons=[r for p in parts for r in p.failed_reasons],
            )
        return Rows(
            ids=[i for p in full for i in p.ids],
            scan_ids=[i for p in full for i in p.scan_ids],
            ct=np.concatenate([p.ct for p in full]).astype(np.float32, copy=False),
            report=np.concatenate([p.report for p in full]).astype(np.float32, copy=False),
            labels=np.concatenate([p.labels for p in full]).astype(np.uint8, copy=False),
            failed_ids=[i for p in parts for i in p.failed_ids],
            failed_reasons=[r for p in parts for r in p.failed_reasons],
            row_sha256=[h for p in full for h in p.row_sha256],
        )

    def select(self, keep: list[int]) -> Rows:
        """The rows at positions ``keep`` (no failures)."""
        return Rows(
            ids=[self.ids[i] for i in keep],
            scan_ids=[self.scan_ids[i] for i in keep],
            ct=self.ct[keep],
            report=self.report[keep],
            labels=self.labels[keep],
            row_sha256=[self.row_sha256[i] for i in keep],
        )


def _str_array(values: list[str]) -> np.ndarray:
    # A fixed-width unicode array: stored by np.savez without pickle.
    return np.array(values, dtype=str) if values else np.zeros((0,), dtype="<U1")


class ShardFolder:
    """The folder of pending commits beside the HDF5 file (``<out>.parts/``)."""

    def __init__(self, folder: Path, identity_sha256: str):
        self.folder = folder
        self.identity_sha256 = identity_sha256

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if SHARD_NAME.match(p.name))

    def remove_leftovers(self) -> None:
        """Temporary files of a commit that was interrupted before its rename (``.<shard>.tmp``:
        the name before the shared ``runtime.atomic_path``)."""
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                if p.name.startswith(".") and (TMP_MARK in p.name or p.name.endswith(".tmp")):
                    p.unlink(missing_ok=True)

    def write(self, rows: Rows) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = self.files()
        last = SHARD_NAME.match(existing[-1].name) if existing else None  # files() lists only matching names
        seq = int(last.group(1)) + 1 if last else 0
        final = self.folder / f"{seq:08d}.npz"
        with atomic_path(final) as tmp, tmp.open("wb") as f:
            np.savez(
                f,
                identity_sha256=np.array(self.identity_sha256),
                ids=_str_array(rows.ids),
                scan_ids=_str_array(rows.scan_ids),
                ct=np.ascontiguousarray(rows.ct, dtype=np.float32),
                report=np.ascontiguousarray(rows.report, dtype=np.float32),
                labels=np.ascontiguousarray(rows.labels, dtype=np.uint8),
                failed_ids=_str_array(rows.failed_ids),
                failed_reasons=_str_array(rows.failed_reasons),
                row_sha256=_str_array(rows.row_sha256),
            )
        return final

    def read(self, path: Path) -> Rows | None:
        """A shard's rows; None (with a warning, the file set aside as .bad) if unreadable or foreign."""
        try:
            return read_shard(path, self.identity_sha256)
        except Exception as e:  # a damaged or foreign shard must not stop the run; its items are redone
            bad = path.with_name(path.name + ".bad")
            os.replace(path, bad)
            warnings.warn(
                f"{path}: unusable commit file ({e}); set aside as {bad.name}, its items will be embedded again",
                stacklevel=2,
            )
            return None

    def discard_all(self) -> None:
        for p in self.files():
            p.unlink(missing_ok=True)
        self.remove_leftovers()


def read_shard(path: Path, identity_sha256: str) -> Rows:
    """The rows of one commit file; raises if it is damaged or was made with another identity."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["identity_sha256"]) != identity_sha256:
            raise ValueError("made by a run with another checkpoint or preprocessing")
        return Rows(
            ids=[str(x) for x in z["ids"]],
            scan_ids=[str(x) for x in z["scan_ids"]],
            ct=z["ct"],
            report=z["report"],
            labels=z["labels"],
            failed_ids=[str(x) for x in z["failed_ids"]],
            failed_reasons=[str(x) for x in z["failed_reasons"]],
            row_sha256=[str(x) for x in z["row_sha256"]],
        )
