"""Manifest rows: good rows pass, bad ones fail with messages naming the line, the field and what was expected."""

import json

import pytest

from schemas.labels import CT_RATE_LABELS, N_LABELS, mimic_ct_labels, radchest_mapping
from schemas.manifest import ManifestError, ManifestRow, parse_ct_rate_name, read_manifest, write_manifest


def good_row(**over):
    row = dict(
        volume_id="valid_53_a_1",
        patient_id="valid_53",
        scan_id="valid_53_a",
        reconstruction_id="valid_53_a_1",
        split="valid",
        ct_path="valid/valid_53/valid_53_a/valid_53_a_1.nii.gz",
        findings="F.",
        impressions="I.",
        labels=[0] * N_LABELS,
    )
    row.update(over)
    return row


def test_label_vocabularies():
    assert N_LABELS == 18
    assert CT_RATE_LABELS[0] == "Medical material" and CT_RATE_LABELS[-1] == "Interlobular septal thickening"
    assert set(mimic_ct_labels()) <= set(CT_RATE_LABELS) and len(mimic_ct_labels()) == 11
    assert set(radchest_mapping()) <= set(CT_RATE_LABELS)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("valid_53_a_1", ("valid", "valid_53", "valid_53_a", "valid_53_a_1")),
        ("train_12345_b_2.nii.gz", ("train", "train_12345", "train_12345_b", "train_12345_b_2")),
    ],
)
def test_parse_ct_rate_name(name, expected):
    assert parse_ct_rate_name(name) == expected


@pytest.mark.parametrize("name", ["valid_53_a", "test_1_a_1", "valid_x_a_1", "valid_53_A_1"])
def test_parse_ct_rate_name_rejects(name):
    with pytest.raises(ValueError, match="not a CT-RATE volume name"):
        parse_ct_rate_name(name)


def test_good_row_round_trips(tmp_path):
    rows = [ManifestRow(**good_row()), ManifestRow(**good_row(volume_id="valid_53_a_2", labels=[None] * 17 + [1]))]
    path = tmp_path / "m.jsonl"
    digest = write_manifest(rows, path)
    assert read_manifest(path) == rows
    assert len(digest) == 64
    assert rows[0].report == "F. I."


@pytest.mark.parametrize(
    "over, field, fragment",
    [
        (dict(labels=[0] * 17), "labels", "expected 18 labels"),
        (dict(labels=[0] * 17 + [2]), "labels", "must be 0, 1 or null"),
        (dict(split="holdout"), "split", "'train', 'valid', 'test' or 'external'"),
        (dict(spacing=(0.7, 0.7, -1.0)), "spacing", "positive millimetre"),
        (dict(ct_path="a.npy"), "(row)", "give 'spacing'"),
        (dict(orientation="LLS"), "orientation", "one of L/R, A/P and S/I"),
        (dict(colour="red"), "colour", "Extra inputs are not permitted"),
    ],
)
def test_bad_row_message_names_line_volume_and_field(tmp_path, over, field, fragment):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good_row(volume_id="valid_1_a_1")) + "\n" + json.dumps(good_row(**over)) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert f"{path}:2" in msg and "valid_53_a_1" in msg and f"field '{field}'" in msg and fragment in msg


def test_duplicate_volume_id_rejected(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text((json.dumps(good_row()) + "\n") * 2)
    with pytest.raises(ManifestError, match=r":2: duplicate volume_id 'valid_53_a_1' \(first on line 1\)"):
        read_manifest(path)


def test_bad_json_names_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good_row()) + "\n{not json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(path)
