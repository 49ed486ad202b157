"""Fixtures of the simulate-drr tests (helpers live in tests/helpers/phantoms.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.phantoms import chest_like, manifest_row, save_nifti


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    """Five volumes: three good ones, one truncated file, one whose air reads 0 HU."""
    rows = []
    spacing = (2.0, 2.5, 3.0)
    for n in range(3):
        save_nifti(tmp_path / f"ct/valid_{n}_a_1.nii.gz", chest_like(seed=n), spacing, axcodes=("LPS", "RAS", "SRA")[n])
        rows.append(manifest_row(f"valid_{n}_a_1", f"ct/valid_{n}_a_1.nii.gz", positives=(n, 12)))
    bad = tmp_path / "ct/valid_3_a_1.nii.gz"
    bad.write_bytes((tmp_path / "ct/valid_0_a_1.nii.gz").read_bytes()[:300])
    rows.append(manifest_row("valid_3_a_1", "ct/valid_3_a_1.nii.gz"))
    save_nifti(tmp_path / "ct/valid_4_a_1.nii.gz", chest_like(seed=4) + 1000.0, spacing)
    rows.append(manifest_row("valid_4_a_1", "ct/valid_4_a_1.nii.gz"))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
