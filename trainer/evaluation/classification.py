"""Multi-label classification metrics, per label and macro/micro/weighted (scikit-learn).

Conventions (stated in docs/evaluate.md):

* ``y`` (N, L): 1 positive, 0 negative, anything else (the cache's 255, the store's -1)
  unknown. An item whose label is unknown is left out of that label only.
* Threshold metrics predict positive when P >= ``threshold`` (0.5, the paper's rule).
* Undefined values are NaN (``None`` in JSON), never a stand-in number: AUROC and PR-AUC of a
  label with no positive or no negative item; recall with no positive; precision with no
  predicted positive; F1 when 2TP + FP + FN = 0.
* macro: the mean over the labels where the metric is defined (how many is recorded);
  weighted: the same mean weighted by each label's positive count (scikit-learn's
  ``average="weighted"``); micro: every known (item, label) pair pooled into one binary
  problem.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

METRICS: tuple[str, ...] = ("auroc", "pr_auc", "f1", "precision", "recall", "accuracy")
AVERAGES: tuple[str, ...] = ("macro", "micro", "weighted")
DEFAULT_THRESHOLD = 0.5


def known_mask(y: np.ndarray) -> np.ndarray:
    """True where a label is known (0 or 1)."""
    y = np.asarray(y)
    return (y == 0) | (y == 1)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of one binary problem (``y`` in {0, 1} only); NaN unless both classes are present."""
    y = np.asarray(y).astype(np.int64)
    return float(roc_auc_score(y, p)) if 0 < int(y.sum()) < len(y) else math.nan


def auroc_per_label(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(L,) AUROC of each column of ``p`` (N, L) over the items whose label in ``y`` (N, L) is known; NaN where undefined.

    The per-label AUROC of :func:`classification_metrics` without its other metrics (cheap
    enough to run every validation epoch).
    """
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must both be (N, L)")
    known = known_mask(y)
    return np.array([auroc(y[known[:, j], j], p[known[:, j], j]) for j in range(y.shape[1])], dtype=np.float64)


def defined_mean(values, weights=None) -> tuple[float, int]:
    """(mean of the values that are defined (not NaN, weight > 0), how many); NaN when none is.

    The macro average (no weights) and the positive-count weighted average over labels.
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    ok = ~np.isnan(values) & (weights > 0)
    mean = float(np.sum(values[ok] * weights[ok]) / np.sum(weights[ok])) if ok.any() else math.nan
    return mean, int(ok.sum())


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The six metrics of one binary problem (``y`` in {0, 1} only), plus its counts."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    n, n_pos = len(y), int(y.sum())
    out: dict[str, float] = {"n": n, "n_pos": n_pos}
    out["auroc"] = auroc(y, p)
    out["pr_auc"] = float(average_precision_score(y, p)) if 0 < n_pos < n else math.nan
    pred = (p >= threshold).astype(np.int64)
    if n:
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, pred, average="binary", zero_division=np.nan, labels=[0, 1]
        )
        out.update(precision=float(precision), recall=float(recall), f1=float(f1))
        out["accuracy"] = float(np.mean(pred == y))
    else:
        out.update(precision=math.nan, recall=math.nan, f1=math.nan, accuracy=math.nan)
    return out


def average_over_labels(per_label: list[dict[str, float]], weighted: bool) -> dict[str, float]:
    """Macro (or positive-count weighted) mean of each metric over the labels where it is defined."""
    out: dict[str, float] = {}
    weights = [d["n_pos"] for d in per_label] if weighted else None
    for m in METRICS:
        out[m], out[f"{m}_n_labels"] = defined_mean([d[m] for d in per_label], weights)
    return out


def classification_metrics(
    y: np.ndarray, p: np.ndarray, label_names: list[str] | tuple[str, ...], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, dict]:
    """Per-label and macro/micro/weighted metrics of probabilities ``p`` (N, L) against ``y`` (N, L).

    Returns ``{"per_label": {name: metrics}, "macro": ..., "micro": ..., "weighted": ...}``.
    """
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(label_names):
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must both be (N, {len(label_names)})")
    known = known_mask(y)
    per_label = [binary_metrics(y[known[:, j], j], p[known[:, j], j], threshold) for j in range(y.shape[1])]
    micro = binary_metrics(y[known], p[known], threshold)
    return {
        "per_label": dict(zip(label_names, per_label)),
        "macro": average_over_labels(per_label, weighted=False),
        "micro": micro,
        "weighted": average_over_labels(per_label, weighted=True),
    }
