"""evaluate, fewshot and predict through the command line, on a run trained briefly on the chain."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.embed.reader import load_embeddings
from tests.helpers.chain import invoke
from tests.helpers.radiographs import chest_like, write_dicom, write_png
from tests.helpers.train_run import NO_AUGMENT, tiny_train_config
from trainer.evaluation.zeroshot import zero_shot_probabilities
from trainer.train import train


@pytest.fixture(scope="module")
def run_dir(chain, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = tiny_train_config(chain, out, max_steps=12, lr=2e-3, checkpoint_every=6, augment=NO_AUGMENT)
    train(cfg)
    yield out
    torch.set_num_threads(before)


def test_evaluate_command(chain, run_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--run", run_dir, "--drr", chain.drr["valid"], "--emb", chain.embeddings["valid"]]
    printed = invoke([*args, "--out", out, "--views", "pa,lateral", "--n-resamples", "20", "--no-progress"])
    assert "ct_upper_bound" in printed and "macro AUROC" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["zero_shot"]) == {"radiograph_pa", "radiograph_lateral", "ct_upper_bound"}
    assert set(m["retrieval"]) == {"pa", "lateral"} and m["identity"]["cache"]["identity_sha256"]
    # The CT upper bound is CT-CLIP's zero-shot on the cached latents, whatever the run.
    emb = load_embeddings(chain.embeddings["valid"])
    p = zero_shot_probabilities(
        emb.ct, emb.prompts["ct_clip"]["positive"], emb.prompts["ct_clip"]["negative"], float(np.exp(emb.temperature))
    )
    rows = list(csv.DictReader((out / "zero_shot.csv").open()))
    name = m["labels_evaluated"][0]
    j = list(m["labels_evaluated"]).index(name)
    y = emb.labels[:, j]
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_auc_score

        want = roc_auc_score(y, p[:, j])
        got = [
            r
            for r in rows
            if r["source"] == "ct_upper_bound"
            and r["prompt_set"] == "ct_clip"
            and r["label"] == name
            and r["metric"] == "auroc"
        ]
        assert float(got[0]["value"]) == pytest.approx(want)
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 8
    # A second evaluation into the same folder is refused; a store and a cache of different splits too.
    runner = CliRunner()
    again = runner.invoke(app, [str(a) for a in [*args, "--out", out, "--no-progress"]])
    assert again.exit_code == 2 and "already holds an evaluation" in again.output
    mixed = runner.invoke(
        app,
        [str(a) for a in ["evaluate", "--run", run_dir, "--drr", chain.drr["train"], "--emb", chain.embeddings["valid"],
                          "--out", tmp_path / "mixed", "--no-progress"]],
    )  # fmt: skip
    assert mixed.exit_code == 2 and "different manifests" in mixed.output, mixed.output


def test_fewshot_command(chain, run_dir, tmp_path):
    out = tmp_path / "fewshot"
    invoke(
        [
            "fewshot", "--run", run_dir, "--train-drr", chain.drr["train"], "--train-emb", chain.embeddings["train"],
            "--test-drr", chain.drr["valid"], "--test-emb", chain.embeddings["valid"], "--out", out,
            "--fractions", "0.5,1", "--seeds", "1024,1234", "--max-epochs", "5", "--patience", "2", "--no-progress",
        ]
    )  # fmt: skip
    result = json.loads((out / "fewshot.json").read_text())
    encoders = {r["encoder"] for r in result["summary"]}
    assert len(encoders) == 2 and any(e.startswith("baseline (randomly initialised") for e in encoders)
    assert len(result["rows"]) == 2 * 2 * 2 and (out / "fewshot.png").stat().st_size > 1000
    assert {r["n_train"] + r["n_val"] for r in result["rows"] if r["fraction"] == 1.0} == {result["n_train"]}


def test_predict_command(chain, run_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    stored = np.round(chest_like(80, seed=1) * 1023).astype(np.uint16)
    write_dicom(folder / "m2.dcm", stored, "MONOCHROME2", bits_stored=10, modality="CR")
    write_dicom(folder / "m1.dcm", 1023 - stored, "MONOCHROME1", bits_stored=10, modality="CR")
    write_png(folder / "c.png", chest_like(80, seed=2), 16)
    (folder / "broken.dcm").write_bytes(b"not a dicom at all" * 20)
    out = tmp_path / "preds.csv"
    printed = invoke(
        ["predict", folder, "--run", run_dir, "--out", out, "--emb", chain.embeddings["valid"], "--top-k", "3"]
    )
    assert "3 radiograph(s) scored, 1 failed" in printed and "not calibrated" in printed
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(out.open())}
    assert rows["broken.dcm"]["status"] == "error" and rows["m1.dcm"]["status"] == "ok"
    for label in ("Cardiomegaly", "Lung nodule", "Pleural effusion"):  # MONOCHROME1 twin scores the same
        assert float(rows["m1.dcm"][label]) == pytest.approx(float(rows["m2.dcm"][label]), abs=2e-6)
    assert rows["c.png"]["similar_ct_3"] and "MRN-123456" not in out.read_text()
    only_bad = CliRunner().invoke(
        app, ["predict", str(folder / "broken.dcm"), "--run", str(run_dir), "--out", str(tmp_path / "bad.csv")]
    )
    assert only_bad.exit_code == 1 and "no radiograph could be scored" in only_bad.output
    assert "error" in (tmp_path / "bad.csv").read_text()  # the table is still written
    js = tmp_path / "preds.json"
    invoke(["predict", folder / "m1.dcm", "--run", run_dir, "--out", js, "--keep-identifiers"])
    data = json.loads(js.read_text())
    assert data["predictions"][0]["PatientID"] == "MRN-123456" and "not a diagnosis" in data["note"]


def test_evaluate_real_radiograph_set_command(run_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with (tmp_path / "t.csv").open("w") as f:
        f.write("CXRPath,PatientID,Emphysema,Atelectasis\n")
        for i in range(8):
            write_png(images / f"{i}.png", chest_like(64, seed=i), 8)
            f.write(f"{i}.png,p{i // 2},{i % 2},{int(i < 3)}\n")
    invoke(["manifest", "cxr", "--images", images, "--table", tmp_path / "t.csv", "--out", tmp_path / "cxr.jsonl"])
    out = tmp_path / "eval"
    printed = invoke(["evaluate", "--run", run_dir, "--cxr-manifest", tmp_path / "cxr.jsonl", "--out", out,
                      "--n-resamples", "10"])  # fmt: skip
    assert "radiograph_real" in printed and "ct_upper_bound" not in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["labels_evaluated"] == ["Emphysema", "Atelectasis"] and m["n_patients"] == 4
    both = CliRunner().invoke(app, ["evaluate", "--run", str(run_dir), "--cxr-manifest", str(tmp_path / "cxr.jsonl"),
                                    "--drr", "x.zarr", "--out", str(tmp_path / "e2")])  # fmt: skip
    assert both.exit_code == 2 and "either drr and embeddings" in both.output
