"""manifest builders and the manifest file given bad input: problem rows, one-line errors, nothing overwritten."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from schemas.labels import CT_RATE_LABELS
from tests.faults.conftest import cli


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def ct_rate(tmp_path):
    """Three volumes; the metadata gives valid_2 a zero ZSpacing and valid_3 a negative XYSpacing."""
    root = tmp_path / "dataset"
    vols = ["valid_1_a_1", "valid_2_a_1", "valid_3_a_1"]
    for v in vols:
        p = root / "valid" / v.rsplit("_", 2)[0] / v.rsplit("_", 1)[0] / f"{v}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), str(p))
    _csv(
        root / "reports/validation_reports.csv",
        ["VolumeName", "Findings_EN", "Impressions_EN"],
        [(f"{v}.nii.gz", "f", "i") for v in vols],
    )
    _csv(root / "labels/valid_labels.csv", ["VolumeName", *CT_RATE_LABELS], [(f"{v}.nii.gz", *[0] * 18) for v in vols])
    meta = [
        ("valid_1_a_1.nii.gz", 1, -1024, "[0.75, 0.75]", 1.5),
        ("valid_2_a_1.nii.gz", 1, -1024, "[0.75, 0.75]", 0),
        ("valid_3_a_1.nii.gz", 1, "nan", "[-0.7, 0.7]", 1.0),
    ]
    _csv(
        root / "metadata/validation_metadata.csv",
        ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
        meta,
    )
    return root


def test_bad_metadata_values_are_problems_not_a_traceback(ct_rate, tmp_path):
    out = tmp_path / "m.jsonl"
    res = cli("manifest", "ct-rate", "--root", ct_rate, "--split", "valid", "--out", out)
    assert res.exit_code == 0, res.stderr
    rows = {json.loads(line)["volume_id"]: json.loads(line) for line in out.read_text().splitlines()}
    assert rows["valid_1_a_1"]["spacing"] == [0.75, 0.75, 1.5]
    assert "spacing" not in rows["valid_2_a_1"] and "spacing" not in rows["valid_3_a_1"]  # the header's is used
    assert "intercept" not in rows["valid_3_a_1"]
    problems = (tmp_path / "m.jsonl.problems.jsonl").read_text()
    assert "valid_2_a_1" in problems and "valid_3_a_1" in problems and "not finite" in problems


def test_unstorable_volume_name_is_a_problem_row(tmp_path):
    vols = tmp_path / "vols"
    vols.mkdir()
    for name in ("good", "bad\u0007name"):
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), str(vols / f"{name}.nii.gz"))
    _csv(
        tmp_path / "t.csv",
        ["VolumeName", "Findings_EN", "Impressions_EN"],
        [("good", "f", "i"), ("bad\u0007name", "f", "i")],
    )
    out = tmp_path / "m.jsonl"
    res = cli("manifest", "generic", "--volumes", vols, "--table", tmp_path / "t.csv", "--out", out)
    assert res.exit_code == 0, res.stderr
    assert [json.loads(line)["volume_id"] for line in out.read_text().splitlines()] == ["good"]
    problems = [json.loads(line) for line in (tmp_path / "m.jsonl.problems.jsonl").read_text().splitlines()]
    assert [p["volume_id"] for p in problems] == ["bad\\x07name"] and "volume_id" in problems[0]["problem"]


@pytest.mark.parametrize("kind", ["ct", "csv", "folder"])
def test_out_that_is_not_a_manifest_is_never_overwritten(ct_rate, tmp_path, kind):
    out = {"ct": tmp_path / "ct.nii.gz", "csv": tmp_path / "table.csv", "folder": tmp_path / "dir"}[kind]
    if kind == "folder":
        out.mkdir()
    else:
        out.write_bytes(b"\x1f\x8b precious bytes")
    res = cli("manifest", "ct-rate", "--root", ct_rate, "--split", "valid", "--out", out)
    assert res.exit_code == 2 and str(out) in res.error_line and "not" in res.error_line
    assert out.is_dir() if kind == "folder" else out.read_bytes() == b"\x1f\x8b precious bytes"
    # A manifest is replaced by a new build, as before.
    good = tmp_path / "m.jsonl"
    assert cli("manifest", "ct-rate", "--root", ct_rate, "--split", "valid", "--out", good).exit_code == 0
    assert cli("manifest", "ct-rate", "--root", ct_rate, "--split", "valid", "--out", good).exit_code == 0


def test_latin1_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("root: /donn\u00e9es\n".encode("latin-1"))
    res = cli("manifest", "ct-rate", "--config", cfg, "--split", "valid", "--out", tmp_path / "m.jsonl")
    assert res.exit_code == 2 and "c.yaml" in res.error_line


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_synth_out_that_is_not_a_folder_is_left_alone(tmp_path, kind):
    import os

    out = tmp_path / "target"
    if kind == "file":
        out.write_text("precious")
    else:
        os.mkfifo(out)
    for extra in ((), ("--overwrite",)):
        res = cli("synth", "--out", out, "--n", "2", "--size", "32", "--no-progress", *extra)
        assert res.exit_code == 2 and str(out) in res.error_line and "not a folder" in res.error_line
    assert kind == "fifo" or out.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_failure_reasons_are_stored_as_one_printable_line(tmp_path):
    """Whatever an exception message holds (NUL, newlines, a lone surrogate), the stores hold it."""
    import h5py

    from schemas.manifest import storable_line

    line = storable_line("bad\x00 file\nsecond line\t\ud800 end")
    assert line == "bad\\x00 file second line \\ud800 end"
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("r", data=[line], dtype=h5py.string_dtype("utf-8"))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["r"].asstr()[0] == line
