"""External validation on real radiographs: manifest cxr, then zero-shot on the set's own labels."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from schemas.cxr import read_cxr_manifest
from schemas.labels import CT_RATE_LABELS, mimic_ct_labels
from tests.helpers.chain import invoke
from tests.helpers.radiographs import chest_like, write_dicom, write_png
from tests.helpers.tiny_run import tiny_run
from trainer.encode import encode_images
from trainer.evaluation.external import evaluate_cxr_set
from trainer.evaluation.zeroshot import zero_shot_probabilities
from trainer.predict.radiograph import read_radiograph

SUBSET = list(mimic_ct_labels())[:3]


@pytest.fixture
def cxr_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    table = []
    for i in range(24):
        name = f"p{i // 2}/img{i}.png" if i % 3 else f"p{i // 2}/img{i}.dcm"
        (images / name).parent.mkdir(exist_ok=True)
        img = chest_like(72, seed=i)
        if name.endswith(".png"):
            write_png(images / name, img, 8)
        else:
            write_dicom(
                images / name, np.round(img * 1023).astype(np.uint16), "MONOCHROME2", bits_stored=10, modality="CR"
            )
        table.append({"CXRPath": name, "PatientID": f"p{i // 2}", **{n: int(rng.random() < 0.4) for n in SUBSET}})
    table[5][SUBSET[0]] = ""  # not annotated for this image
    table.append({"CXRPath": "missing.png", "PatientID": "px", **{n: 0 for n in SUBSET}})
    table.append({"CXRPath": "p0/img1.png", "PatientID": "p0", "ImageID": "dup", **{n: 2 for n in SUBSET}})
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    table.append({"CXRPath": "broken.png", "PatientID": "pb", **{n: 1 for n in SUBSET}})
    with (tmp_path / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["CXRPath", "PatientID", "ImageID", *SUBSET])
        w.writeheader()
        w.writerows(table)
    out = tmp_path / "cxr.jsonl"
    output = invoke(["manifest", "cxr", "--images", images, "--table", tmp_path / "table.csv", "--out", out])
    return out, output


def test_manifest_cxr_rows_and_problems(cxr_set):
    out, output = cxr_set
    rows = read_cxr_manifest(out)
    assert len(rows) == 25 and "wrote 25 rows" in output  # 24 images + the broken file (found on disk)
    problems = [json.loads(line) for line in out.with_name(out.name + ".problems.jsonl").read_text().splitlines()]
    assert {p["problem"].split(" ")[0] for p in problems} == {"image", "label"}
    first = rows[0]
    absent = [n for n in CT_RATE_LABELS if n not in SUBSET]
    assert all(first.labels[CT_RATE_LABELS.index(n)] is None for n in absent)
    assert rows[5].labels[CT_RATE_LABELS.index(SUBSET[0])] is None


def test_evaluate_real_radiographs_on_their_labels(cxr_set, tmp_path):
    out, _ = cxr_set
    run = tiny_run()
    run.checkpoint = "tiny"
    cfg = SimpleNamespace(
        cxr_manifest=out, batch_size=8, labels=None, threshold=0.5, n_resamples=50, seed=0, run="tiny",
        out=tmp_path / "eval", model_dump=lambda mode: {},
    )  # fmt: skip
    results = evaluate_cxr_set(run, cfg, "cpu")
    assert results["labels_evaluated"] == SUBSET and len(results["labels_absent"]) == 15
    assert len(results["failed_images"]) == 1 and "broken.png" in results["failed_images"][0]
    assert list(results["zero_shot"]) == ["radiograph_real"] and results["retrieval"] == {}
    # Against a direct computation on the 24 readable images.
    rows = [r for r in read_cxr_manifest(out) if "broken" not in r.cxr_path]
    x = encode_images(run.encoder, run.eval_transform, [read_radiograph(r.cxr_path).image for r in rows], 8)
    j = CT_RATE_LABELS.index(SUBSET[1])
    p = zero_shot_probabilities(x, run.prompts["x2ct_clip"]["positive"], run.prompts["x2ct_clip"]["negative"], 20.0)
    y = np.array([r.labels[j] for r in rows])
    got = results["zero_shot"]["radiograph_real"]["x2ct_clip"]["per_label"][SUBSET[1]]["auroc"]["value"]
    assert got == pytest.approx(roc_auc_score(y, p[:, j]))
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert "retrieval.csv" not in written and "report.html" in written and "roc_real_x2ct_clip.png" in written


@pytest.mark.parametrize("field", ["image_id", "patient_id", "cxr_path"])
def test_cxr_row_refuses_characters_a_store_cannot_hold(field):
    from pydantic import ValidationError

    from schemas.cxr import CXRRow

    row = {"image_id": "img1", "patient_id": "p1", "cxr_path": "p1/img1.png", "labels": [None] * len(CT_RATE_LABELS)}
    CXRRow.model_validate(row)  # the clean row is valid
    with pytest.raises(ValidationError, match="cannot hold"):
        CXRRow.model_validate({**row, field: row[field] + "\x00"})
