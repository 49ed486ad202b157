"""evaluate's body on the chain's real stage outputs (valid DRR store + embed-ct cache)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr
from sklearn.metrics import roc_auc_score

from pipeline.embed.reader import load_embeddings
from schemas.labels import CT_RATE_LABELS
from tests.helpers.tiny_run import tiny_run
from trainer.encode import encode_images
from trainer.evaluation.stage import CT_SOURCE, EvaluateError, evaluate_latents, write_outputs
from trainer.evaluation.zeroshot import zero_shot_probabilities


@pytest.fixture(scope="module")
def valid(chain):
    emb = load_embeddings(chain.embeddings["valid"])
    group = zarr.open_group(str(chain.drr["valid"]), mode="r")
    row = {str(v): i for i, v in enumerate(group["ids"][:])}
    images = [np.asarray(group["images"][row[v], 0]).astype(np.float32) / 65535 for v in emb.ids]
    run = tiny_run(latent_dim=emb.ct.shape[1])
    x = encode_images(run.encoder, run.eval_transform, images, 4)
    patients = ["_".join(s.split("_")[:2]) for s in emb.scan_ids]
    return emb, x, patients


def _evaluate(emb, x, patients, **kw):
    return evaluate_latents(
        {"pa": x}, emb.ct, emb.report, emb.labels, patients, emb.ids, emb.scan_ids, emb.prompts, emb.temperature,
        list(CT_RATE_LABELS), **kw,
    )  # fmt: skip


def test_metrics_agree_with_a_direct_computation(valid):
    emb, x, patients = valid
    results, probs = _evaluate(emb, x, patients, n_resamples=30)
    names = results["labels_evaluated"]
    scale = float(np.exp(emb.temperature))
    for src, lat in (("radiograph_pa", x), (CT_SOURCE, emb.ct)):
        p = zero_shot_probabilities(lat, emb.prompts["ct_clip"]["positive"], emb.prompts["ct_clip"]["negative"], scale)
        for j, name in enumerate(names):
            y = emb.labels[:, j]
            rec = results["zero_shot"][src]["ct_clip"]["per_label"][name]
            if 0 < y.sum() < len(y):
                assert rec["auroc"]["value"] == pytest.approx(roc_auc_score(y, p[:, j]))
            else:  # a label with no positive in this split: undefined, never 0.5
                assert rec["auroc"]["value"] is None and rec["pr_auc"]["value"] is None
    assert set(results["zero_shot"]["radiograph_pa"]) == {"x2ct_clip", "ct_clip"}
    assert results["n_items"] == len(emb.ids) and results["retrieval"]["pa"]["X->C"]["n_gallery"] == len(emb.ids)


def test_radiograph_latents_equal_to_ct_reproduce_the_upper_bound(valid):
    emb, _, patients = valid
    results, _ = _evaluate(emb, emb.ct.copy(), patients, n_resamples=20)
    zs = results["zero_shot"]
    assert zs["radiograph_pa"] == zs[CT_SOURCE]
    assert results["retrieval"]["pa"]["X->C"]["recall@1"] == 1.0
    assert results["retrieval"]["pa"]["X->R"] == results["retrieval"]["pa"]["C->R"]


def test_external_set_keeps_only_its_labels_and_width_is_checked(valid):
    emb, x, patients = valid
    labels = emb.labels.copy()
    labels[:, 10:] = 255  # an external set annotated for the first ten labels only
    from dataclasses import replace

    results, _ = _evaluate(replace(emb, labels=labels), x, patients, n_resamples=0)
    assert len(results["labels_evaluated"]) == 10 and len(results["labels_absent"]) == 8
    assert results["zero_shot"][CT_SOURCE]["x2ct_clip"]["macro"]["auroc"]["ci_low"] is None  # no bootstrap asked
    with pytest.raises(EvaluateError, match="16-d latents but the cache holds 32-d"):
        _evaluate(emb, x[:, :16], patients, n_resamples=0)


def test_outputs_are_written_and_consistent(valid, tmp_path):
    emb, x, patients = valid
    results, probs = _evaluate(emb, x, patients, n_resamples=20)
    written = write_outputs(tmp_path, results, probs, emb.labels, list(CT_RATE_LABELS), {"run": "tiny"})
    names = {p.name for p in written}
    assert {"metrics.json", "zero_shot.csv", "zero_shot_auroc.csv", "retrieval.csv", "report.html"} <= names
    assert {"roc_pa_x2ct_clip.png", "pr_pa_ct_clip.png"} <= names
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["zero_shot"] == json.loads(json.dumps(results["zero_shot"]))
    rows = list(csv.DictReader((tmp_path / "zero_shot.csv").open()))
    macro = [
        r
        for r in rows
        if r["source"] == CT_SOURCE
        and r["prompt_set"] == "x2ct_clip"
        and r["label"] == "macro"
        and r["metric"] == "auroc"
    ]
    assert float(macro[0]["value"]) == pytest.approx(
        results["zero_shot"][CT_SOURCE]["x2ct_clip"]["macro"]["auroc"]["value"]
    )
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "upper bound" in html
