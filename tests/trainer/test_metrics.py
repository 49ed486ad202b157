"""Train's validation figures are the evaluation package's figures on the same latents."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.evaluation.classification import classification_metrics
from trainer.evaluation.retrieval import retrieval_table
from trainer.evaluation.zeroshot import zero_shot_probabilities
from trainer.metrics import recall_at_k, validation_metrics
from trainer.teacher import zeroshot


def _unit(rng, n, d=6):
    z = rng.normal(size=(n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_validation_metrics_equal_evaluate_on_the_same_latents(seed):
    rng = np.random.default_rng(seed)
    n, n_labels = 40, 4
    x, ct, report = _unit(rng, n), _unit(rng, n), _unit(rng, n)
    scans = [f"s{i // 2}" for i in range(n)]  # two reconstructions per scan, one report
    report = report[[2 * (i // 2) for i in range(n)]]
    labels = rng.choice([0, 1, 255], size=(n, n_labels), p=[0.5, 0.4, 0.1]).astype(np.uint8)
    labels[:, 3] = 0  # no positive: undefined, left out of the macro mean
    prompts = {"positive": _unit(rng, n_labels), "negative": _unit(rng, n_labels)}
    got = validation_metrics(x, ct, report, scans, labels, prompts, 3.0, [1, 5])

    table = retrieval_table(x, ct, report, [f"v{i}" for i in range(n)], scans, labels, ks=(1, 5))
    p = zero_shot_probabilities(x, prompts["positive"], prompts["negative"], math.exp(3.0))
    macro = classification_metrics(labels, p, list("abcd"))["macro"]
    assert macro["auroc_n_labels"] == 3
    for k in (1, 5):
        assert got[f"x2c_recall@{k}"] == table["X->C"][f"recall@{k}"]
        assert got[f"x2r_recall@{k}"] == table["X->R"][f"recall@{k}"]
    assert got["auroc"] == pytest.approx(macro["auroc"], abs=1e-12)


def test_recall_from_a_similarity_matrix_counts_ties_against_the_query():
    # Query 0's match (column 0) ties with column 1: rank 2. Query 1's match (column 2) is best.
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.3, 0.9]])
    assert recall_at_k(sim, np.array([0, 2]), [1, 2]) == {1: 0.5, 2: 1.0}


def test_teacher_auroc_per_label_and_macro():
    labels = np.zeros((4, 18), dtype=np.uint8)
    labels[[2, 3], 0] = 1  # label 0: positives score 0.35, 0.8; negatives 0.1, 0.4 -> 3/4
    labels[1, 1] = 255  # label 1: only negatives known -> undefined
    score = np.zeros((4, 18))
    score[:, 0] = [0.1, 0.4, 0.35, 0.8]
    labels[[0, 1], 2], score[:, 2] = 1, [0.9, 0.8, 0.1, 0.2]  # label 2: perfect
    per = zeroshot.auroc_per_label(score, labels)
    names = list(per)
    assert per[names[0]] == pytest.approx(0.75) and per[names[1]] is None and per[names[2]] == 1.0
    assert sum(v is not None for v in per.values()) == 2
    assert zeroshot.macro(per) == pytest.approx(0.875)
    assert zeroshot.macro(per, [names[0], names[1]]) == pytest.approx(0.75)
    assert math.isnan(zeroshot.macro(per, [names[1]]))
