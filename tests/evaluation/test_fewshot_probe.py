"""Few-shot probes: stratified subsets keep prevalences, and a planted signal is recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.fewshot.probe import ProbeSettings, fewshot_rows, stratified_subset, summarise, train_validation_split


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny probes: intra-op threads only add contention on a shared machine (60x slower here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _planted(n, d=16, n_labels=3, seed=0):
    """Labels 0 and 1 are linear in the latents (logistic, steep); label 2 is pure noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.zeros((n, n_labels), dtype=np.int64)
    y[:, 0] = (x[:, 0] + 0.2 * rng.normal(size=n)) > 0.5
    y[:, 1] = (x[:, 1] - x[:, 2] + 0.2 * rng.normal(size=n)) > 0.0
    y[:, 2] = rng.random(n) < 0.3
    return x, y


def test_stratified_subset_keeps_prevalence():
    _, y = _planted(2000)
    sub = stratified_subset(y, 0.05, seed=1024)
    assert len(sub) == 100 and len(np.unique(sub)) == 100
    assert np.abs(y[sub].mean(axis=0) - y.mean(axis=0)).max() < 0.03
    assert np.array_equal(sub, stratified_subset(y, 0.05, seed=1024))
    assert not np.array_equal(sub, stratified_subset(y, 0.05, seed=1234))
    tr, va = train_validation_split(y[sub], 0.2, seed=1024)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)


def test_probe_recovers_planted_signal_and_not_noise():
    x, y = _planted(1500, seed=0)
    xt, yt = _planted(800, seed=1)
    y[5, 0] = 255  # an unknown label is masked out, not a crash
    rows = fewshot_rows(
        {"planted": (x, xt)}, y, yt, ["a", "b", "noise"], fractions=(0.1, 1.0), seeds=(1024, 1234),
        settings=ProbeSettings(max_epochs=60, patience=10),
    )  # fmt: skip
    full = [r for r in rows if r["fraction"] == 1.0]
    for r in full:
        assert r["auroc/a"] > 0.95 and r["auroc/b"] > 0.95
        assert abs(r["auroc/noise"] - 0.5) < 0.1
        assert r["n_train"] == 1200 and r["n_val"] == 300
    summary = {s["fraction"]: s for s in summarise(rows)}
    assert summary[1.0]["auroc_macro_mean"] >= summary[0.1]["auroc_macro_mean"] - 0.02
    assert summary[0.1]["n_seeds"] == 2


def test_shuffled_latents_give_chance():
    x, y = _planted(1000, seed=2)
    xt, yt = _planted(600, seed=3)
    rng = np.random.default_rng(0)
    rows = fewshot_rows(
        {"shuffled": (x[rng.permutation(len(x))], xt)}, y, yt, ["a", "b", "noise"], fractions=(1.0,), seeds=(1024,),
        settings=ProbeSettings(max_epochs=40, patience=5),
    )  # fmt: skip
    assert rows[0]["auroc_macro"] == pytest.approx(0.5, abs=0.08)


def test_outputs_table_summary_and_plot(tmp_path):
    import json

    from trainer.fewshot.stage import write_fewshot_outputs

    x, y = _planted(400, seed=4)
    xt, yt = _planted(200, seed=5)
    settings = ProbeSettings(max_epochs=10, patience=3)
    latents = {"trained": (x, xt), "baseline": (x[::-1], xt)}
    rows = fewshot_rows(latents, y, yt, ["a", "b", "noise"], (0.05, 1.0), (1024, 1234), settings)
    # Both encoders are probed on the same subsets.
    assert [r["n_train"] for r in rows[::2]] == [r["n_train"] for r in rows[1::2]]
    out = write_fewshot_outputs(tmp_path, rows, {"run": "r"})
    assert (tmp_path / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "fewshot.csv").read_text().splitlines()) == 1 + 8
    assert len(out["summary"]) == 4 and json.loads((tmp_path / "fewshot.json").read_text())["run"] == "r"
    trained = {s["fraction"]: s for s in out["summary"] if s["encoder"] == "trained"}
    vals = [r["auroc_macro"] for r in rows if r["encoder"] == "trained" and r["fraction"] == 1.0]
    assert trained[1.0]["auroc_macro_mean"] == pytest.approx(np.mean(vals))
