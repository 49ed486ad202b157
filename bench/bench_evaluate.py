"""Evaluation at CT-RATE sizes: bootstrap, retrieval, few-shot stratification and probe, reading a radiograph.

    python bench/bench_evaluate.py [--repeats 3] [--json out.json]

Synthetic inputs of the real shapes (3,039 validation volumes as in CT-RATE valid, 47,149
training volumes, 18 labels, 512-d latents, a 3,000 x 2,500 16-bit DICOM). Each step runs
``--repeats`` times; medians. The patient bootstrap is set beside the obvious alternative,
scikit-learn called per resample (timed on 20 resamples and scaled to 1000). No timing is
asserted: the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from tests.helpers.radiographs import chest_like, write_dicom
    from trainer.evaluation.bootstrap import bootstrap_intervals, patient_resamples
    from trainer.evaluation.classification import classification_metrics
    from trainer.evaluation.retrieval import retrieval_table
    from trainer.fewshot.probe import ProbeSettings, fit_probe, stratified_subset, train_validation_split
    from trainer.predict.radiograph import read_radiograph

    rng = np.random.default_rng(0)
    n_valid, n_train, n_labels, dim = 3039, 47149, 18, 512
    prevalence = rng.uniform(0.07, 0.45, n_labels)
    y = (rng.random((n_valid, n_labels)) < prevalence).astype(np.int64)
    p = np.clip(0.2 * y + 0.8 * rng.random(y.shape), 0, 1)
    groups = [f"p{i // 2}" for i in range(n_valid)]
    names = [str(j) for j in range(n_labels)]
    out: dict[str, float] = {}

    out["bootstrap_1000_s"] = timed(lambda: bootstrap_intervals(y, p, groups, names, n_resamples=1000), args.repeats)
    item_patient, counts = patient_resamples(groups, 20, 0)

    def sklearn_20():
        for c in counts:
            idx = np.repeat(np.arange(n_valid), c[item_patient].astype(int))
            classification_metrics(y[idx], p[idx], names)

    out["sklearn_per_resample_1000_s_extrapolated"] = 50 * timed(sklearn_20, 1)

    x, ct, rep = (rng.normal(size=(n_valid, dim)).astype(np.float32) for _ in range(3))
    scans = [f"s{i // 2}" for i in range(n_valid)]
    vols = [f"v{i}" for i in range(n_valid)]
    out["retrieval_table_s"] = timed(lambda: retrieval_table(x, ct, rep, vols, scans, y), args.repeats)

    y_train = (rng.random((n_train, n_labels)) < prevalence).astype(np.int64)
    out["stratified_1pct_s"] = timed(lambda: stratified_subset(y_train, 0.01, 1024), args.repeats)
    out["train_val_split_100pct_s"] = timed(lambda: train_validation_split(y_train, 0.2, 1024), args.repeats)
    x_train = rng.normal(size=(n_train, dim)).astype(np.float32)
    tr, va = train_validation_split(y_train, 0.2, 1024)
    settings = ProbeSettings(max_epochs=100, patience=20)
    out["probe_100pct_cpu_1thread_s"] = timed(
        lambda: fit_probe(x_train[tr], y_train[tr], x_train[va], y_train[va], 1024, settings), 1
    )

    with tempfile.TemporaryDirectory() as d:
        big = np.round(np.kron(chest_like(500, 0), np.ones((6, 5))) * 4095).astype(np.uint16)  # 3000 x 2500
        path = write_dicom(Path(d) / "big.dcm", big, "MONOCHROME1", WindowCenter=2048, WindowWidth=3000)
        out["read_dicom_3000x2500_s"] = timed(lambda: read_radiograph(path), args.repeats)
    for k, v in out.items():
        print(f"{k:45s} {v:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
