"""The embedding cache: one HDF5 file, written by one process, never left half-written.

Why this design (what users are promised: docs/embed-ct.md). HDF5 keeps its
metadata (B-trees, heaps, superblock) in a cache in memory; a process killed
while a file is open for writing can leave that file unreadable, and SWMR mode
does not protect against a kill either. So the HDF5 file is never modified in
place:

* **Commit** (every ``commit_every`` rows): the rows go into a small shard file
  (:mod:`pipeline.embed.shards`), written to a temporary name, fsynced and
  renamed into place. Cost: the rows themselves, independent of the cache size.
* **Merge** (once the pending shards hold ``merge_fraction`` of the file's rows,
  at least ``merge_min_rows``, and at the end of every run): the HDF5 file is
  copied byte for byte to a temporary file (a sequential copy, about a second
  for the 200 MB of a 50k-volume cache), the pending rows are appended to the
  copy, the copy is fsynced and renamed over the file, and only then are the
  shards deleted. Because merges happen when the pending rows reach a fixed
  fraction of the file, the bytes copied over a whole run are a constant
  multiple (about 1/fraction) of the final file size, not quadratic in it.
* **Open** (every run): temporary files of an interrupted commit or merge are
  removed; shards whose rows are already in the file (a kill between the rename
  and the deletion) are skipped by id; the rest are merged.

A SIGKILL at any moment therefore leaves a readable HDF5 file plus complete
shards, and together they hold every row committed before the kill. The next
run (or :func:`EmbeddingCache.open`) folds the shards in. One writer at a time
is enforced with an advisory lock (``<out>.lock``), released by the OS even when
the process is killed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.embed.shards import Rows, ShardFolder
from pipeline.runtime import atomic_path, output_lock, remove_temporaries
from schemas.embed import EMBED_LAYOUT_VERSION, PROMPT_TEMPLATES, ROW_CHUNK, EmbedIdentity
from schemas.errors import PipelineError
from schemas.labels import CT_RATE_LABELS, N_LABELS
from schemas.provenance import Provenance

STR = h5py.string_dtype("utf-8")
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
ROW_DATASETS = ("ids", "scan_ids", "ct", "report", "labels", "row_sha256")


def _row_layout(latent_dim: int) -> dict[str, tuple[tuple[int, ...], object]]:
    """name -> (trailing shape, dtype) of the per-row datasets."""
    return {
        "ids": ((), STR),
        "scan_ids": ((), STR),
        "ct": ((latent_dim,), np.float32),
        "report": ((latent_dim,), np.float32),
        "labels": ((N_LABELS,), np.uint8),
        "row_sha256": ((), STR),
    }


class CacheMismatchError(PipelineError, ValueError):
    """The file was made with another checkpoint, tokenizer or preprocessing."""


@dataclass
class CacheHeader:
    """What a new cache holds besides its rows."""

    identity: EmbedIdentity
    provenance: Provenance
    temperature: float
    prompts: dict[str, dict[str, np.ndarray]]  # template set -> {"positive": (18, D), "negative": (18, D)}

    @property
    def latent_dim(self) -> int:
        return int(self.identity.model_config_json["dim_latent"])


def prompt_texts(template_set: str) -> dict[str, list[str]]:
    """The exact texts embedded for a template set, one per label in CT-RATE order."""
    pos, neg = PROMPT_TEMPLATES[template_set]
    return {
        "positive": [pos.format(p=p) for p in CT_RATE_LABELS],
        "negative": [neg.format(p=p) for p in CT_RATE_LABELS],
    }


def read_identity(path: Path) -> EmbedIdentity | None:
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("identity")
        return None if raw is None else EmbedIdentity.model_validate_json(raw)


def refuse_foreign(path: Path) -> None:
    """``--out`` may name nothing yet or an embed-ct cache; anything else (a folder, a device, a manifest,
    a CT, an HDF5 file of another kind) is refused with or without --overwrite, and left as it is."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise CacheMismatchError(
            f"{path} exists and is not a regular file (a folder, device or broken link); "
            "embed-ct writes one HDF5 file: give a new .h5 path as --out"
        )
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                ours = "identity" in f.attrs
        else:
            ours = False
    except Exception:  # a truncated or damaged HDF5 file: nobody's cache any more, but not ours to delete
        ours = False
    if not ours:
        raise CacheMismatchError(
            f"{path} exists and is not an embed-ct cache; it is left as it is (--overwrite replaces only "
            "an embed-ct cache): choose another --out, or move the file away"
        )


def _write_header(f: h5py.File, header: CacheHeader) -> None:
    for name, (trailing, dtype) in _row_layout(header.latent_dim).items():
        f.create_dataset(
            name,
            shape=(0, *trailing),
            maxshape=(None, *trailing),
            dtype=dtype,
            chunks=(ROW_CHUNK, *trailing),
            **COMPRESSION,
        )
    f.create_dataset("label_names", data=np.array(CT_RATE_LABELS, dtype=object), dtype=STR)
    f.create_dataset("temperature", data=np.float32(header.temperature))
    for set_name, (pos, neg) in PROMPT_TEMPLATES.items():
        g = f.create_group(f"prompts/{set_name}")
        g.attrs["template_positive"], g.attrs["template_negative"] = pos, neg
        texts = prompt_texts(set_name)
        for kind in ("positive", "negative"):
            emb = np.asarray(header.prompts[set_name][kind], dtype=np.float32)
            if emb.shape != (N_LABELS, header.latent_dim):
                raise ValueError(
                    f"prompt embeddings {set_name}/{kind}: shape {emb.shape}, expected {(N_LABELS, header.latent_dim)}"
                )
            g.create_dataset(kind, data=emb)
            g.create_dataset(f"{kind}_text", data=np.array(texts[kind], dtype=object), dtype=STR)
    f.create_dataset("failures/ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(ROW_CHUNK,))
    f.create_dataset("failures/reasons", shape=(0,), maxshape=(None,), dtype=STR, chunks=(ROW_CHUNK,))
    _name_dimensions(f)
    prov = header.provenance
    f.attrs.update(
        {
            "layout_version": EMBED_LAYOUT_VERSION,
            "provenance": prov.model_dump_json(),
            "identity": header.identity.model_dump_json(),
            "identity_sha256": header.identity.sha256(),
            "checkpoint_sha256": header.identity.checkpoint_sha256,
            "preprocessing": json.dumps(header.identity.preprocessing(), sort_keys=True),
            "manifest_sha256": prov.manifest_sha256 or "",
            "manifest_sha256_history": json.dumps([prov.manifest_sha256] if prov.manifest_sha256 else []),
            "software_version": prov.software_version,
            "created": prov.created,
        }
    )


def _name_dimensions(f: h5py.File) -> None:
    """HDF5 dimension scales, as netCDF-4 and xarray read them: every dataset labels its dimensions
    (item, latent, label, failure) and the per-row datasets take ``ids`` as the scale of ``item``,
    the label and prompt datasets ``label_names`` as the scale of ``label``. A cache made before
    has none; the readers do not use them."""

    def name(dataset: h5py.Dataset, *labels: str, scales: tuple[h5py.Dataset | None, ...] = ()) -> None:
        for axis, label in enumerate(labels):
            dataset.dims[axis].label = label
            scale = scales[axis] if axis < len(scales) else None
            if scale is not None:
                dataset.dims[axis].attach_scale(scale)

    ids, label_names, failed = f["ids"], f["label_names"], f["failures/ids"]
    ids.make_scale("item")
    label_names.make_scale("label")
    failed.make_scale("failure")
    name(ids, "item")
    name(label_names, "label")
    name(failed, "failure")
    name(f["scan_ids"], "item", scales=(ids,))
    name(f["ct"], "item", "latent", scales=(ids,))
    name(f["report"], "item", "latent", scales=(ids,))
    name(f["labels"], "item", "label", scales=(ids, label_names))
    name(f["failures/reasons"], "failure", scales=(failed,))
    for set_name in PROMPT_TEMPLATES:
        for kind in ("positive", "negative"):
            name(f[f"prompts/{set_name}/{kind}"], "label", "latent", scales=(label_names,))
            name(f[f"prompts/{set_name}/{kind}_text"], "label", scales=(label_names,))


def _append_rows(f: h5py.File, rows: Rows) -> None:
    n0, n = f["ids"].shape[0], len(rows)
    if n == 0:
        return
    data = {
        "ids": np.array(rows.ids, dtype=object),
        "scan_ids": np.array(rows.scan_ids, dtype=object),
        "ct": rows.ct,
        "report": rows.report,
        "labels": rows.labels,
        "row_sha256": np.array(rows.row_sha256, dtype=object),
    }
    for name in ROW_DATASETS:
        f[name].resize(n0 + n, axis=0)
        f[name][n0:] = data[name]


def _replace_failures(f: h5py.File, failures: dict[str, str]) -> None:
    for name, values in (("failures/ids", list(failures)), ("failures/reasons", list(failures.values()))):
        f[name].resize(len(values), axis=0)
        if values:
            f[name][:] = np.array(values, dtype=object)


class EmbeddingCache:
    """The single writer of one cache file. Use :meth:`open`, then :meth:`commit`, then :meth:`close`."""

    def __init__(self, path: Path, identity: EmbedIdentity, lock: ExitStack):
        self.path = path
        self.identity = identity
        self._lock = lock  # holds runtime.output_lock until close()
        self.shards = ShardFolder(path.with_name(path.name + ".parts"), identity.sha256())
        self._file_ids: set[str] = set()
        self._file_row_sha256: dict[str, str] = {}  # id -> hash of the manifest row it was made from
        self._pending: list[Rows] = []  # rows in shards, not yet in the HDF5 file
        # --overwrite: the old file and its shards stay until create() replaces them, so a run refused
        # later (a wrong checkpoint is found when the model loads) leaves the old cache as it was.
        self._replacing = False
        self.merge_fraction = 0.25
        self.merge_min_rows = 1024

    # ---- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        identity: EmbedIdentity,
        *,
        overwrite: bool = False,
        manifest_sha256: str | None = None,
        row_sha256: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> EmbeddingCache:
        """Lock the cache, refuse a foreign one, clean up after a crash and fold pending shards in.

        ``row_sha256`` (volume id -> hash of its manifest row, a mapping or (id, hash) pairs, read once):
        refuse, before anything is written,
        a manifest whose rows changed since their ids were embedded (:meth:`changed_rows`).

        Does not create the file: if :attr:`exists` is False, call :meth:`create` with the header.
        """
        path = Path(path)
        refuse_foreign(path)  # before the lock file is made beside it
        lock = ExitStack()
        lock.enter_context(output_lock(path, "embed-ct"))
        cache = cls(path, identity, lock)
        try:
            cache._prepare(overwrite, manifest_sha256, row_sha256 or {})
        except BaseException:
            cache.close(merge=False)
            raise
        return cache

    def _prepare(
        self, overwrite: bool, manifest_sha256: str | None, row_sha256: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        remove_temporaries(self.path)  # an interrupted create or merge
        self.shards.remove_leftovers()
        if overwrite and self.path.exists():
            self._replacing = True
            return
        if not self.path.exists():
            self.shards.discard_all()  # orphans of a deleted file: nothing says what made them
            return
        self._check_identity()
        with h5py.File(self.path, "r") as f:
            self._file_row_sha256 = dict(zip(f["ids"].asstr()[:], f["row_sha256"].asstr()[:]))
            self._file_ids = set(self._file_row_sha256)
            history = json.loads(f.attrs.get("manifest_sha256_history", "[]"))
        for shard in self.shards.files():
            rows = self.shards.read(shard)
            if rows is not None:
                self._pending.append(rows)
        self._refuse_changed(row_sha256)
        new_manifest = manifest_sha256 is not None and manifest_sha256 not in history
        if self._pending or new_manifest:
            self.merge(extra_manifest=manifest_sha256 if new_manifest else None)

    def _check_identity(self) -> None:
        theirs = read_identity(self.path)
        if theirs is None:  # refuse_foreign has checked for one; a file replaced since then is not ours
            raise CacheMismatchError(f"{self.path} is not an embed-ct cache (no identity); choose another --out")
        if theirs.sha256() != self.identity.sha256():
            diffs = "; ".join(self.identity.differences(theirs))
            raise CacheMismatchError(
                f"{self.path} was made with another checkpoint or preprocessing ({diffs}). "
                "Write to another --out, or pass --overwrite to discard it and embed everything again."
            )

    @property
    def exists(self) -> bool:
        return self.path.exists() and not self._replacing

    def create(self, header: CacheHeader) -> None:
        """Write a new, empty cache with its prompts, temperature and attributes (atomically)."""
        if header.identity.sha256() != self.identity.sha256():
            raise ValueError("header identity differs from the cache's")
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as f:
                _write_header(f, header)
            # The old file's pending rows go first: a kill before the rename leaves the old file, readable.
            self.shards.discard_all()
        self._replacing = False

    # ---- state -----------------------------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        """Ids with a committed row (in the file or in a pending shard)."""
        return self._file_ids | {i for r in self._pending for i in r.ids}

    def _refuse_changed(self, row_sha256: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        changed = self.changed_rows(row_sha256)
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise CacheMismatchError(
                f"{self.path}: {len(changed)} manifest row(s) changed since they were embedded ({shown}): "
                "their CT path, report, spacing, scaling or labels differ. Write to another --out, "
                "or pass --overwrite to embed everything again."
            )

    def changed_rows(self, expected: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
        """Ids whose committed row was made from a manifest row other than ``expected`` (id -> row hash,
        a mapping or pairs): the same id now points at another file, report, spacing, ... Rows without a
        recorded hash pass."""
        held = dict(self._file_row_sha256)
        for r in self._pending:
            held.update(zip(r.ids, r.row_sha256))
        pairs = expected.items() if isinstance(expected, Mapping) else expected
        return [vid for vid, h in pairs if held.get(vid) and held[vid] != h]

    @property
    def n_pending(self) -> int:
        return sum(len(r) for r in self._pending)

    # ---- writing ---------------------------------------------------------------------------------------------------
    def commit(self, rows: Rows) -> None:
        """Make ``rows`` durable (one shard); merge into the HDF5 file when enough are pending."""
        if not self.exists:
            raise RuntimeError("create() the cache before committing rows")
        if len(rows) == 0 and not rows.failed_ids:
            return
        self.shards.write(rows)
        self._pending.append(rows)
        if self.n_pending >= max(self.merge_min_rows, self.merge_fraction * len(self._file_ids)):
            self.merge()

    def merge(self, extra_manifest: str | None = None) -> None:
        """Fold the pending shards into a fresh copy of the HDF5 file and move it into place."""
        shard_files = self.shards.files()
        if not self._pending and extra_manifest is None:
            return
        rows = Rows.concat(self._pending)
        keep, seen = [], set(self._file_ids)
        for i, vid in enumerate(rows.ids):  # skip rows merged before a kill between rename and shard deletion
            if vid not in seen:
                seen.add(vid)
                keep.append(i)
        with atomic_path(self.path) as tmp:
            shutil.copyfile(self.path, tmp)
            with h5py.File(tmp, "r+") as f:
                _append_rows(f, rows.select(keep))
                failures = dict(zip(f["failures/ids"].asstr()[:], f["failures/reasons"].asstr()[:]))
                failures.update(zip(rows.failed_ids, rows.failed_reasons))
                _replace_failures(f, {k: v for k, v in failures.items() if k not in seen})
                if extra_manifest:
                    history = json.loads(f.attrs.get("manifest_sha256_history", "[]")) + [extra_manifest]
                    f.attrs["manifest_sha256_history"] = json.dumps(history)
        for p in shard_files:
            p.unlink(missing_ok=True)
        self._file_ids = seen
        self._file_row_sha256.update((rows.ids[i], rows.row_sha256[i]) for i in keep)
        self._pending = []

    def close(self, merge: bool = True) -> None:
        """Merge what is pending (unless ``merge`` is False) and release the lock."""
        try:
            if merge and self._pending:
                self.merge()
        finally:
            self._lock.close()  # idempotent

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(merge=True)
