"""pretrain-ctclip on tiny inputs: run folder, export loadable by embed-ct, exact resume, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.ctclip.checkpoint import load_ctclip
from pipeline.ctclip.text import load_tokenizer, report_text, tokenize
from schemas.pretrain import PretrainConfig
from tests.helpers.embed_data import build_inputs
from trainer.teacher import data as tdata
from trainer.teacher.pretrain import PretrainRunError, Trainer, run_pretrain


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    train = build_inputs(root / "train", n_scans=6, recons=2, bad=True, seed=1)
    valid = build_inputs(root / "valid", n_scans=4, recons=1, seed=2)
    return train, valid


def _cfg(inputs, out, **kw):
    train, valid = inputs
    base = dict(
        manifest=train.manifest,
        valid_manifest=valid.manifest,
        tokenizer=train.tokenizer,
        out=out,
        model="tiny",
        epochs=2,
        batch_size=2,
        warmup_steps=2,
        checkpoint_every=1,
        threads=1,
        progress=False,
    )
    base.update(kw)
    return PretrainConfig(**base)


def test_sentence_tokens_joined_equal_the_tokenized_report(inputs):
    train, _ = inputs
    tok = load_tokenizer(train.tokenizer)
    for row in train.rows:
        text = report_text(row.findings, row.impressions)
        parts = tdata.split_sentences(text) or [""]
        ids = tdata.text_ids(tok(parts, add_special_tokens=False)["input_ids"], tok.cls_token_id, tok.sep_token_id, 64)
        assert ids == tokenize(tok, [text], max_length=64)[0][0].tolist()


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = run_pretrain(_cfg(inputs, out))
    return out, result


def test_run_folder_and_export_load_into_embed_ct(finished, inputs):
    out, result = finished
    for name in ("config.json", "out.log", "metrics.jsonl", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"train", "valid"}
    assert [x["epoch"] for x in lines if x["split"] == "valid"] == [0, 1]
    # The truncated and the too-small volume are left out and recorded; the rest trained.
    failures = json.loads((out / "volumes" / "train.json").read_text())["failures"]
    assert len(failures) == 2
    # The export is a plain state dict that loads strictly with its own config, and holds the best weights.
    model = load_ctclip(result.export / "ctclip.pt", cfg=str(result.export / "model_config.json"))
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k]), k
    assert (result.export / "vocab.txt").read_text() == (inputs[0].tokenizer / "vocab.txt").read_text()
    assert json.loads((result.export / "provenance.json").read_text())["step"] == best["step"]


def test_an_interrupted_run_resumes_to_the_same_weights(finished, inputs, tmp_path, monkeypatch):
    out_ref, _ = finished
    out = tmp_path / "run"
    original = Trainer.train_step

    def crash_at_step_3(self, rows):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self, rows)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(_cfg(inputs, out))
    monkeypatch.setattr(Trainer, "train_step", original)
    run_pretrain(_cfg(inputs, out))
    ref = torch.load(out_ref / "checkpoints" / "latest.pt", weights_only=True)
    got = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert got["step"] == ref["step"]
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    # metrics.jsonl was cut back at the checkpoint, so no line is doubled.
    strip = lambda p: [(x["step"], x["split"]) for x in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert strip(out) == strip(out_ref)


def test_other_settings_on_the_same_folder_are_refused(finished, inputs):
    out, _ = finished
    with pytest.raises(PretrainRunError, match="lr"):
        run_pretrain(_cfg(inputs, out, lr=0.5))


def test_cli_names_a_missing_vocabulary(inputs, tmp_path):
    train, _ = inputs
    res = CliRunner().invoke(
        app,
        [
            "pretrain-ctclip",
            "--manifest",
            str(train.manifest),
            "--tokenizer",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 2
    assert "vocab.txt" in res.output


def test_cli_names_an_unknown_anchor_unit(inputs, tmp_path):
    train, _ = inputs
    out = tmp_path / "r"
    res = CliRunner().invoke(
        app,
        ["pretrain-ctclip", "--manifest", str(train.manifest), "--tokenizer", str(tmp_path), "--out", str(out)]
        + ["--anchor-units", "phrase"],
    )
    assert res.exit_code == 2
    assert "anchor_units" in res.output and "'sentence' or 'word'" in res.output
    assert not out.exists()


def test_sentence_anchors_weigh_sentences_by_rarity():
    import numpy as np

    from trainer.teacher.pretrain import sentence_anchors

    common, a, b = [1, 2], [3], [4, 5]
    pairs = tdata.PairSet(
        ids=["x", "y", "z", "w"],
        scan_ids=["x", "y", "z", "w"],
        patient_ids=["x", "y", "z", "w"],
        volumes=np.zeros((4, 1, 1, 1, 1), np.float16),
        sentences=[[common, a], [common, a], [common, b], [common]],
        labels=np.zeros((4, 18), np.uint8),
        failures={},
    )
    z = sentence_anchors(pairs, 16, seed=0)
    assert np.allclose(np.linalg.norm(z[:3], axis=1), 1.0)
    assert np.allclose(z[0], z[1])  # same sentences, same anchor
    assert not np.allclose(z[0], z[2])
    assert np.allclose(z[3], 0.0)  # only the sentence every report has: weight log(1) = 0


def test_word_anchors_bring_phrasings_of_one_finding_together():
    import numpy as np

    from trainer.teacher.pretrain import sentence_anchors, word_anchors

    # token ids: 1 "there", 2 "is", 3 "emphysema", 4 "seen", 5 "changes", 6 "effusion", 7 "no", 8 "heart", 9 "normal"
    common = [8, 2, 9]
    rows = [
        [common, [1, 2, 3]],  # "there is emphysema"
        [common, [3, 5, 4]],  # "emphysema changes seen": another phrasing, no sentence in common
        [common, [1, 2, 6]],  # "there is effusion"
        [common, [7, 6]],  # "no effusion"
        [common],
    ]
    n = len(rows)
    pairs = tdata.PairSet(
        ids=[str(i) for i in range(n)],
        scan_ids=[str(i) for i in range(n)],
        patient_ids=[str(i) for i in range(n)],
        volumes=np.zeros((n, 1, 1, 1, 1), np.float16),
        sentences=rows,
        labels=np.zeros((n, 18), np.uint8),
        failures={},
    )
    dim = 4096  # random vectors of this size are nearly orthogonal: cosines are the shared IDF mass
    s, w = sentence_anchors(pairs, dim, seed=0), word_anchors(pairs, dim, seed=0)

    # By hand: each row's weights over its unigrams and bigrams, idf = ln(5 reports / reports holding it).
    def weights(row):
        grams = {(t,) for sent in row for t in sent} | {g for sent in row for g in zip(sent, sent[1:])}
        return grams

    grams = [weights(r) for r in rows]
    idf = {g: np.log(n / sum(g in other for other in grams)) for g in set().union(*grams)}
    expected = np.array(
        [
            [
                sum(idf[g] ** 2 for g in a & b)
                / np.sqrt(sum(idf[g] ** 2 for g in a) * sum(idf[g] ** 2 for g in b) or 1)
                for b in grams
            ]
            for a in grams
        ]
    )
    assert np.allclose(w @ w.T, expected, atol=0.06)
    assert expected[0, 1] > 0.1  # the two phrasings share "emphysema" ...
    assert abs(s[0] @ s[1]) < 0.05  # ... which whole-sentence anchors do not see
    assert np.allclose(w[4], 0.0)  # only what every report says: weight 0
    assert np.allclose(np.linalg.norm(w[:4], axis=1), 1.0)


@pytest.mark.parametrize("pooling", ["cls", "sentence_mean"])
def test_training_text_latents_equal_the_inference_path(inputs, tmp_path, pooling):
    """The step encodes each distinct sentence (or report) of a batch once; the latents must be those of
    pipeline.ctclip.text.encode_texts, which embed-ct uses."""
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.text import encode_texts

    model_cfg = get_config("tiny").model_dump(mode="json")
    model_cfg["text"]["pooling"] = pooling
    (tmp_path / "model.json").write_text(json.dumps(model_cfg))
    trainer = Trainer(_cfg(inputs, tmp_path / "run", model=str(tmp_path / "model.json")))
    trainer.model.eval()
    rows = list(range(len(trainer.train)))
    _, ids, mask, which, owner = trainer.batch_tensors(trainer.train, rows, None)
    assert len(ids) < len(which)  # reconstructions share their report: fewer texts encoded than used
    with torch.no_grad():
        got = trainer.text_latents(ids, mask, which, owner, len(rows))
    by_id = {r.volume_id: report_text(r.findings, r.impressions) for r in inputs[0].rows}
    texts = [by_id[trainer.train.ids[r]] for r in rows]
    expected = encode_texts(trainer.model, trainer.tokenizer, texts)
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_config_without_the_quantiser_trains_and_exports(inputs, tmp_path):
    from pipeline.ctclip.config import get_config

    model_cfg = get_config("tiny").model_dump(mode="json")
    model_cfg["visual"]["quantize"] = False
    (tmp_path / "model.json").write_text(json.dumps(model_cfg))
    # progress on: the bar once read the codebook's use from every step's record and crashed without a quantiser
    result = run_pretrain(_cfg(inputs, tmp_path / "run", model=str(tmp_path / "model.json"), epochs=1, progress=True))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["split"] == "train"]
    assert train_lines and all("codes_used" not in x for x in train_lines)
    model = load_ctclip(result.export / "ctclip.pt", cfg=str(result.export / "model_config.json"))  # strict
    assert model.visual_transformer.vq is None
    before = Trainer(_cfg(inputs, tmp_path / "fresh", model=str(tmp_path / "model.json"))).model
    moved = [
        k for k, v in model.state_dict().items() if "to_patch_emb." in k and not torch.equal(v, before.state_dict()[k])
    ]
    assert moved  # the patch embedding learnt: gradients reach it with no quantiser in the way
