"""CT and report pairs for pretraining: preprocessed volumes made once, reports as token ids per sentence.

Volumes go through exactly the steps embed-ct applies (:func:`pipeline.embed.work.decode_volume`),
once, into ``<run>/volumes/<name>.npy`` (float16, memory-mapped while training); a volume
that cannot be read is recorded and left out. Reports are split into sentences and
each sentence tokenized once; a training text is the ``[CLS]`` + the token ids of
the chosen sentences + ``[SEP]``, which equals tokenizing the joined sentences (BERT's
pre-tokenizer splits at spaces and punctuation, so sentence borders never merge).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.ctclip.text import report_text, split_sentences
from schemas.embed import LABEL_MISSING
from schemas.errors import ItemsFailedError, PipelineError

logger = logging.getLogger(__name__)


class PretrainDataError(PipelineError):
    """The training pairs cannot be made (no usable rows, no disk space)."""


@dataclass
class PairSet:
    """Rows that loaded, in manifest order."""

    ids: list[str]
    scan_ids: list[str]
    patient_ids: list[str]
    volumes: np.ndarray  # (N, C, D, H, W) float16, memory-mapped
    sentences: list[list[list[int]]]  # per row, per sentence, token ids (no special tokens)
    labels: np.ndarray  # (N, 18) uint8, LABEL_MISSING where unknown
    failures: dict[str, str]

    def __len__(self) -> int:
        return len(self.ids)

    def scan_groups(self) -> list[list[int]]:
        """Row indices per scan (reconstructions of one scan share the report)."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.scan_ids):
            groups.setdefault(s, []).append(i)
        return list(groups.values())


def build_volumes(rows, manifest_dir: Path, model_cfg, ct_cfg, folder: Path, name: str, max_failures: int):
    """``folder/<name>.npy`` + ``<name>.json`` (ids, failures, what made them); reused when they match."""
    from pipeline.embed.work import ItemFailed, decode_volume, load_kwargs_of
    from pipeline.runtime import atomic_path, atomic_write_text
    from schemas.provenance import json_sha256

    key = json_sha256(
        {
            "ids": [r.volume_id for r in rows],
            "preprocess": model_cfg.preprocess.model_dump(mode="json"),
            "ct": ct_cfg.model_dump(mode="json"),
        }
    )
    npy, index = folder / f"{name}.npy", folder / f"{name}.json"
    if npy.is_file() and index.is_file():
        meta = json.loads(index.read_text())
        if meta.get("key") == key:
            logger.info("%s: %d preprocessed volumes reused", npy, len(meta["ids"]))
            return np.load(npy, mmap_mode="r"), meta["ids"], meta["failures"]
    shape = (model_cfg.preprocess.n_channels, *reversed(model_cfg.preprocess.shape))  # (C, D, H, W)
    need = len(rows) * int(np.prod(shape)) * 2
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > 0.9 * free:
        raise PretrainDataError(
            f"{npy}: {len(rows)} preprocessed volumes need {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free; "
            "free disk space or use a smaller model config (preprocess.shape)"
        )
    ids, failures = [], {}
    from tqdm import tqdm

    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(rows), *shape))
        n = 0
        for row in tqdm(rows, desc=f"preprocess {name}", unit="vol", mininterval=5, disable=len(rows) < 50):
            path, kwargs = load_kwargs_of(row, manifest_dir)
            try:
                v = decode_volume(row.volume_id, path, kwargs, ct_cfg.model_dump(mode="json"), model_cfg)
            except ItemFailed as e:
                failures[row.volume_id] = str(e)
                logger.warning("%s: left out: %s", row.volume_id, e)
                if len(failures) > max_failures:
                    raise ItemsFailedError(
                        f"{len(failures)} volumes failed to load (more than --max-failures {max_failures}); "
                        f"first: {next(iter(failures.items()))}"
                    ) from None
                continue
            out[n] = v.array.astype(np.float16)
            ids.append(row.volume_id)
            n += 1
        out.flush()
        del out
        if n < len(rows):  # shrink to the rows that loaded: rewrite the header and truncate
            arr = np.load(tmp, mmap_mode="r")[:n].copy()
            np.save(tmp, arr)
    atomic_write_text(index, json.dumps({"key": key, "ids": ids, "failures": failures}))
    return np.load(npy, mmap_mode="r"), ids, failures


def load_pairs(manifest: Path, tokenizer, model_cfg, ct_cfg, folder: Path, name: str, max_failures: int) -> PairSet:
    from schemas.manifest import read_manifest

    rows = read_manifest(manifest)
    if not rows:
        raise PretrainDataError(f"{manifest}: no rows")
    volumes, ids, failures = build_volumes(rows, manifest.parent, model_cfg, ct_cfg, folder, name, max_failures)
    if not ids:
        raise PretrainDataError(f"{manifest}: no volume could be loaded (see {folder / name}.json for why)")
    by_id = {r.volume_id: r for r in rows}
    kept = [by_id[i] for i in ids]
    per_report: dict[str, list[list[int]]] = {}
    sentences = []
    for r in kept:
        text = report_text(r.findings, r.impressions)
        if text not in per_report:
            parts = split_sentences(text)
            per_report[text] = tokenizer(parts, add_special_tokens=False)["input_ids"]
        sentences.append(per_report[text])
    labels = np.array([[LABEL_MISSING if v is None else v for v in r.labels] for r in kept], dtype=np.uint8)
    return PairSet(
        ids=ids,
        scan_ids=[r.scan_id for r in kept],
        patient_ids=[r.patient_id for r in kept],
        volumes=volumes,
        sentences=sentences,
        labels=labels,
        failures=failures,
    )


def text_ids(sentence_ids: list[list[int]], cls_id: int, sep_id: int, max_length: int) -> list[int]:
    body = [t for s in sentence_ids for t in s][: max_length - 2]
    return [cls_id, *body, sep_id]


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def distinct_texts(texts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct token sequences in first-seen order, and for each input which of them it is."""
    index: dict[tuple[int, ...], int] = {}
    which = [index.setdefault(tuple(t), len(index)) for t in texts]
    return [list(t) for t in index], which


def choose_sentences(sentences: list[list[int]], rng: np.random.Generator, subset_prob: float) -> list[list[int]]:
    """The whole report, or (with ``subset_prob``) a random non-empty subset of its sentences, in order."""
    if len(sentences) < 2 or rng.random() >= subset_prob:
        return sentences
    keep = rng.random(len(sentences)) < 0.5
    if not keep.any():
        keep[rng.integers(len(sentences))] = True
    return [s for s, k in zip(sentences, keep) if k]


def epoch_batches(pairs: PairSet, epoch: int, seed: int, batch_size: int) -> list[list[int]]:
    """Row indices per step of one epoch: one reconstruction per scan (so no report appears twice in a
    batch as its own negative), scans shuffled; a deterministic function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    picks = [g[int(rng.integers(len(g)))] for g in pairs.scan_groups()]
    order = rng.permutation(len(picks))
    rows = [picks[i] for i in order]
    steps = len(rows) // batch_size  # drop the last partial batch: InfoNCE wants full sets of negatives
    return [rows[s * batch_size : (s + 1) * batch_size] for s in range(steps)]
