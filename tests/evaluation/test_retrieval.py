"""Recall@K and MAP@K against hand-worked cases and a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation.retrieval import label_overlap, map_at_k, recall_at_k, retrieval_table


def _unit(angles_deg):
    a = np.deg2rad(np.asarray(angles_deg, dtype=float))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_recall_hand_worked():
    # Gallery on the unit circle at 0, 10, 20, 30 degrees; queries at 0 (wants g0: rank 1),
    # 12 (wants g3 at 30: g1 (2 deg), g2 (8), g0 (12) come first -> rank 4), 30 (wants g3: rank 1).
    g = _unit([0, 10, 20, 30])
    q = _unit([0, 12, 30])
    out = recall_at_k(q, g, ["a", "d", "d"], ["a", "x", "y", "d"], ks=(1, 3, 4))
    assert out == {"recall@1": pytest.approx(2 / 3), "recall@3": pytest.approx(2 / 3), "recall@4": 1.0}


def test_recall_refuses_query_without_relevant_item():
    with pytest.raises(ValueError, match="no relevant item"):
        recall_at_k(_unit([0]), _unit([0]), ["a"], ["b"])


def test_recall_ties_count_against_the_query():
    g = _unit([0, 0, 40])  # g0 and g1 identical
    out = recall_at_k(_unit([0]), g, ["b"], ["a", "b", "c"], ks=(1, 2))
    assert out == {"recall@1": 0.0, "recall@2": 1.0}


def test_recall_any_relevant_item_counts():
    # R->X: a scan's report is relevant to the radiographs of both of its reconstructions.
    g = _unit([0, 50, 60])
    out = recall_at_k(_unit([55]), g, ["s1"], ["s0", "s1", "s1"], ks=(1,))
    assert out["recall@1"] == 1.0


def test_label_overlap_is_jaccard_of_positives():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 255, 1, 0]])
    b = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    # row 0: {0,1} vs {0,2} -> 1/3; row 1: {} vs {0} -> 0; row 2: label 1 unknown in a -> {0,2} vs {0} -> 1/2.
    assert label_overlap(a, b) == pytest.approx([1 / 3, 0.0, 0.5])


def test_map_hand_worked():
    g = _unit([0, 10, 20, 30])
    gl = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])  # g3 has no positive label: left out of the gallery
    q = _unit([1])
    ql = np.array([[1, 0]])
    # Order g0 (1 deg), g1 (9), g2 (19): overlaps 1, 1/2, 0.
    out = map_at_k(q, g, ql, gl, ks=(1, 2, 3, 10))
    assert out == {
        "map@1": pytest.approx(1.0),
        "map@2": pytest.approx(0.75),
        "map@3": pytest.approx(0.5),
        "map@10": pytest.approx(0.5),  # K beyond the gallery: all of it
    }


def test_retrieval_table_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 40
    scans = [f"s{i // 2}" for i in range(n)]  # two reconstructions per scan
    vols = [f"v{i}" for i in range(n)]
    ct = rng.normal(size=(n, 8))
    report = np.repeat(rng.normal(size=(n // 2, 8)), 2, axis=0)
    x = ct + rng.normal(scale=1.0, size=ct.shape)
    labels = (rng.random((n, 5)) < 0.3).astype(int)
    labels[1::2] = labels[::2]  # a scan's reconstructions share labels
    out = retrieval_table(x, ct, report, vols, scans, labels, ks=(1, 5))

    def norm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    # X->R by brute force: rank of the query's scan report among the 20 distinct reports.
    reports = norm(report[::2])
    hits = []
    for i in range(n):
        sims = norm(x)[i] @ reports.T
        rank = 1 + np.sum(sims > sims[i // 2])
        hits.append(rank)
    hits = np.array(hits)
    assert out["X->R"]["recall@1"] == pytest.approx(np.mean(hits <= 1))
    assert out["X->R"]["recall@5"] == pytest.approx(np.mean(hits <= 5))
    assert out["X->R"]["n_gallery"] == 20 and out["R->X"]["n_queries"] == 20
    # C->X by brute force.
    ranks = []
    for i in range(n):
        sims = norm(ct)[i] @ norm(x).T
        ranks.append(1 + np.sum(sims > sims[i]))
    assert out["C->X"]["recall@5"] == pytest.approx(np.mean(np.array(ranks) <= 5))
    # MAP@5 of X->C by brute force (gallery: items with a positive label).
    keep = labels.any(axis=1)
    vals = []
    for i in range(n):
        sims = norm(x)[i] @ norm(ct)[keep].T
        top = np.argsort(-sims, kind="stable")[:5]
        vals.append(np.mean([label_overlap(labels[i], labels[keep][t]) for t in top]))
    assert out["X->C"]["map@5"] == pytest.approx(np.mean(vals))


def test_map_undefined_without_positive_gallery_labels():
    out = map_at_k(_unit([0]), _unit([0, 10]), np.array([[1, 0]]), np.array([[0, 0], [0, 255]]), ks=(1, 5))
    assert out == {"map@1": None, "map@5": None}
