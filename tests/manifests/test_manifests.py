"""Manifest builders: joins, problems recorded without stopping, CLI with --config and flag overrides."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.manifests.ct_rate import build_ct_rate
from pipeline.manifests.others import build_generic, build_radchest
from pipeline.manifests.tables import TableError
from schemas.labels import CT_RATE_LABELS
from schemas.manifest import read_manifest
from schemas.stages import CTRateManifestConfig, GenericManifestConfig, RadChestManifestConfig


def write_csv(path, header, rows, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def tiny_nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), str(path))


def label_values(vid):
    """A label pattern that differs per volume, to check the join row by row."""
    return [(hash(vid) >> i) & 1 for i in range(18)]


@pytest.fixture()
def ct_rate_root(tmp_path):
    """CT-RATE layout with deliberate gaps:
    valid_1_a_1, valid_1_a_2, valid_2_a_1: complete; valid_3_a_1: no report; valid_4_a_1: no labels;
    valid_5_a_1: a label of 2; valid_9_a_1: rows but no volume; a duplicate report row; a bad name row.
    """
    root = tmp_path / "dataset"
    vols = ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1", "valid_3_a_1", "valid_4_a_1", "valid_5_a_1"]
    for v in vols:
        p, s = v.rsplit("_", 2)[0], v.rsplit("_", 1)[0]
        tiny_nifti(root / "valid" / p / s / f"{v}.nii.gz")
    tiny_nifti(root / "train" / "train_1" / "train_1_a" / "train_1_a_1.nii.gz")  # other split: ignored
    reports = [(f"{v}.nii.gz", f"Findings of {v}.", f"Impression of {v}.") for v in vols if v != "valid_3_a_1"]
    reports += [("valid_9_a_1.nii.gz", "x", "y"), ("valid_1_a_1.nii.gz", "dup", "dup"), ("scan7.nii.gz", "x", "y")]
    write_csv(
        root / "radiology_text_reports" / "validation_reports.csv",
        ["VolumeName", "Findings_EN", "Impressions_EN"],
        reports,
    )
    labels = [[f"{v}.nii.gz", *label_values(v)] for v in vols if v != "valid_4_a_1"]
    labels[-1][1 + 3] = 2  # valid_5_a_1: Pericardial effusion (label 3)
    labels.append(["valid_9_a_1.nii.gz", *[0] * 18])
    write_csv(root / "multi_abnormality_labels" / "valid_predicted_labels.csv", ["VolumeName", *CT_RATE_LABELS], labels)
    meta = [(f"{v}.nii.gz", 1, -1024, "[0.75, 0.7]", 1.5) for v in vols]
    write_csv(
        root / "metadata" / "validation_metadata.csv",
        ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
        meta,
    )
    return root


def test_ct_rate_join_and_problems(ct_rate_root, tmp_path):
    result = build_ct_rate(CTRateManifestConfig(root=ct_rate_root, split="valid", out=tmp_path / "m.jsonl"))
    ids = [r.volume_id for r in result.rows]
    assert ids == ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    row = result.rows[1]
    assert (row.patient_id, row.scan_id, row.reconstruction_id, row.split) == (
        "valid_1",
        "valid_1_a",
        "valid_1_a_2",
        "valid",
    )
    assert row.findings == "Findings of valid_1_a_2." and row.impressions == "Impression of valid_1_a_2."
    assert row.labels == label_values("valid_1_a_2")
    assert row.spacing == (0.75, 0.7, 1.5) and (row.slope, row.intercept) == (1.0, -1024.0)
    assert result.rows[0].findings == "Findings of valid_1_a_1."  # first of the duplicate rows kept
    lines = [p.line() for p in result.problems]
    expect = [
        ("valid_3_a_1", "volume has no report"),
        ("valid_4_a_1", "volume has no labels"),
        ("valid_5_a_1", "label 'Pericardial effusion' is '2'; expected 0 or 1"),
        ("valid_9_a_1", "no volume file for this row"),
        ("valid_1_a_1", "duplicate VolumeName"),
        ("scan7", "not a CT-RATE valid volume name"),
    ]
    for vid, text in expect:
        assert any(vid in line and text in line for line in lines), (vid, text, lines)
    assert any("validation_reports.csv row 7" in line and "duplicate" in line for line in lines)


def test_ct_rate_missing_column_is_a_clear_error(ct_rate_root, tmp_path):
    write_csv(
        ct_rate_root / "radiology_text_reports" / "validation_reports.csv",
        ["VolumeName", "Findings_EN"],
        [("valid_1_a_1", "x")],
    )
    with pytest.raises(TableError, match=r"validation_reports.csv: missing column\(s\) \['Impressions_EN'\]"):
        build_ct_rate(CTRateManifestConfig(root=ct_rate_root, split="valid", out=tmp_path / "m.jsonl"))


def test_non_utf8_rows_recorded_and_skipped(ct_rate_root, tmp_path):
    path = ct_rate_root / "radiology_text_reports" / "validation_reports.csv"
    rows = [
        ("valid_1_a_1.nii.gz", "Caf\u00e9 finding", "ok"),
        ("valid_1_a_2.nii.gz", "plain", "ok"),
        ("valid_2_a_1.nii.gz", "plain", "ok"),
    ]
    write_csv(path, ["VolumeName", "Findings_EN", "Impressions_EN"], rows, encoding="latin-1")
    result = build_ct_rate(CTRateManifestConfig(root=ct_rate_root, split="valid", out=tmp_path / "m.jsonl"))
    assert [r.volume_id for r in result.rows] == ["valid_1_a_2", "valid_2_a_1"]
    lines = [p.line() for p in result.problems]
    assert any("not UTF-8 (first bad byte on line 2)" in line for line in lines)
    assert any("row 1: valid_1_a_1: text is not UTF-8" in line for line in lines)


def test_cli_config_file_and_flag_override(ct_rate_root, tmp_path):
    out = tmp_path / "from-flag.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"root: {ct_rate_root}\nsplit: valid\nout: {tmp_path / 'from-file.jsonl'}\n")
    res = CliRunner().invoke(app, ["manifest", "ct-rate", "--config", str(config), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "from-file.jsonl").exists()
    assert [r.volume_id for r in read_manifest(out)] == ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    problems = [json.loads(x) for x in (tmp_path / "from-flag.jsonl.problems.jsonl").read_text().splitlines()]
    assert {p["volume_id"] for p in problems} >= {"valid_3_a_1", "valid_4_a_1", "valid_5_a_1", "valid_9_a_1"}


def test_cli_bad_config_value_is_named(ct_rate_root, tmp_path):
    res = CliRunner().invoke(
        app, ["manifest", "ct-rate", "--root", str(ct_rate_root), "--split", "test", "--out", str(tmp_path / "m.jsonl")]
    )
    assert res.exit_code == 2
    assert "invalid CTRateManifestConfig" in res.output and "split" in res.output and "'train' or 'valid'" in res.output


def test_radchest_labels_mapped(tmp_path):
    vols = tmp_path / "npz"
    vols.mkdir()
    for v in ("trn00001", "trn00002"):
        np.savez_compressed(vols / f"{v}.npz", ct=np.zeros((2, 2, 2), np.int16))
    write_csv(
        tmp_path / "labels.csv",
        ["VolumeName", "nodule*left_lower_lobe", "nodule*right_upper_lobe", "emphysema*lung", "cardiomegaly*heart"],
        [("trn00001", 0, 1, 0, 0), ("trn00002", 0, 0, 0, 1), ("trn00003", 1, 1, 1, 1)],
    )
    write_csv(
        tmp_path / "spacing.csv",
        ["VolumeName", "XSpacing", "YSpacing", "ZSpacing"],
        [("trn00001", 1.5, 0.7, 0.7), ("trn00002", 1, 0.6, 0.6)],
    )
    res = build_radchest(
        RadChestManifestConfig(
            volumes=vols,
            labels_csv=tmp_path / "labels.csv",
            spacing_csv=tmp_path / "spacing.csv",
            out=tmp_path / "m.jsonl",
        )
    )
    by_id = {r.volume_id: r for r in res.rows}
    idx = {n: i for i, n in enumerate(CT_RATE_LABELS)}
    first = by_id["trn00001"].labels
    assert first[idx["Lung nodule"]] == 1 and first[idx["Emphysema"]] == 0 and first[idx["Cardiomegaly"]] == 0
    assert first[idx["Pleural effusion"]] is None  # no column maps to it in this table
    assert by_id["trn00002"].labels[idx["Cardiomegaly"]] == 1 and by_id["trn00002"].spacing == (1.0, 0.6, 0.6)
    assert any("trn00003" in p.line() and "no volume file" in p.line() for p in res.problems)


def test_generic_missing_label_columns_are_null(tmp_path):
    tiny_nifti(tmp_path / "vols" / "caseA.nii.gz")
    write_csv(
        tmp_path / "t.csv",
        ["VolumeName", "Findings_EN", "Impressions_EN", "Emphysema", "CXRPath"],
        [("caseA", "f", "i", 1, "/x/a.png")],
    )
    res = build_generic(
        GenericManifestConfig(volumes=tmp_path / "vols", table=tmp_path / "t.csv", out=tmp_path / "m.jsonl")
    )
    (row,) = res.rows
    assert row.labels[CT_RATE_LABELS.index("Emphysema")] == 1 and row.labels.count(None) == 17
    assert row.cxr_path == "/x/a.png" and row.patient_id == "caseA" and row.split == "external"
