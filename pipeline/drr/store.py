"""The simulate-drr Zarr v3 store: creation, the config guard, per-item writes, status.

Layout (:class:`schemas.drr.DRRStoreLayout`):

* ``images`` (N, V, H, W) uint16, zstd; chunk = one image, shard = one item. A trainer reads
  one image with one range request into one file; the task that renders an item writes that
  item's shard file whole, so no two tasks ever touch the same file. 50k volumes with two
  views make 50k image files, not 100k; a 512x512 image compresses from 0.5 MB to 0.35-0.45 MB.
* ``line_integrals`` (N, V, H, W) float16, same chunking (only with ``--line-integrals``).
* ``status`` (N,) uint8 (0 pending, 1 done, 2 failed) and ``errors`` (N,) str: one chunk per
  item, written by its task after the images. ``status == 1`` is the completion mask.
* ``status_snapshot`` (N,) uint8, one chunk, written only by the driver at the end of a run:
  a fast-to-read copy; :func:`read_status` combines it with the per-item chunks, reading
  only the chunks of items not done in the snapshot (50k single-item chunks take about 13 s).
* ``ids`` (N,) str and ``labels`` (N, 18) int8 (-1: no label), written once at creation.
* ``view`` (V,) and ``label`` (18,) str: the view and label names. Every array names its
  dimensions (item, view, row, column; label) and the per-item ones name ``ids`` their
  coordinate, so ``xarray.open_zarr(store, consolidated=False)`` gives one Dataset
  (stores made before have no dimension names; the functions here accept both).
* attributes: ``provenance`` (config, its content hash, software version, manifest sha256),
  ``manifest_rows`` (row count and a hash of the rows' content), ``layout``,
  ``uint16_mapping``, ``summary`` (after each run).

Items are identified by position. A manifest that holds the store's rows unchanged, in the
same order, with rows appended continues the store (the arrays grow, the new items are
pending); any other manifest change is refused.

A new store is built in a temporary folder and renamed into place. The local store writes
every file atomically (temporary file + rename), so a killed task leaves either the old file
or the new one; an item counts as done only once its status chunk says so, which is written
last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from pipeline.runtime import atomic_dir, refuse_non_folder, remove_temporaries
from schemas.drr import DRRStoreLayout, ItemStatus, SimulateDRRConfig
from schemas.errors import PipelineError
from schemas.labels import CT_RATE_LABELS, N_LABELS
from schemas.manifest import ManifestRow, storable_line
from schemas.provenance import Provenance

UINT16_NOTE = (
    "physics: round(clip(windowed display, 0, 1) * 65535); mean-hu: min-max of the mean clipped HU to 0..65535"
)


class StoreMismatchError(PipelineError, ValueError):
    """The store was made with another config or manifest; continuing it would mix outputs."""


def create_store(path: Path, layout: DRRStoreLayout, rows: ManifestRows, provenance: Provenance) -> zarr.Group:
    """Build the store in a temporary folder beside ``path`` and rename it into place, so a
    half-created store never exists under the final name."""
    with atomic_dir(path) as tmp:
        _build_store(tmp, layout, rows, provenance)
    return zarr.open_group(str(path), mode="r+")


def _build_store(folder: Path, layout: DRRStoreLayout, rows: ManifestRows, provenance: Provenance) -> None:
    group = zarr.open_group(str(folder), mode="w")
    compressor = ZstdCodec(level=layout.zstd_level)
    n = layout.n_items
    per_item = {"coordinates": layout.ids}  # CF: ids label the item dimension (xarray reads it)

    def create(name: str, **kw) -> zarr.Array:
        return group.create_array(name, dimension_names=layout.dimension_names(name), **kw)

    image = dict(
        shape=layout.image_shape,
        chunks=layout.image_chunks,
        shards=layout.image_shards,
        compressors=compressor,
        fill_value=0,
        attributes=per_item,
    )
    create(layout.images, dtype="uint16", **image)
    if layout.line_integrals:
        create(layout.line_integrals_name, dtype="float16", **image)
    create(layout.status, shape=(n,), dtype="uint8", chunks=(1,), fill_value=ItemStatus.PENDING, attributes=per_item)
    create(layout.errors, shape=(n,), dtype=str, chunks=(1,), fill_value="", attributes=per_item)
    create(
        layout.status_snapshot,
        shape=(n,),
        dtype="uint8",
        chunks=(max(n, 1),),
        fill_value=ItemStatus.PENDING,
        attributes=per_item,
    )
    items = ItemArrays.of(rows)
    ids = create(layout.ids, shape=(n,), dtype=str, chunks=(max(n, 1),), fill_value="")
    ids[:] = items.ids
    n_labels = items.labels.shape[1]
    labels = create(
        layout.labels,
        shape=(n, n_labels),
        dtype="int8",
        chunks=(max(n, 1), n_labels),
        fill_value=-1,
        attributes=per_item,
    )
    labels[:] = items.labels
    views = create(layout.view_names, shape=(len(layout.views),), dtype=str, chunks=(len(layout.views),), fill_value="")
    views[:] = np.array(layout.views, dtype=object)
    names = create(layout.label_names, shape=(n_labels,), dtype=str, chunks=(n_labels,), fill_value="")
    names[:] = np.array(CT_RATE_LABELS[:n_labels], dtype=object)
    group.attrs.update(
        {
            "provenance": provenance.model_dump(mode="json"),
            "manifest_rows": items.record(),
            "layout": layout.model_dump(mode="json"),
            "uint16_mapping": UINT16_NOTE,
        }
    )


def check_store(
    group: zarr.Group, path: Path, cfg: SimulateDRRConfig, manifest_sha: str, n_items: int, grown: bool = False
) -> None:
    """Refuse to continue a store made from another config, manifest or item count.
    ``grown``: the manifest differs only by rows appended at the end (see :func:`is_grown`)."""
    prov = group.attrs.get("provenance")
    if prov is None:
        raise StoreMismatchError(
            f"{path} is not a simulate-drr store (no provenance); choose another --out or use --overwrite"
        )
    problems = []
    if prov.get("config_sha256") != cfg.content_sha256():
        old = prov.get("config", {})
        new = cfg.model_dump(mode="json")
        keys = ("render", "ct", "line_integrals")
        detail = _describe_diff({k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}, "")
        problems.append(f"the render config differs ({detail or 'hash differs'})")
    if prov.get("manifest_sha256") != manifest_sha:
        if not grown:
            problems.append(
                f"the manifest differs (store {str(prov.get('manifest_sha256'))[:12]}, now {manifest_sha[:12]}; "
                "only rows appended at the end can continue a store)"
            )
    elif group["images"].shape[0] != n_items:
        problems.append("the number of items differs")
    if problems:
        raise StoreMismatchError(
            f"{path} was made with another config: {'; '.join(problems)}. "
            "Rerun with the same options, write to a new --out, or pass --overwrite to redo the store."
        )


def _describe_diff(old: dict, new: dict, prefix: str) -> str:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _describe_diff(a, b, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{key}: store {a!r}, now {b!r}")
    return "; ".join(out)


def open_or_create(
    cfg: SimulateDRRConfig, layout: DRRStoreLayout, rows: ManifestRows, provenance: Provenance
) -> zarr.Group:
    path = cfg.out
    refuse_non_folder(path, "a Zarr store")
    if path.exists() and cfg.overwrite:
        discard_store(path)
    elif path.parent.is_dir():
        _remove_discarded(path)
    remove_temporaries(path)  # a creation killed before its rename
    if path.exists():
        try:
            group = zarr.open_group(str(path), mode="r+")
        except FileNotFoundError:  # zarr: no group metadata there
            raise StoreMismatchError(f"{path} exists and is not a simulate-drr store; choose another --out") from None
        changed = group.attrs.get("provenance", {}).get("manifest_sha256") != provenance.manifest_sha256
        grown = changed and is_grown(group, rows)
        check_store(group, path, cfg, provenance.manifest_sha256 or "", len(rows), grown)
        if grown:
            grow_store(group, rows, provenance)
        return group
    path.parent.mkdir(parents=True, exist_ok=True)
    return create_store(path, layout, rows, provenance)


class ManifestRows(Protocol):
    """The manifest's rows as the store functions read them: a list, or a
    :class:`pipeline.manifest_index.ManifestIndex` (each iteration is one pass over the file)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[ManifestRow]: ...


@dataclass
class ItemArrays:
    """What the store holds of the manifest, gathered in one pass over its rows."""

    ids: np.ndarray  # (N,) object (str)
    labels: np.ndarray  # (N, L) int8, -1 for no label
    n: int
    sha256: str  # see rows_sha256

    @classmethod
    def of(cls, rows: Iterable[ManifestRow]) -> ItemArrays:
        ids: list[str] = []
        labels = bytearray()
        n_labels = N_LABELS
        digest = hashlib.sha256()
        for row in rows:
            ids.append(row.volume_id)
            n_labels = len(row.labels)
            labels.extend(255 if x is None else x for x in row.labels)  # 0, 1 or None (validated); 255 reads -1
            _update_rows_digest(digest, row)
        n = len(ids)
        label_array = np.frombuffer(bytes(labels), dtype=np.int8).reshape(n, n_labels if n else N_LABELS)
        return cls(np.array(ids, dtype=object), label_array, n, digest.hexdigest())

    def record(self) -> dict:
        """``manifest_rows`` attribute: how many rows the store holds and a hash of their content
        (every field, in order), so a longer manifest can be recognised as the same rows plus more."""
        return {"n": self.n, "sha256": self.sha256}


def rows_sha256(rows: Iterable[ManifestRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        _update_rows_digest(digest, row)
    return digest.hexdigest()


def _update_rows_digest(digest, row: ManifestRow) -> None:
    digest.update(json.dumps(row.model_dump(mode="json"), sort_keys=True).encode() + b"\n")


def is_grown(group: zarr.Group, rows: ManifestRows) -> bool:
    """Whether ``rows`` begin with exactly the rows the store was made from (all fields, same
    order), with more appended. Items are identified by position, so only such a manifest
    can continue a store; any other change (rows removed, reordered or edited) is refused."""
    held = group.attrs.get("manifest_rows")
    if not isinstance(held, dict) or len(rows) < held.get("n", len(rows) + 1):
        return False
    return rows_sha256(islice(rows, held["n"])) == held.get("sha256")


def grow_store(group: zarr.Group, rows: ManifestRows, provenance: Provenance) -> None:
    """Driver only, before any task: append the new rows as pending items. Arrays first, the
    attributes (new manifest hash and row record) last, so a growth killed half-way is redone."""
    n = len(rows)
    for name in ("images", "line_integrals", "status", "errors", "status_snapshot", "ids", "labels"):
        if name in group and group[name].shape[0] != n:
            group[name].resize((n,) + group[name].shape[1:])
    items = ItemArrays.of(rows)
    group["ids"][:] = items.ids
    group["labels"][:] = items.labels
    group.attrs.update(
        {
            "provenance": provenance.model_dump(mode="json"),
            "manifest_rows": items.record(),
            "layout": dict(group.attrs["layout"], n_items=n),
        }
    )


def discard_store(path: Path) -> None:
    """``--overwrite``: delete a simulate-drr store, and nothing else.

    The store is first renamed out of the way (one atomic step), then deleted: deleting 50k
    items in place takes a while, and a run killed half-way through would leave a store whose
    remaining status chunks say 'done' for items whose images are already gone, which a rerun
    without ``--overwrite`` would then keep as finished. Any other folder is refused, so a
    mistyped ``--out`` never deletes unrelated data."""
    meta = path / "zarr.json"
    try:
        stage = json.loads(meta.read_text()).get("attributes", {}).get("provenance", {}).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    if stage != "simulate-drr":
        raise StoreMismatchError(
            f"{path} is not a simulate-drr store; --overwrite deletes only such stores. "
            "Choose another --out or delete it yourself."
        )
    trash = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    _remove_discarded(path)


def _remove_discarded(path: Path) -> None:
    """Delete stores that ``discard_store`` renamed away (also those a killed run left), and
    half-created stores that versions before ``atomic_dir`` named ``.<store>.creating-*``."""
    for pattern in (f".{path.name}.deleting-*", f".{path.name}.creating-*"):
        for old in path.parent.glob(pattern):
            shutil.rmtree(old, ignore_errors=True)


def read_status(group: zarr.Group) -> np.ndarray:
    """Every item's status. The per-item chunks are authoritative but slow to read one by one
    (about 1 ms each, and reading 50k at once holds over 100 MB of requests), so items the
    driver's last snapshot already saw done are taken from it (a done item stays done: only
    --overwrite, which deletes the store, undoes it); of the others only the chunks that exist
    are read (one listing of the array; a chunk never written is pending), a block at a time."""
    status = np.asarray(group["status_snapshot"][:], dtype=np.uint8)
    unsure = np.flatnonzero(status != ItemStatus.DONE)
    if unsure.size:
        array = group["status"]
        written = unsure[np.isin(unsure, written_items(array))]
        status[unsure] = ItemStatus.PENDING
        for start in range(0, written.size, STATUS_BLOCK):
            block = written[start : start + STATUS_BLOCK]
            status[block] = np.asarray(array.oindex[block], dtype=np.uint8)
    return status


STATUS_BLOCK = 2048  # per-item status chunks read at once: bounds the requests held in memory


def written_items(array: zarr.Array) -> np.ndarray:
    """Indices of the items whose chunk of the one-chunk-per-item ``array`` exists in the store."""
    from zarr.core.sync import collect_aiterator

    prefix = f"{array.path}/"
    found = []
    for key in collect_aiterator(array.store_path.store.list_prefix(prefix)):
        rel = key[len(prefix) :]
        index = rel.rpartition("/")[2]
        if index.isdigit() and array.metadata.encode_chunk_key((int(index),)) == rel:
            found.append(int(index))
    return np.array(sorted(found), dtype=np.int64)


def write_status_snapshot(group: zarr.Group, status: np.ndarray) -> None:
    """Driver only, once its tasks are finished: one-chunk copy of the completion state."""
    group["status_snapshot"][:] = status


def item_done(path: str, index: int) -> bool:
    """Whether the item's own status chunk says done (what a task checks before rendering)."""
    return int(zarr.open_group(path, mode="r")["status"][index]) == ItemStatus.DONE


def write_item(path: str, index: int, images: np.ndarray, line_integrals: np.ndarray | None) -> None:
    """A finished item: status = pending, its shard(s), its error chunk cleared, then status =
    done (last). Pending first, because the shard is deleted before it is rewritten: an item
    written again (Dask recomputes a task whose worker died holding its result) must never
    read as done while its images are missing."""
    group = zarr.open_group(path, mode="r+")
    group["status"][index] = ItemStatus.PENDING
    _replace_item(group["images"], index, images)
    if line_integrals is not None and "line_integrals" in group:
        _replace_item(group["line_integrals"], index, line_integrals.astype(np.float16))
    group["errors"][index] = ""
    group["status"][index] = ItemStatus.DONE


def _replace_item(array: zarr.Array, index: int, value: np.ndarray) -> None:
    """Write an item's whole shard. Zarr merges a shard write into the existing shard file; a
    file left corrupt by a killed run would then fail to decode forever, so delete it first
    (the item's status is not 'done', so nothing finished is lost)."""
    key = array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))
    array.store_path.store.delete_sync(f"{array.path}/{key}")
    array[index] = value


def write_failure(path: str, index: int, reason: str) -> None:
    group = zarr.open_group(path, mode="r+")
    group["errors"][index] = storable_line(reason)
    group["status"][index] = ItemStatus.FAILED


def failures(group: zarr.Group, status: np.ndarray | None = None) -> list[tuple[str, str]]:
    """(volume id, reason) of every failed item."""
    status = read_status(group) if status is None else status
    bad = np.flatnonzero(status == ItemStatus.FAILED)
    if bad.size == 0:
        return []
    ids, errors = group["ids"].oindex[bad], group["errors"].oindex[bad]  # one read each, not one per item
    return [(str(i), str(e)) for i, e in zip(ids, errors, strict=True)]
