"""predict on files: twins score alike, broken files get their own error row, retrieval, outputs."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from schemas.labels import CT_RATE_LABELS
from tests.helpers.radiographs import chest_like, write_dicom, write_png
from tests.helpers.tiny_run import tiny_run
from trainer.encode import encode_images
from trainer.predict.radiograph import read_radiograph
from trainer.predict.stage import NOTE, PredictError, list_inputs, predict_files, write_rows
from trainer.teacher_match import TeacherMismatchError


def _scores(row):
    return np.array([row["scores"][n] for n in CT_RATE_LABELS])


@pytest.fixture(scope="module")
def run():
    return tiny_run()


def test_monochrome1_scores_as_its_monochrome2_twin(tmp_path, run):
    stored = np.round(chest_like(128, seed=1) * 4095).astype(np.uint16)
    a = write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2")
    b = write_dicom(tmp_path / "m1.dcm", 4095 - stored, "MONOCHROME1")
    c = write_dicom(tmp_path / "other.dcm", np.round(chest_like(128, seed=9)[::-1] * 4095).astype(np.uint16))
    rows = predict_files(run, [a, b, c])
    assert [r["status"] for r in rows] == ["ok"] * 3
    np.testing.assert_allclose(_scores(rows[0]), _scores(rows[1]), atol=1e-5)
    # ...and the test can fail: another image scores differently.
    assert np.abs(_scores(rows[0]) - _scores(rows[2])).max() > 1e-3


def test_png_16_and_8_bit_score_alike(tmp_path, run):
    img = chest_like(128, seed=2)
    rows = predict_files(run, [write_png(tmp_path / "a.png", img, 8), write_png(tmp_path / "b.png", img, 16)])
    assert np.abs(_scores(rows[0]) - _scores(rows[1])).max() < 5e-3


def test_folder_with_a_broken_file_scores_the_rest(tmp_path, run):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_png(folder / "a.png", chest_like(96, seed=3), 8)
    write_dicom(folder / "sub" / "b.dcm", np.round(chest_like(96, seed=4) * 4095).astype(np.uint16))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (folder / ".hidden.png").write_bytes(b"junk")
    paths = list_inputs([folder, tmp_path / "missing.dcm"])
    assert [p.name for p in paths] == ["a.png", "broken.png", "b.dcm", "missing.dcm"]
    rows = predict_files(run, paths)
    status = {r["file"].split("/")[-1]: r for r in rows}
    assert status["a.png"]["status"] == status["b.dcm"]["status"] == "ok"
    assert status["broken.png"]["status"] == "error" and "unreadable image" in status["broken.png"]["error"]
    assert status["missing.dcm"]["status"] == "error" and "no such file" in status["missing.dcm"]["error"]
    out = tmp_path / "preds.csv"
    write_rows(rows, out, list(CT_RATE_LABELS), {"run": "r"})
    table = list(csv.DictReader(out.open()))
    assert len(table) == 4 and all(r["note"] == NOTE for r in table)
    ok = [r for r in table if r["status"] == "ok"]
    assert all(0.0 <= float(r["Lung nodule"]) <= 1.0 for r in ok)
    assert all(r["Lung nodule"] == "" for r in table if r["status"] == "error")


def test_identifiers_stay_out_of_outputs_unless_kept(tmp_path, run):
    path = write_dicom(tmp_path / "a.dcm", np.round(chest_like(96) * 4095).astype(np.uint16))
    for keep, suffix in ((False, ".json"), (False, ".csv"), (True, ".json")):
        rows = predict_files(run, [path], keep_identifiers=keep)
        out = tmp_path / f"p{keep}{suffix}"
        write_rows(rows, out, list(CT_RATE_LABELS), {"run": "r"})
        text = out.read_text()
        assert ("MRN-123456" in text) == keep and ("Doe^Jane" in text) == keep and ("19600101" in text) == keep
        assert "not calibrated" in text
    data = json.loads((tmp_path / "pFalse.json").read_text())
    assert data["note"] == NOTE and data["predictions"][0]["Modality"] == "DX"


def test_similar_ct_retrieval_and_width_check(tmp_path, run):
    imgs = [chest_like(96, seed=s) for s in range(3)]
    paths = [write_png(tmp_path / f"{s}.png", im, 8) for s, im in enumerate(imgs)]
    z = encode_images(run.encoder, run.eval_transform, [read_radiograph(p).image for p in paths], 4)
    rng = np.random.default_rng(0)
    ct = np.concatenate([rng.normal(size=(5, z.shape[1])), z[[2, 0, 1]] * 3.0])  # rows 5, 6, 7 are the images' own
    cache = SimpleNamespace(
        ct=ct, ids=[f"v{i}" for i in range(8)], identity=SimpleNamespace(checkpoint_sha256="a" * 64)
    )
    rows = predict_files(run, paths, cache=cache, cache_path=tmp_path / "c.h5", top_k=2)
    assert [r["similar_ct"][0]["volume_id"] for r in rows] == ["v6", "v7", "v5"]
    assert rows[0]["similar_ct"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert len(rows[0]["similar_ct"]) == 2
    wide = SimpleNamespace(ct=np.zeros((2, 32)), ids=["a", "b"], identity=SimpleNamespace(checkpoint_sha256=None))
    with pytest.raises(TeacherMismatchError, match="32-d latents but the run's encoder gives 16-d"):
        predict_files(run, paths, cache=wide, cache_path=tmp_path / "c.h5")
    other = SimpleNamespace(ct=ct, ids=cache.ids, identity=SimpleNamespace(checkpoint_sha256="b" * 64))
    with pytest.raises(TeacherMismatchError, match="not comparable"):
        predict_files(run, paths, cache=other, cache_path=tmp_path / "c.h5")
    with pytest.raises(PredictError, match="no prompt set 'nope'"):
        predict_files(run, paths, prompt_set="nope")
