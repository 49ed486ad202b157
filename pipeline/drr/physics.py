"""HU -> the value integrated along each ray.

Physics mode: linear attenuation mu = mu_water * (1 + HU/1000), clipped at 0 (air and anything
below it attenuate nothing), with an optional stronger slope above a bone threshold:
HU' = t + (HU - t) * bone_scale for HU > t. The line integral of mu (dimensionless) gives the
transmitted intensity by Beer-Lambert, I = I0 * exp(-integral).

Mean-HU mode (the X2CT-CLIP authors' image): clip(HU, lo, hi) - lo, so that air outside the
volume (zero padding) is the clip minimum; the projector's integral divided by the volume's
extent along the beam, plus lo, is the mean clipped HU along the ray.

Both transforms run in place on a slab of voxels while it is in cache.
"""

from __future__ import annotations

import torch

from schemas.drr import DRRRenderConfig


def hu_to_mu_(hu: torch.Tensor, mu_water: float, bone_threshold_hu: float, bone_scale: float) -> torch.Tensor:
    """In place: HU -> mu (1/mm). Returns ``hu`` (now holding mu)."""
    if bone_scale != 1.0:
        excess = (hu - bone_threshold_hu).clamp_(min=0.0).mul_(bone_scale - 1.0)
        hu.add_(excess)
    return hu.mul_(mu_water / 1000.0).add_(mu_water).clamp_(min=0.0)


def clipped_hu_(hu: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """In place: HU -> clip(HU, lo, hi) - lo (zero for air, so padding outside the volume is air)."""
    return hu.clamp_(lo, hi).sub_(lo)


def voxel_transform(cfg: DRRRenderConfig):
    """The in-place voxel transform of ``cfg.mode`` as a one-argument function."""
    if cfg.mode == "mean-hu":
        lo, hi = cfg.mean_hu_clip
        return lambda t: clipped_hu_(t, lo, hi)
    p = cfg.physics
    return lambda t: hu_to_mu_(t, p.mu_water_per_mm, p.bone_threshold_hu, p.bone_scale)
