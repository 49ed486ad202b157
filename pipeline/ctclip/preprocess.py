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
docs/ctclip-compatibility.md) and the LPS array is reordered to it first.

Spacing: the official loader reads it from the CT-RATE metadata CSV (float64
decimals such as 0.6), not from the NIfTI header (float32: 0.6000000238). Where
``size * spacing / target`` is a whole number the truncation in step 2 then lands
on either side: 500 slices of 0.6 mm give 199 slices there and 200 from the
header. So the manifest's CSV spacing is used when the row has one and it
matches the header's (to 0.1%; the same axes in the same order); otherwise the
header's spacing, permuted with the axes.

Precision: we interpolate in float32, the official loader in float64. Measured
on sharp -1000/1000 HU edges (``bench/bench_preprocess_precision.py``): at most
about 4e-5 after the division by 1000 (0.04 HU), 3e-6 on average.
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
    """HU array (x, y, z) with voxel spacing (mm, same order) -> float32 tensor (C, z, x, y): one channel (the
    official steps), or one per ``channel_windows`` (windowed after the resampling, as a reader would)."""
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
    if cfg.channel_windows:  # one channel per window, each padded with air as that window sees it
        zxy = crop_or_pad(x, cfg.shape, cfg.hu_min).permute(2, 0, 1)
        return torch.stack(
            [(zxy.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2) for lo, hi in cfg.channel_windows]
        ).contiguous()
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


def csv_spacing_or_header(header, csv, rel_tol: float = 1e-3) -> tuple[float, ...]:
    """The CSV's spacing where it is the header's up to float32 rounding (axis by axis), else the header's.

    A CSV that disagrees more describes other axes (a file stored in another order) or another
    volume; the header then decides, as it does for every other stage."""
    header = tuple(float(h) for h in header)
    if csv is None or len(csv) != 3:
        return header
    if all(abs(float(c) - h) <= rel_tol * h for c, h in zip(csv, header)):
        return tuple(float(c) for c in csv)
    return header


def preprocess_ct(volume, cfg: CTCLIPConfig, csv_spacing=None) -> torch.Tensor:
    """A :class:`pipeline.ct_io.CTVolume` (HU, LPS voxel order) -> tensor (C, D, H, W) for ``encode_ct``.

    ``csv_spacing``: the manifest row's spacing (mm along the volume's LPS axes), used instead of the
    header's when they agree (see the module docstring). Add the batch axis (``[None]``) or stack
    several before calling the model.
    """
    try:
        spacing = csv_spacing_or_header(volume.spacing, csv_spacing)
        hu, spacing = reorient(volume.hu, spacing, CANONICAL_ORIENTATION, cfg.preprocess.orientation)
        return preprocess_array(hu, spacing, cfg.preprocess)
    except ValueError as e:
        raise ValueError(f"{volume.source}: {e}") from e
