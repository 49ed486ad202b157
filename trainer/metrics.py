"""Validation metrics of a training run, from radiograph latents and the cached targets.

The definitions are the evaluation package's (``trainer.evaluation``), so a run's
validation figures and ``evaluate``'s figures on the same latents are the same numbers:

* ``x2c_recall@K``: X->C Recall@K, each volume's radiograph against the CT latents, relevant
  to its own volume (:func:`trainer.evaluation.retrieval.recall_at_k`: cosine similarity,
  ties count against the query).
* ``x2r_recall@K``: X->R Recall@K **per scan**: reconstructions of a scan share one report,
  so the gallery holds each scan's report once (its first row) and a radiograph hits when its
  scan's report is in the top K.
* ``auroc``: zero-shot macro AUROC
  (:func:`trainer.evaluation.zeroshot.zero_shot_probabilities` with scale
  ``exp(temperature)``), the mean over the labels with both classes among the items whose
  label is known (:mod:`trainer.evaluation.classification`); NaN when no label has.
"""

from __future__ import annotations

import numpy as np

from trainer.evaluation import classification, retrieval
from trainer.evaluation.zeroshot import zero_shot_probabilities


def recall_at_k(sim: np.ndarray, target: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Recall@K from similarities ``sim`` (Q, G) when query i's one relevant item is gallery row ``target[i]``."""
    target = np.asarray(target)
    ranks = retrieval.relevant_ranks(sim, np.arange(sim.shape[1])[None, :] == target[:, None])
    return {k: float(np.mean(ranks <= k)) for k in ks}


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
    k_tuple = tuple(ks)
    out: dict[str, float] = {}
    volumes = np.arange(len(x))  # row i of x and of ct is the same volume
    for name, v in retrieval.recall_at_k(x, ct, volumes, volumes, k_tuple).items():
        out[f"x2c_{name}"] = v
    first = retrieval.first_of_each(scan_ids)
    scans = np.asarray(scan_ids, str)
    for name, v in retrieval.recall_at_k(x, report[first], scans, scans[first], k_tuple).items():
        out[f"x2r_{name}"] = v
    probabilities = zero_shot_probabilities(x, prompts["positive"], prompts["negative"], float(np.exp(temperature)))
    out["auroc"], _ = classification.defined_mean(classification.auroc_per_label(labels, probabilities))
    return out
