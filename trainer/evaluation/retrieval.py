"""Cross-modal retrieval: Recall@K and MAP@K (X2CT-CLIP, arXiv 2503.02162).

Every latent is L2-normalised and compared by cosine similarity.

**Recall@K**: the fraction of queries whose relevant gallery item is among the K most
similar. Relevance is by key: X<->C pairs a radiograph with the CT volume it was simulated
from (key = volume id). Reconstructions of one scan share one report, so for X<->R the
key is the scan: the report gallery holds each scan's report once (no duplicate latents, so
no ties between copies of one report), X->R asks for the query's scan report, and R->X has
one query per scan and counts a hit when a radiograph of any of the scan's reconstructions
is in the top K. Exact ties in similarity are broken against the query: an irrelevant item
as similar as the best relevant one is ranked before it.

**MAP@K** (as the authors' evaluation defines it): for each query, the label overlap of the
query with each of its K most similar gallery items, |A and B| / |A or B| over the positive
labels (the Jaccard index; labels unknown in either item are ignored), averaged over the K
items and then over the queries. As in the authors' code, the gallery holds only items with
at least one positive label (an item without any has overlap 0 with everything); queries
are all items. Ties in similarity keep gallery order (stable sort).

Queries are processed in blocks, so memory is (block x gallery), not (queries x gallery).
"""

from __future__ import annotations

import numpy as np

from trainer.evaluation.classification import known_mask
from trainer.evaluation.zeroshot import l2_normalise

KS: tuple[int, ...] = (1, 5, 10, 50, 100)
_BLOCK = 512


def _codes(query_keys, gallery_keys) -> tuple[np.ndarray, np.ndarray]:
    _, inv = np.unique(
        np.concatenate([np.asarray(query_keys, str), np.asarray(gallery_keys, str)]), return_inverse=True
    )
    return inv[: len(query_keys)], inv[len(query_keys) :]


def recall_at_k(
    queries: np.ndarray, gallery: np.ndarray, query_keys, gallery_keys, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """``{"recall@K": fraction}`` for each K; a query is relevant to gallery items with its key."""
    q, g = l2_normalise(queries), l2_normalise(gallery)
    qc, gc = _codes(query_keys, gallery_keys)
    missing = ~np.isin(qc, gc)
    if missing.any():
        first = np.asarray(query_keys, str)[missing][0]
        raise ValueError(f"{int(missing.sum())} queries (e.g. {first!r}) have no relevant item in the gallery")
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), _BLOCK):
        relevant = qc[start : start + _BLOCK, None] == gc[None, :]
        ranks[start : start + _BLOCK] = relevant_ranks(q[start : start + _BLOCK] @ g.T, relevant)
    return {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}


def relevant_ranks(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,) 1-based rank of each query's best relevant gallery item, from similarities ``sim`` (Q, G)
    and the mask ``relevant`` (Q, G): 1 + the irrelevant items at least as similar (ties against
    the query). A query without a relevant item gets rank G + 1 (never a hit)."""
    best = np.where(relevant, sim, -np.inf).max(axis=1)
    return 1 + np.sum(~relevant & (sim >= best[:, None]), axis=1)


def first_of_each(keys) -> np.ndarray:
    """Row indices of the first occurrence of each distinct key, in row order (e.g. one report per scan)."""
    _, first = np.unique(np.asarray(keys, str), return_index=True)
    return np.sort(first)


def label_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard index of positive labels between rows of ``a`` (n, L) and ``b`` (n, L), over labels known in both."""
    both_known = known_mask(a) & known_mask(b)
    pa, pb = (a == 1) & both_known, (b == 1) & both_known
    inter, union = np.sum(pa & pb, axis=-1), np.sum(pa | pb, axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def map_at_k(
    queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, ks=KS
) -> dict[str, float | None]:
    """``{"map@K": mean label overlap of the top K}`` for each K (K larger than the gallery: all of it);
    None (undefined) when no gallery item has a positive label."""
    keep = np.any(np.asarray(gallery_labels) == 1, axis=1)
    if not keep.any():
        return {f"map@{k}": None for k in ks}
    q, g = l2_normalise(queries), l2_normalise(gallery)[keep]
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)[keep]
    k_max = min(max(ks), len(g))
    sums = dict.fromkeys(ks, 0.0)
    for start in range(0, len(q), _BLOCK):
        sim = q[start : start + _BLOCK] @ g.T
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k_max]
        overlap = label_overlap(ql[start : start + _BLOCK, None, :], gl[top])  # (b, k_max)
        running = np.cumsum(overlap, axis=1)
        for k in ks:
            kk = min(k, k_max)
            sums[k] += float(np.sum(running[:, kk - 1] / kk))
    return {f"map@{k}": sums[k] / len(q) for k in ks}


def retrieval_table(
    x: np.ndarray,
    ct: np.ndarray,
    report: np.ndarray,
    volume_ids: list[str],
    scan_ids: list[str],
    labels: np.ndarray,
    ks: tuple[int, ...] = KS,
) -> dict[str, dict[str, float | None]]:
    """Recall@K and MAP@K for X->C, C->X, X->R, R->X, and CT-CLIP's own C->R, R->C for reference.

    Row i of ``x``, ``ct``, ``report``, ``labels`` is volume ``volume_ids[i]`` of scan
    ``scan_ids[i]``; the report gallery keeps the first row of each scan.
    """
    scans = np.asarray(scan_ids, str)
    first = first_of_each(scans)
    r_scan, r, r_labels = scans[first], report[first], labels[first]
    directions = {
        "X->C": (x, ct, volume_ids, volume_ids, labels, labels),
        "C->X": (ct, x, volume_ids, volume_ids, labels, labels),
        "X->R": (x, r, scans, r_scan, labels, r_labels),
        "R->X": (r, x, r_scan, scans, r_labels, labels),
        "C->R": (ct, r, scans, r_scan, labels, r_labels),
        "R->C": (r, ct, r_scan, scans, r_labels, labels),
    }
    out = {}
    for name, (qv, gv, qk, gk, ql, gl) in directions.items():
        row: dict[str, float | None] = {"n_queries": len(qv), "n_gallery": len(gv)}
        row.update(recall_at_k(qv, gv, qk, gk, ks))
        row.update(map_at_k(qv, gv, ql, gl, ks))
        out[name] = row
    return out
