"""Validation metrics of a training run, from radiograph latents and the cached targets.

* ``x2c_recall@K``: for each volume's radiograph, is its own CT latent among the K CT latents
  most similar to it (cosine)? Ties count against the query: its rank is the number of other
  gallery rows scoring at least as high as its match.
* ``x2r_recall@K``: the same against reports, **per scan**: reconstructions of a scan share
  one report, so the gallery holds one report per scan and a radiograph hits when its scan's
  report is in the top K.
* ``auroc``: zero-shot macro AUROC over the labels with both classes present (unknown labels
  left out): score of label p = softmax over the logits of the positive and the negative
  prompt latent (scale ``exp(temperature)``), probability of the positive.
"""

from __future__ import annotations

import numpy as np


def recall_at_k(sim: np.ndarray, target: np.ndarray, ks: list[int]) -> dict[int, float]:
    """sim (Q, G) similarities, target (Q,) the gallery index of each query's match."""
    own = sim[np.arange(len(target)), target][:, None]
    # Pessimistic ties: every other gallery row scoring >= the match ranks above it.
    rank = (sim >= own).sum(axis=1) - 1
    return {k: float((rank < k).mean()) for k in ks}


def zero_shot_scores(x: np.ndarray, positive: np.ndarray, negative: np.ndarray, temperature: float) -> np.ndarray:
    """(N, L) probability of the positive prompt: softmax of the two prompt logits."""
    scale = float(np.exp(temperature))
    return 1.0 / (1.0 + np.exp(-scale * (x @ positive.T - x @ negative.T)))


def macro_auroc(scores: np.ndarray, labels: np.ndarray, missing: int = 255) -> float:
    """Mean AUROC over labels that have both classes among the known rows; NaN if none has."""
    from sklearn.metrics import roc_auc_score

    values = []
    for j in range(labels.shape[1]):
        known = labels[:, j] != missing
        y = labels[known, j]
        if known.sum() and 0 < y.sum() < len(y):
            values.append(roc_auc_score(y, scores[known, j]))
    return float(np.mean(values)) if values else float("nan")


def validation_metrics(
    x: np.ndarray,
    ct: np.ndarray,
    report: np.ndarray,
    scan_ids: list[str],
    labels: np.ndarray,
    prompts: dict[str, np.ndarray],
    temperature: float,
    ks: list[int],
) -> dict[str, float]:
    """x, ct, report: (N, D) latents of the same N volumes (one radiograph each)."""
    out: dict[str, float] = {}
    for k, v in recall_at_k(x @ ct.T, np.arange(len(x)), ks).items():
        out[f"x2c_recall@{k}"] = v
    scans = list(dict.fromkeys(scan_ids))
    first = {s: scan_ids.index(s) for s in scans}
    gallery = report[[first[s] for s in scans]]
    position = {s: i for i, s in enumerate(scans)}
    target = np.array([position[s] for s in scan_ids])
    for k, v in recall_at_k(x @ gallery.T, target, ks).items():
        out[f"x2r_recall@{k}"] = v
    out["auroc"] = macro_auroc(zero_shot_scores(x, prompts["positive"], prompts["negative"], temperature), labels)
    return out
