"""From painted tissue to stored CT numbers: reconstruction kernel, slice thickness, noise, field of view, int16.

Two reconstructions of one scan differ as they do in CT-RATE: a sharp (lung)
kernel with thin slices and more noise, and a soft (mediastinal) kernel with
thicker slices, more blur and less noise. Values are clipped to the scanner's
range [-1024, 3071] HU; outside the circular reconstruction field of view the
scanner writes padding, -2048 HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from pipeline.synth.canvas import Canvas

PADDING_HU = -2048
HU_MIN, HU_MAX = -1024, 3071
STORAGE_OFFSET = 1024  # 'offset' files store HU + 1024 with scl_inter = -1024
METAL_HU = 30000.0  # effective density of metal before clipping at 3071: a wire filling 10% of a voxel still saturates


@dataclass(frozen=True)
class Kernel:
    name: str
    psf_mm: float  # in-plane blur (Gaussian sigma, mm)
    noise_hu: tuple[float, float]  # range of the noise standard deviation in water
    noise_corr_vox: float  # correlation length of the noise (Gaussian sigma, voxels)


KERNELS = {
    "lung": Kernel("lung", 0.45, (24.0, 34.0), 0.55),
    "soft": Kernel("soft", 1.0, (9.0, 14.0), 0.9),
}


def scanner_image(c: Canvas, kernel: Kernel, rng: np.random.Generator, fov_center: tuple[float, float]) -> np.ndarray:
    """HU as the scanner writes them: blurred, metal added, noisy, clipped, padded outside the field of view."""
    g = c.grid
    sx, sy, sz = g.spacing
    sigma = (max(kernel.psf_mm / sx, 0.45), max(kernel.psf_mm / sy, 0.45), 0.42)  # slice profile ~ one slice
    hu = gaussian_filter(c.hu, sigma, mode="nearest")
    if c.metal is not None:
        # metal blooms: it spreads into its neighbours but keeps its own voxels saturated
        m = np.maximum(c.metal, gaussian_filter(c.metal, (0.7, 0.7, 0.5), mode="constant"))
        hu += m * (METAL_HU - hu)
    noise = rng.standard_normal(g.shape, dtype=np.float32)
    noise = gaussian_filter(noise, (kernel.noise_corr_vox, kernel.noise_corr_vox, 0.0), mode="wrap")
    noise *= np.float32(rng.uniform(*kernel.noise_hu) / max(float(noise.std()), 1e-6))
    hu += noise
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    X, Y, _ = g.coords()
    radius = g.shape[0] / 2.0 * sx
    outside = ((X - fov_center[0]) ** 2 + (Y - fov_center[1]) ** 2) > radius * radius
    hu = np.rint(hu)
    hu[np.broadcast_to(outside, hu.shape)] = PADDING_HU
    return hu


def stored_values(hu: np.ndarray, storage: str) -> np.ndarray:
    """int16 values as written: 'offset' -> HU + 1024 (header scl_inter -1024); 'direct' -> HU (no scaling)."""
    if storage == "offset":
        return (hu + STORAGE_OFFSET).astype(np.int16)
    if storage == "direct":
        return hu.astype(np.int16)
    raise ValueError(f"unknown storage {storage!r}; expected 'offset' or 'direct'")
