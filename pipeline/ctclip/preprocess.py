"""A CT volume -> the tensor CT-CLIP expects, as the official inference loader makes it.

The official ``scripts/data_inference_nii.py`` (``nii_img_to_tensor``) does, on
the array in its on-disk axis order (x, y, z):

1. clip HU to [-1000, 1000] (the inference loader clips *before* resampling;
   the training loader ``data.py`` after; we follow the inference loader);
2. resample trilinearly (``align_corners=False``) to 0.75 x 0.75 x 1.5 mm, the
   new size of each axis being ``int(size * spacing / target_spacing)``;
3. divide by 1000;
4. centre crop or pad (value -1) to 480 x 480 x 240: crop start
   ``(size - target) // 2``, pad before ``(target - size) // 2``;
5. reorder to (z, x, y) and add a channel: ``(1, D=240, H=480, W=480)``.

Orientation: the official loader never reorients, so CT-CLIP only knows the
on-disk axes of CT-RATE files. ``load_ct`` returns every volume in LPS voxel
order; ``cfg.preprocess.orientation`` names the CT-RATE on-disk order (LPS by
default, as a public listing of CT-RATE headers shows, so nothing moves; see
docs/ctclip-compatibility.md) and the LPS array is reordered to it first. Spacing comes from the volume's affine, permuted with the axes
(the official loader reads the same values from the CT-RATE metadata CSV).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from schemas.ct import CANONICAL_ORIENTATION
from schemas.ctclip import CTCLIPConfig, CTCLIPPreprocessConfig


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    """The official rule: each axis keeps ``int(size * spacing / target)`` voxels (truncated)."""
    return tuple(int(n * (s / t)) for n, s, t in zip(shape, spacing, target_spacing))


def crop_or_pad(x: torch.Tensor, target, value: float) -> torch.Tensor:
    """Centre crop each axis that is too long, then centre pad each that is too short (extra voxel after)."""
    slices = []
    for n, t in zip(x.shape, target):
        start = max((n - t) // 2, 0)
        slices.append(slice(start, min(start + t, n)))
    x = x[tuple(slices)]
    pad = []
    for n, t in reversed(list(zip(x.shape, target))):  # F.pad lists the last axis first
        before = (t - n) // 2
        pad += [before, t - n - before]
    return F.pad(x, pad, value=value)


def preprocess_array(hu: np.ndarray, spacing, cfg: CTCLIPPreprocessConfig) -> torch.Tensor:
    """HU array (x, y, z) with voxel spacing (mm, same order) -> float32 tensor (1, z, x, y)."""
    if hu.ndim != 3:
        raise ValueError(f"expected a 3-D HU array (x, y, z), got shape {hu.shape}")
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"expected three positive voxel spacings (mm), got {spacing}")
    # float32 arithmetic: the official loader interpolates in float64; the two agree to ~1e-7 HU/1000.
    x = torch.from_numpy(np.clip(np.asarray(hu, dtype=np.float32), cfg.hu_min, cfg.hu_max))
    size = resampled_shape(x.shape, spacing, cfg.spacing_mm)
    if min(size) < 1:
        raise ValueError(f"volume of shape {hu.shape} at spacing {spacing} mm resamples to nothing ({size})")
    if size != tuple(x.shape):
        zxy = x.permute(2, 0, 1)[None, None]  # interpolate works on (N, C, D, H, W); the order does not matter
        zxy = F.interpolate(zxy, size=(size[2], size[0], size[1]), mode="trilinear", align_corners=False)
        x = zxy[0, 0].permute(1, 2, 0)
    x = x / cfg.hu_scale
    x = crop_or_pad(x, cfg.shape, cfg.pad_value)
    return x.permute(2, 0, 1).unsqueeze(0).contiguous()


def reorient(hu: np.ndarray, spacing, source: str, target: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorder/flip array axes from axcodes ``source`` to ``target``; spacing follows its axis."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    if source.upper() == target.upper():
        return hu, tuple(spacing)
    transform = ornt_transform(axcodes2ornt(source.upper()), axcodes2ornt(target.upper()))
    new_spacing = [0.0] * 3
    for axis, (new_axis, _) in enumerate(transform):
        new_spacing[int(new_axis)] = spacing[axis]
    return np.ascontiguousarray(apply_orientation(hu, transform)), tuple(new_spacing)


def preprocess_ct(volume, cfg: CTCLIPConfig) -> torch.Tensor:
    """A :class:`pipeline.ct_io.CTVolume` (HU, LPS voxel order) -> tensor (1, D, H, W) for ``encode_ct``.

    Add the batch axis (``[None]``) or stack several before calling the model.
    """
    try:
        hu, spacing = reorient(volume.hu, volume.spacing, CANONICAL_ORIENTATION, cfg.preprocess.orientation)
        return preprocess_array(hu, spacing, cfg.preprocess)
    except ValueError as e:
        raise ValueError(f"{volume.source}: {e}") from e
