"""The WordPiece vocabulary builder: learnt from a manifest's reports, accepted by the CT-CLIP tokenizer."""

from __future__ import annotations

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.ctclip.text import load_tokenizer, report_text
from schemas.labels import CT_RATE_LABELS
from schemas.manifest import ManifestRow, write_manifest

REPORTS = [
    ("Heart size is increased (cardiomegaly). There is no pleural effusion.", "Cardiomegaly."),
    ("Heart size is within normal limits. There is a small right pleural effusion.", "Small pleural effusion."),
    ("Both lungs are clear. There is no pleural effusion.", "Normal chest CT."),
]


def _manifest(tmp_path):
    rows = [
        ManifestRow(
            volume_id=f"train_{i}_a_1",
            patient_id=f"train_{i}",
            scan_id=f"train_{i}_a",
            reconstruction_id=f"train_{i}_a_1",
            split="train",
            ct_path=f"train_{i}_a_1.nii.gz",
            findings=f,
            impressions=imp,
            labels=[0] * len(CT_RATE_LABELS),
        )
        for i, (f, imp) in enumerate(REPORTS * 4)
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(rows, path)
    return path


def test_vocab_command_writes_a_vocabulary_the_tokenizer_accepts(tmp_path):
    m = _manifest(tmp_path)
    res = CliRunner().invoke(app, ["ctclip", "vocab", "--manifest", str(m), "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    tokens = (tmp_path / "v" / "vocab.txt").read_text().splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) == len(set(tokens))
    tok = load_tokenizer(tmp_path / "v", vocab_size=len(tokens))
    # Every report round-trips without [UNK]: the tokens put back together give the cleaned, lower-case text.
    for f, imp in REPORTS:
        text = report_text(f, imp)
        pieces = tok.tokenize(text)
        assert "[UNK]" not in pieces
        assert tok.convert_tokens_to_string(pieces).replace(" ", "") == text.lower().replace(" ", "")
    # Frequent report words are whole tokens; an unseen word still tokenizes, into pieces of the alphabet.
    assert {"effusion", "pleural", "heart"} <= set(tokens)
    assert "[UNK]" not in tok.tokenize("There is no hiatal hernia.")
    assert tokens[5:] == sorted(tokens[5:])


def test_a_manifest_without_reports_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    row = ManifestRow(
        volume_id="train_1_a_1",
        patient_id="train_1",
        scan_id="train_1_a",
        reconstruction_id="train_1_a_1",
        split="train",
        ct_path="x.nii.gz",
        labels=[0] * len(CT_RATE_LABELS),
    )
    write_manifest([row], path)
    res = CliRunner().invoke(app, ["ctclip", "vocab", "--manifest", str(path), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2
    assert "no report text" in res.output
