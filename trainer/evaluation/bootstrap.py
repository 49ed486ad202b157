"""Bootstrap 95% confidence intervals, resampling patients.

Items of one patient (scans, reconstructions, views) are correlated, so the unit of
resampling is the patient: each of ``n_resamples`` (1000) resamples draws as many patients as
there are, with replacement, from ``np.random.default_rng(seed)``, and every item enters with
its patient's multiplicity. The interval is the 2.5th-97.5th percentile of the metric over
the resamples where it is defined (a resample can lose every positive of a rare label; how
many resamples were defined is reported beside the interval).

A resample is a vector of item weights (the multiplicities), so the metrics are computed as
weighted sums over items sorted once by score, for all resamples of a block at a time, in
NumPy. The values equal scikit-learn's on the expanded resample (``roc_auc_score``,
``average_precision_score`` and the threshold metrics with ``sample_weight``); the tests check
this. Going through scikit-learn per resample would cost about 90 s per table
(1000 resamples x 18 labels x its input validation); this takes about 20 s for 3,000 items
and 18 labels on two shared cores.

Weighted sums, for items sorted by decreasing score and grouped by equal score g:
TP_g, FP_g the cumulative positive and negative weight down to group g; P, N the totals.
AUROC = sum_g pos_g (N - FP_g + neg_g / 2) / (P N) (ties count one half);
AP = sum_g (TP_g - TP_{g-1}) / P * TP_g / (TP_g + FP_g) (scikit-learn's step rule).
"""

from __future__ import annotations

import numpy as np

from trainer.evaluation.classification import METRICS, known_mask

DEFAULT_RESAMPLES = 1000
_BLOCK_CELLS = 4_000_000  # resamples x items per block: 32 MB of float64 per array


def patient_resamples(groups: np.ndarray | list, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(item -> patient index (N,), patient multiplicities per resample (B, n_patients))."""
    _, item_patient = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_patients = int(item_patient.max()) + 1 if len(item_patient) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    counts = np.zeros((n_resamples, n_patients), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_patients), draws.ravel()), 1.0)
    return item_patient, counts


def weighted_binary_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The six metrics of one binary problem under each row of item weights ``w`` (B, n); NaN where undefined."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]]) if len(ps) else np.zeros(0, dtype=np.int64)
    pos_w, neg_w = ws * ys, ws * ~ys
    with np.errstate(invalid="ignore", divide="ignore"):
        if len(ps):
            pos_g, neg_g = np.add.reduceat(pos_w, starts, axis=1), np.add.reduceat(neg_w, starts, axis=1)
        else:
            pos_g = neg_g = np.zeros((len(w), 0))
        tp, fp = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
        n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
        both = (n_pos > 0) & (n_neg > 0)
        auroc = np.sum(pos_g * (n_neg[:, None] - fp + 0.5 * neg_g), axis=1) / (n_pos * n_neg)
        precision_g = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        ap = np.sum(pos_g * precision_g, axis=1) / n_pos
        pred = ps >= threshold
        tp_t, fp_t = (pos_w * pred).sum(axis=1), (neg_w * pred).sum(axis=1)
        fn_t, tn_t = n_pos - tp_t, n_neg - fp_t
        total = n_pos + n_neg
        return {
            "auroc": np.where(both, auroc, np.nan),
            "pr_auc": np.where(both, ap, np.nan),
            "precision": np.where(tp_t + fp_t > 0, tp_t / (tp_t + fp_t), np.nan),
            "recall": np.where(n_pos > 0, tp_t / n_pos, np.nan),
            "f1": np.where(2 * tp_t + fp_t + fn_t > 0, 2 * tp_t / (2 * tp_t + fp_t + fn_t), np.nan),
            "accuracy": np.where(total > 0, (tp_t + tn_t) / total, np.nan),
            "n_pos": n_pos,
        }


def _blocks(n_resamples: int, n_items: int):
    step = max(1, _BLOCK_CELLS // max(n_items, 1))
    for start in range(0, n_resamples, step):
        yield slice(start, min(start + step, n_resamples))


def _interval(values: np.ndarray, alpha: float) -> dict[str, float | int | None]:
    ok = values[~np.isnan(values)]
    if not len(ok):
        return {"ci_low": None, "ci_high": None, "n_resamples_defined": 0}
    lo, hi = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"ci_low": float(lo), "ci_high": float(hi), "n_resamples_defined": int(len(ok))}


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | list,
    label_names: list[str] | tuple[str, ...],
    threshold: float = 0.5,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict]:
    """Percentile intervals of every metric of :func:`classification_metrics`, resampling patients.

    ``groups`` (N,) holds each item's patient id. Returns the same nesting as
    ``classification_metrics``: ``{"per_label": {name: {metric: {ci_low, ci_high,
    n_resamples_defined}}}, "macro": {...}, "micro": {...}, "weighted": {...}}``.
    """
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    n_items, n_labels = y.shape
    item_patient, counts = patient_resamples(groups, n_resamples, seed)
    known = known_mask(y)
    per_label = {m: np.full((n_resamples, n_labels), np.nan) for m in (*METRICS, "n_pos")}
    micro = {m: np.full(n_resamples, np.nan) for m in METRICS}
    pairs_item, pairs_label = np.nonzero(known)
    for block in _blocks(n_resamples, max(n_items, len(pairs_item))):
        w = counts[block][:, item_patient]  # (b, N) item weights
        for j in range(n_labels):
            rows = known[:, j]
            res = weighted_binary_metrics(y[rows, j], p[rows, j], w[:, rows], threshold)
            for m, v in res.items():
                per_label[m][block, j] = v
        res = weighted_binary_metrics(
            y[pairs_item, pairs_label], p[pairs_item, pairs_label], w[:, pairs_item], threshold
        )
        for m in METRICS:
            micro[m][block] = res[m]
    out: dict[str, dict] = {"per_label": {}, "micro": {}, "macro": {}, "weighted": {}}
    for j, name in enumerate(label_names):
        out["per_label"][name] = {m: _interval(per_label[m][:, j], alpha) for m in METRICS}
    weights = per_label["n_pos"]
    for m in METRICS:
        values = per_label[m]
        ok = ~np.isnan(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            macro = np.where(ok.any(axis=1), np.nansum(values, axis=1) / ok.sum(axis=1), np.nan)
            wsum = np.sum(np.where(ok, weights, 0.0), axis=1)
            weighted = np.where(wsum > 0, np.nansum(np.where(ok, values * weights, 0.0), axis=1) / wsum, np.nan)
        out["macro"][m] = _interval(macro, alpha)
        out["weighted"][m] = _interval(weighted, alpha)
        out["micro"][m] = _interval(micro[m], alpha)
    return out
