"""Classification metrics and patient bootstrap against hand-worked values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from trainer.evaluation.bootstrap import bootstrap_intervals, patient_resamples, weighted_binary_metrics
from trainer.evaluation.classification import binary_metrics, classification_metrics
from trainer.evaluation.zeroshot import zero_shot_probabilities


def test_binary_metrics_hand_worked():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (pos, neg) pairs, 3 are
    # ordered right -> AUROC 3/4. Ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision 1 at recall
    # 1/2, 2/3 at recall 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. At 0.5 only 0.8 is called positive:
    # TP 1, FP 0, FN 1, TN 2 -> precision 1, recall 1/2, F1 2/3, accuracy 3/4.
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["pr_auc"] == pytest.approx(5 / 6)
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == pytest.approx((1.0, 0.5, 2 / 3, 0.75))
    # The threshold is inclusive: a score of exactly 0.5 is called positive.
    assert binary_metrics(np.array([1, 0]), np.array([0.5, 0.2]))["recall"] == 1.0


def test_label_without_positives_is_undefined_not_half():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.7], [0.2, 0.1], [0.6, 0.3], [0.1, 0.2]])
    out = classification_metrics(y, p, ["a", "b"])
    b = out["per_label"]["b"]
    assert math.isnan(b["auroc"]) and math.isnan(b["pr_auc"]) and math.isnan(b["recall"])
    assert b["precision"] == 0.0  # one item called positive, wrongly: defined, and 0
    assert b["accuracy"] == 0.75
    # Macro AUROC averages only the defined label a (AUROC 1), and says so.
    assert out["macro"]["auroc"] == 1.0 and out["macro"]["auroc_n_labels"] == 1


def test_unknown_labels_left_out_of_that_label_only():
    y = np.array([[1, 1], [0, 255], [1, 0], [0, 1], [255, 0]])
    p = np.array([[0.9, 0.8], [0.95, 0.99], [0.7, 0.2], [0.1, 0.6], [0.99, 0.1]])
    out = classification_metrics(y, p, ["a", "b"])
    # Label a: items 0-3 -> positives 0.9, 0.7; negatives 0.95, 0.1 -> 2 of 4 pairs right.
    assert out["per_label"]["a"]["n"] == 4 and out["per_label"]["a"]["auroc"] == 0.5
    # Label b: items 0, 2, 3, 4 -> positives 0.8, 0.6; negatives 0.2, 0.1 -> perfect.
    assert out["per_label"]["b"]["n"] == 4 and out["per_label"]["b"]["auroc"] == 1.0
    # Micro pools the 8 known pairs.
    yk = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    pk = np.array([0.9, 0.95, 0.7, 0.1, 0.8, 0.2, 0.6, 0.1])
    assert out["micro"]["auroc"] == pytest.approx(roc_auc_score(yk, pk))
    assert out["micro"]["n"] == 8


def test_weighted_average_uses_positive_counts():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 3)) < [0.1, 0.3, 0.5]).astype(int)
    p = np.clip(y * 0.3 + rng.random((200, 3)) * 0.8, 0, 1)
    out = classification_metrics(y, p, ["a", "b", "c"])
    for m, fn in (("recall", recall_score), ("precision", precision_score), ("f1", f1_score)):
        assert out["weighted"][m] == pytest.approx(fn(y, p >= 0.5, average="weighted"))
        assert out["macro"][m] == pytest.approx(fn(y, p >= 0.5, average="macro"))
        assert out["micro"][m] == pytest.approx(fn(y, p >= 0.5, average="micro"))
    assert out["macro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert out["weighted"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="weighted"))
    assert out["micro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert out["weighted"]["pr_auc"] == pytest.approx(average_precision_score(y, p, average="weighted"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_metrics_equal_sklearn_on_expanded_resample(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = rng.integers(0, 2, n)
    p = np.round(rng.random(n), 1)  # many ties
    w = rng.integers(0, 4, (5, n)).astype(float)
    got = weighted_binary_metrics(y, p, w, 0.5)
    for b in range(len(w)):
        idx = np.repeat(np.arange(n), w[b].astype(int))
        ref = binary_metrics(y[idx], p[idx], 0.5)
        for m in ("auroc", "pr_auc", "precision", "recall", "f1", "accuracy"):
            assert got[m][b] == pytest.approx(ref[m], abs=1e-12), m
        # and with sample_weight directly
        assert got["auroc"][b] == pytest.approx(roc_auc_score(y, p, sample_weight=w[b]))
        assert got["pr_auc"][b] == pytest.approx(average_precision_score(y, p, sample_weight=w[b]))


def test_weighted_metrics_undefined_without_a_class():
    got = weighted_binary_metrics(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1]), np.array([[1, 1, 0.0]]), 0.5)
    assert np.isnan(got["auroc"][0]) and np.isnan(got["pr_auc"][0])
    assert got["recall"][0] == 1.0


def test_bootstrap_matches_a_plain_loop_over_patients():
    rng = np.random.default_rng(7)
    n_patients = 12
    groups = np.repeat([f"p{i}" for i in range(n_patients)], 3)  # three items per patient
    y = (rng.random((len(groups), 2)) < 0.4).astype(int)
    y[5, 1] = 255
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    out = bootstrap_intervals(y, p, groups, ["a", "b"], n_resamples=200, seed=11)
    # Reference: the same patient draws, each resample expanded into rows and scored by sklearn.
    item_patient, counts = patient_resamples(groups, 200, 11)
    ref = []
    for c in counts:
        idx = np.concatenate([np.repeat(np.flatnonzero(item_patient == k), int(c[k])) for k in range(n_patients)])
        ref.append(classification_metrics(y[idx], p[idx], ["a", "b"]))
    for scope, key in (("per_label", "b"), ("macro", None), ("micro", None), ("weighted", None)):
        for m in ("auroc", "pr_auc", "f1", "recall"):
            vals = np.array([(r[scope][key] if key else r[scope])[m] for r in ref])
            vals = vals[~np.isnan(vals)]
            got = (out[scope][key] if key else out[scope])[m]
            assert got["ci_low"] == pytest.approx(np.percentile(vals, 2.5)), (scope, m)
            assert got["ci_high"] == pytest.approx(np.percentile(vals, 97.5)), (scope, m)
            assert got["n_resamples_defined"] == len(vals)


def test_bootstrap_resamples_whole_patients_and_is_seeded():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    item_patient, counts = patient_resamples(groups, 1000, seed=5)
    assert counts.shape == (1000, 3) and (counts.sum(axis=1) == 3).all()
    w = counts[:, item_patient]
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()  # items of a patient move together
    # Each patient is drawn Binomial(3, 1/3) times: mean 1.
    assert counts.mean() == pytest.approx(1.0, abs=0.05)
    assert np.array_equal(patient_resamples(groups, 1000, seed=5)[1], counts)
    assert not np.array_equal(patient_resamples(groups, 1000, seed=6)[1], counts)


def test_bootstrap_interval_of_a_rare_label_counts_defined_resamples():
    # One positive patient among 20: about (19/20)^20 = 36% of resamples lose it.
    groups = [f"p{i}" for i in range(20)]
    y = np.zeros((20, 1), dtype=int)
    y[0, 0] = 1
    p = np.linspace(0.9, 0.1, 20)[:, None]
    out = bootstrap_intervals(y, p, groups, ["rare"], n_resamples=1000, seed=0)
    n_def = out["per_label"]["rare"]["auroc"]["n_resamples_defined"]
    assert 560 < n_def < 720
    assert out["per_label"]["rare"]["auroc"]["ci_low"] == 1.0  # when defined, the positive ranks first


def test_zero_shot_is_softmax_of_scaled_cosines():
    rng = np.random.default_rng(0)
    x, pos, neg = rng.normal(size=(5, 8)), rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    scale = 50.0
    got = zero_shot_probabilities(x, pos, neg, scale)

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for i in range(5):
        for j in range(3):
            logits = np.array([scale * cos(x[i], pos[j]), scale * cos(x[i], neg[j])])
            soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            assert got[i, j] == pytest.approx(soft[0])
    with pytest.raises(ValueError, match="latent width"):
        zero_shot_probabilities(x[:, :4], pos, neg, scale)
