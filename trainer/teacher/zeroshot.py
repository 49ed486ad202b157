"""Prompt latents (with per-label ensembles), AUROC per label and linear probes, for the teacher's
validation and the demo's summary.

Scores are :func:`trainer.evaluation.zeroshot.zero_shot_probabilities` (the softmax weight
of the positive prompt); a prompt set with several texts per label (an ensemble) uses the
normalised mean of their latents as the label's prompt. AUROC and its macro average are the
evaluation package's (:mod:`trainer.evaluation.classification`): over the rows whose label
is known, for labels with both classes present; the macro average is the mean over the
labels that have an AUROC. Here an undefined AUROC is None, as it is written to JSON.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from schemas.labels import CT_RATE_LABELS
from trainer.evaluation import classification


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str]) -> np.ndarray:
    from pipeline.ctclip.text import encode_texts as encode

    return encode(model, tokenizer, texts).float().numpy()


def prompt_latents(model, tokenizer, sets: dict[str, dict[str, list[list[str]]]]) -> dict[str, dict[str, np.ndarray]]:
    """set -> {"positive": (18, D), "negative": (18, D)} unit vectors (ensembles averaged, then normalised)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, sides in sets.items():
        out[name] = {}
        for side, per_label in sides.items():
            rows = []
            for texts in per_label:
                z = encode_texts(model, tokenizer, texts).mean(axis=0)
                rows.append(z / max(np.linalg.norm(z), 1e-12))
            out[name][side] = np.stack(rows).astype(np.float32)
    return out


def auroc_per_label(score: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """label -> AUROC (None where the known rows hold only one class)."""
    values = classification.auroc_per_label(labels, score)
    return {name: None if math.isnan(v) else float(v) for name, v in zip(CT_RATE_LABELS, values, strict=True)}


def macro(per_label: dict[str, float | None], names: list[str] | None = None) -> float:
    """Macro AUROC over ``names`` (default: all labels), of the labels that have one; NaN if none has."""
    values = [math.nan if v is None else v for k, v in per_label.items() if names is None or k in names]
    return classification.defined_mean(values)[0]


def linear_probe_auroc(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> dict[str, float | None]:
    """A supervised reference: one L2-regularised logistic regression per label on the latents."""
    from sklearn.linear_model import LogisticRegression

    probs = np.full((len(test_x), len(CT_RATE_LABELS)), 0.5)
    for j in range(len(CT_RATE_LABELS)):
        known = classification.known_mask(train_y[:, j])
        y = train_y[known, j]
        if 0 < y.sum() < len(y):
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(train_x[known], y)
            probs[:, j] = clf.predict_proba(test_x)[:, 1]
    return auroc_per_label(probs, test_y)
