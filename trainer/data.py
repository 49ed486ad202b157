"""Training data: the DRR store joined with the CT-CLIP embedding cache, and how an epoch samples.

**Join.** A split's items are the volumes that are *done* in the simulate-drr store
(``pipeline.drr.store.read_status``) *and* have a row in the embed-ct cache
(``pipeline.embed.reader.load_embeddings``), matched by volume id, in store order. A store
and a cache made from different manifests (the store's manifest sha256 is not among the
manifests the cache was filled from) or with no volume id in common are refused before any
step, naming both files.

**Samples.** Each (item, view) pair for the requested ``views`` is a sample: with
``--views pa,lateral`` an item gives two samples, each carrying the item's CT and report
latents.

**Epochs** (:class:`ScanBatchSampler`). Reconstructions of one scan share the report (and
nearly the CT latent), so two of them in one batch would be false negatives of each other.
An epoch therefore draws, for every scan, **one** of its samples (uniformly among its
reconstructions x views), shuffles the scans and cuts the order into batches: an epoch is
``n_scans // batch_size`` steps (the remainder is dropped), no batch holds two samples of a
scan, and across epochs every reconstruction and view is seen. The draw is a pure function
of (seed, epoch), so a resumed run continues with the same batches, and each sample's
augmentation is seeded by (seed, epoch, position), whatever the number of workers.

Under DDP (K ranks) and gradient accumulation (A micro-batches) each global batch of
``batch_size`` samples is cut into A consecutive micro-batches, and each of those into K
equal slices, one per rank; the loss contrasts over the micro-batch gathered from all ranks.

Patient ids are not stored in the store or the cache: they are derived from CT-RATE scan ids
(``train_12_a`` -> ``train_12``); other scan ids are their own patient.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import zarr

from pipeline.drr.store import read_status
from pipeline.embed.reader import load_embeddings
from schemas.drr import UINT16_MAX, ItemStatus
from schemas.errors import PipelineError

log = logging.getLogger(__name__)

_CT_RATE_SCAN = re.compile(r"^(.+_\d+)_[A-Za-z]+$")


class DataError(PipelineError):
    """The store and the cache cannot be joined, or the joined split is unusable."""


def patient_of(scan_id: str) -> str:
    m = _CT_RATE_SCAN.match(scan_id)
    return m.group(1) if m else scan_id


@dataclass
class JoinedSplit:
    """The items of one split present in both the store and the cache."""

    store_path: Path
    cache_path: Path
    views: list[str]  # the requested views
    view_index: list[int]  # their positions in the store's images array
    volume_ids: list[str]
    scan_ids: list[str]
    patient_ids: list[str]
    store_rows: np.ndarray  # (M,) row of each item in the store
    labels: np.ndarray  # (M, 18) uint8 from the cache, 255 = unknown
    ct: np.ndarray  # (M, D) float32
    report: np.ndarray  # (M, D) float32
    temperature: float
    prompts: dict[str, dict[str, np.ndarray]]
    label_names: list[str]
    identity: dict[str, Any]  # the store's and the cache's identities
    image_size: int
    _group: Any = field(default=None, repr=False)

    @property
    def latent_dim(self) -> int:
        return int(self.ct.shape[1])

    def __len__(self) -> int:
        return len(self.volume_ids)

    def __getstate__(self):  # DataLoader workers open their own handle (lazily, after the fork)
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    def read_image(self, item: int, view: str | int) -> np.ndarray:
        """One radiograph as float32 (H, W) in [0, 1] (the store's uint16 / 65535)."""
        if self._group is None:
            self._group = zarr.open_group(str(self.store_path), mode="r")
        v = self.view_index[self.views.index(view)] if isinstance(view, str) else self.view_index[view]
        raw = np.asarray(self._group["images"][int(self.store_rows[item]), v])
        return raw.astype(np.float32) / UINT16_MAX

    def scan_groups(self) -> list[list[int]]:
        """Samples (item * n_views + view) grouped by scan, scans in order of first appearance."""
        groups: dict[str, list[int]] = {}
        nv = len(self.views)
        for item, scan in enumerate(self.scan_ids):
            groups.setdefault(scan, []).extend(item * nv + v for v in range(nv))
        return list(groups.values())

    def scan_representatives(self) -> np.ndarray:
        """The first item of each scan (evaluation: one report per scan)."""
        seen: dict[str, int] = {}
        for i, s in enumerate(self.scan_ids):
            seen.setdefault(s, i)
        return np.array(sorted(seen.values()), dtype=np.int64)


def store_identity(group: zarr.Group, path: Path) -> dict[str, Any]:
    prov = group.attrs.get("provenance")
    if not isinstance(prov, dict) or prov.get("stage") != "simulate-drr":
        raise DataError(f"{path} is not a simulate-drr store (no provenance); give the store simulate-drr wrote")
    return {
        "path": str(path),
        "config_sha256": prov.get("config_sha256"),
        "manifest_sha256": prov.get("manifest_sha256"),
        "views": list(group.attrs["layout"]["views"]),
        "size": int(group.attrs["layout"]["size"]),
    }


def cache_identity(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path, "r") as f:
            return {
                "path": str(path),
                "identity_sha256": str(f.attrs["identity_sha256"]),
                "checkpoint_sha256": str(f.attrs.get("checkpoint_sha256", "")),
                "manifest_sha256_history": json.loads(f.attrs.get("manifest_sha256_history", "[]")),
            }
    except (OSError, KeyError) as e:
        raise DataError(f"{path} is not an embed-ct cache ({e}); give the cache embed-ct wrote") from None


def join_split(
    store_path: str | Path, cache_path: str | Path, views: Sequence[str], prompt_set: str | None = None
) -> JoinedSplit:
    """Join a simulate-drr store and an embed-ct cache by volume id; refuse unusable pairs."""
    store_path, cache_path = Path(store_path), Path(cache_path)
    pair = f"store {store_path} and cache {cache_path}"
    if not store_path.exists():
        raise DataError(f"DRR store {store_path} does not exist; make it with `x2ct-pipeline simulate-drr`")
    if not cache_path.is_file():
        raise DataError(f"embedding cache {cache_path} does not exist; make it with `x2ct-pipeline embed-ct`")
    try:
        group = zarr.open_group(str(store_path), mode="r")
    except Exception:  # zarr: no group metadata
        raise DataError(f"{store_path} is not a simulate-drr store; give the store simulate-drr wrote") from None
    s_id = store_identity(group, store_path)
    c_id = cache_identity(cache_path)
    if s_id["manifest_sha256"] not in c_id["manifest_sha256_history"]:
        raise DataError(
            f"{pair} were made from different manifests (store {str(s_id['manifest_sha256'])[:12]}, cache "
            f"{', '.join(h[:12] for h in c_id['manifest_sha256_history']) or 'none'}); run embed-ct with the "
            "store's manifest (it adds the missing rows) or pair the right files"
        )
    missing_views = [v for v in views if v not in s_id["views"]]
    if missing_views:
        raise DataError(f"store {store_path} has views {s_id['views']}, not {missing_views}; choose --views among them")
    status = read_status(group)
    done = np.flatnonzero(status == ItemStatus.DONE)
    if done.size == 0:
        raise DataError(
            f"store {store_path} has no finished items ({len(status)} items); run simulate-drr to completion first"
        )
    emb = load_embeddings(cache_path)  # refuses a file that is not a complete embed-ct cache (NotACacheError)
    if len(emb.ids) == 0:
        raise DataError(f"cache {cache_path} holds no latents; run embed-ct to completion first")
    if prompt_set is not None and prompt_set not in emb.prompts:
        raise DataError(f"cache {cache_path} has no prompt set {prompt_set!r} (has {sorted(emb.prompts)})")
    if not np.isfinite(emb.temperature):
        raise DataError(f"cache {cache_path} has a non-finite temperature; rerun embed-ct with a complete checkpoint")
    store_ids = [str(v) for v in group["ids"][:]]
    row_of = emb.index()
    rows, items = [], []
    for i in done:
        r = row_of.get(str(store_ids[i]))
        if r is not None:
            rows.append(int(i))
            items.append(r)
    if not items:
        raise DataError(
            f"{pair} have no volume ids in common ({done.size} finished in the store, {len(emb.ids)} in the cache); "
            "pair the store and the cache of the same split"
        )
    left = done.size - len(items)
    if left:
        log.info("%s: %d finished store items have no cache row and are left out", pair, left)
    idx = np.asarray(items)
    scan_ids = [emb.scan_ids[r] for r in items]
    return JoinedSplit(
        store_path=store_path,
        cache_path=cache_path,
        views=list(views),
        view_index=[s_id["views"].index(v) for v in views],
        volume_ids=[emb.ids[r] for r in items],
        scan_ids=scan_ids,
        patient_ids=[patient_of(s) for s in scan_ids],
        store_rows=np.asarray(rows, dtype=np.int64),
        labels=emb.labels[idx],
        ct=np.ascontiguousarray(emb.ct[idx], dtype=np.float32),
        report=np.ascontiguousarray(emb.report[idx], dtype=np.float32),
        temperature=float(emb.temperature),
        prompts=emb.prompts,
        label_names=_label_names(cache_path),
        identity={"store": s_id, "cache": c_id},
        image_size=s_id["size"],
    )


def _label_names(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return list(f["label_names"].asstr()[:])


# ---- dataset and sampler ---------------------------------------------------------------------------------------


class TrainDataset(torch.utils.data.Dataset):
    """Key (sample, augmentation seed) -> dict(image, ct, report, item). The store is opened
    lazily in each worker; the transform runs under its own seeded torch generator."""

    def __init__(self, split: JoinedSplit, transform):
        self.split = split
        self.transform = transform
        self.n_views = len(split.views)

    def __len__(self) -> int:
        return len(self.split) * self.n_views

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        sample, seed = key
        item, view = divmod(int(sample), self.n_views)
        image = self.split.read_image(item, view)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(image)
        return {
            "image": x,
            "ct": torch.from_numpy(self.split.ct[item]),
            "report": torch.from_numpy(self.split.report[item]),
            "item": item,
        }


class ScanBatchSampler:
    """Yields this rank's micro-batches of keys (sample, aug seed); one sample per scan per
    epoch (see the module docstring). ``set_epoch(epoch, start_step)`` positions it."""

    def __init__(
        self,
        scan_groups: list[list[int]],
        batch_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        per_rank = batch_size // (grad_accum * world_size)
        if per_rank * grad_accum * world_size != batch_size:
            raise DataError(
                f"batch size {batch_size} is not divisible by grad_accum x processes = {grad_accum * world_size}"
            )
        self.groups = scan_groups
        self.batch_size, self.grad_accum, self.rank, self.world, self.seed = (
            batch_size,
            grad_accum,
            rank,
            world_size,
            seed,
        )
        self.micro = batch_size // grad_accum
        self.per_rank = per_rank
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.groups) // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def epoch_order(self, epoch: int) -> list[int]:
        """The epoch's samples in order: one per scan, scans shuffled."""
        rng = np.random.default_rng([self.seed, epoch])
        pick = [g[int(rng.integers(len(g)))] for g in self.groups]
        return [pick[i] for i in rng.permutation(len(pick))]

    def aug_seed(self, epoch: int, position: int) -> int:
        return int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1, dtype=np.uint64)[0] >> 1)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.epoch_order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            for m in range(self.grad_accum):
                lo = step * self.batch_size + m * self.micro + self.rank * self.per_rank
                yield [(order[p], self.aug_seed(self.epoch, p)) for p in range(lo, lo + self.per_rank)]
