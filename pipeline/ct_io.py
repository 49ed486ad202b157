"""Read a CT volume (NIfTI or NumPy) into float32 Hounsfield units in one orientation.

Every stage reads CTs through :func:`load_ct`, so there is one HU policy and one
orientation in the project:

* The array returned is indexed ``hu[i, j, k]`` with axis 0 running towards the
  patient's Left, axis 1 Posterior, axis 2 Superior (``CANONICAL_ORIENTATION`` =
  LPS, nibabel axcodes). Stored axes that are permuted or flipped are brought to
  it; the affine is updated so that it still maps voxel indices to the same
  world (nibabel RAS+, mm) position.
* Header scaling is applied once, by the policy in :class:`schemas.ct.CTLoadConfig`.
* Scanner padding outside the field of view (-2048, -3024, ...) becomes air (-1000).
* Air must read about -1000 HU, or the volume is refused: this catches slope and
  intercept applied twice (air near -2000) or never (air near 0).
* NaN or infinite voxels are refused: every comparison with NaN is false, so they
  would pass the air check and turn into blank images or NaN latents downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from schemas.ct import CANONICAL_ORIENTATION, CTLoadConfig
from schemas.errors import PipelineError

AIR_HU = -1000.0


class CTLoadError(PipelineError, RuntimeError):
    """A volume could not be turned into HU; the message names the file and the fix."""


class AirCheckError(CTLoadError):
    """Air does not read about -1000 HU: the HU scaling is probably wrong."""


@dataclass(frozen=True)
class CTVolume:
    hu: np.ndarray  # float32 (X, Y, Z) in CANONICAL_ORIENTATION
    affine: np.ndarray  # float64 (4, 4): voxel index -> world RAS+ mm
    source: str  # the file it came from
    hu_scaling: str  # which scaling produced the HU: 'header', 'csv' or 'none'
    air_hu: float | None  # the measured air level before padding removal (None if not checked)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the three array axes."""
        sx, sy, sz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(sx), float(sy), float(sz)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def load_ct(
    path: str | Path,
    cfg: CTLoadConfig = CTLoadConfig(),
    *,
    spacing: tuple[float, float, float] | None = None,
    orientation: str | None = None,
    slope: float | None = None,
    intercept: float | None = None,
) -> CTVolume:
    """Load ``path`` as float32 HU in LPS voxel order.

    ``spacing`` and ``orientation`` (axcodes of the stored axes, default 'LPS') are
    used only for NumPy files, which have no header. ``slope``/``intercept`` are the
    manifest's CSV values, used as the HU policy says.
    """
    path = Path(path)
    if not path.is_file():
        raise CTLoadError(f"{path}: file not found; check ct_path in the manifest")
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        raw, affine, header_scaled = _read_nifti(path, cfg, slope, intercept)
    elif name.endswith((".npy", ".npz")):
        raw, affine, header_scaled = _read_numpy(path, cfg, spacing, orientation, slope, intercept)
    else:
        raise CTLoadError(f"{path}: unknown volume format; expected .nii, .nii.gz, .npy or .npz")
    hu, affine = _to_canonical(raw, affine, path)
    check_finite(hu, path)
    air = None
    if cfg.air_check:
        air = measure_air_hu(hu, cfg.padding_below_hu)
        if air is None or abs(air - AIR_HU) > cfg.air_tolerance_hu:
            raise AirCheckError(
                f"{path}: air reads {air if air is None else round(air)} HU, expected about -1000 "
                f"(HU scaling '{header_scaled}'). If the CSV slope/intercept were applied on top of header "
                "scaling, use --hu-policy header; if the file stores raw values without header scaling, "
                "use --hu-policy csv."
            )
    np.copyto(hu, AIR_HU, where=hu < cfg.padding_below_hu)
    return CTVolume(hu=hu, affine=affine, source=str(path), hu_scaling=header_scaled, air_hu=air)


def check_finite(hu: np.ndarray, path: Path | str) -> None:
    """Refuse a volume holding NaN or infinite voxels (float NIfTI/NumPy files can).

    A float64 sum is NaN or infinite exactly when some voxel is (float32 values cannot
    overflow it), so the common, clean case costs one pass and no mask.
    """
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN: an answer here, not a warning
        if np.isfinite(np.sum(hu, dtype=np.float64)):
            return
    n = int(hu.size - np.count_nonzero(np.isfinite(hu)))
    raise CTLoadError(
        f"{path}: non-finite voxels: {n} (NaN or infinite); re-export the volume or drop it from the manifest"
    )


def _check_size(path: Path, shape: tuple[int, ...], cfg: CTLoadConfig) -> None:
    if len(shape) != 3:
        raise CTLoadError(f"{path}: expected a 3-D volume, got shape {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > cfg.max_voxels:
        raise CTLoadError(
            f"{path}: {shape} is {n:,} voxels, above the limit of {cfg.max_voxels:,} "
            f"({n * 4 / 2**30:.1f} GiB as float32); raise max_voxels in the config if the machine has the memory"
        )


def _read_nifti(path: Path, cfg: CTLoadConfig, slope, intercept) -> tuple[np.ndarray, np.ndarray, str]:
    img: Any  # Nifti1Image or Nifti2Image; nibabel types load() as the base class
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt headers
        raise CTLoadError(f"{path}: unreadable NIfTI header ({e}); re-export or remove the file") from e
    _check_size(path, img.shape, cfg)
    # nibabel reports "no scaling" (absent, NaN or 0 slope) as slope 1, intercept 0.
    header_has_scaling = not (img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0)
    use_csv = cfg.hu_policy == "csv" or (
        cfg.hu_policy == "auto" and not header_has_scaling and (slope is not None or intercept is not None)
    )
    try:
        if use_csv:
            if slope is None and intercept is None and cfg.hu_policy == "csv":
                raise CTLoadError(f"{path}: hu_policy 'csv' but the manifest row has no slope/intercept")
            data = np.asarray(img.dataobj.get_unscaled(), dtype=np.float32)
            data = data * np.float32(1.0 if slope is None else slope) + np.float32(
                0.0 if intercept is None else intercept
            )
            how = "csv"
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32))
            how = "header" if header_has_scaling else "none"
    except CTLoadError:
        raise
    except Exception as e:  # truncated gzip, short file, ...
        raise CTLoadError(
            f"{path}: voxel data unreadable ({type(e).__name__}: {e}); the file is probably truncated"
        ) from e
    return data, np.asarray(img.affine, dtype=np.float64), how


def _read_numpy(path: Path, cfg, spacing, orientation, slope, intercept) -> tuple[np.ndarray, np.ndarray, str]:
    if spacing is None:
        raise CTLoadError(f"{path}: a NumPy volume has no header; give its spacing (mm per axis) in the manifest")
    try:
        if path.name.endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "ct" if "ct" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise CTLoadError(f"{path}: .npz holds {keys}; expected one array or one named 'ct'")
                arr = z[key]
    except CTLoadError:
        raise
    except Exception as e:
        raise CTLoadError(f"{path}: unreadable NumPy file ({type(e).__name__}: {e})") from e
    _check_size(path, arr.shape, cfg)
    data = np.asarray(arr, dtype=np.float32)
    how = "none"
    if cfg.hu_policy != "header" and (slope is not None or intercept is not None):
        data = data * np.float32(1.0 if slope is None else slope) + np.float32(0.0 if intercept is None else intercept)
        how = "csv"
    return data, affine_from_spacing(spacing, orientation or CANONICAL_ORIENTATION), how


_DIRECTION = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def affine_from_spacing(spacing, orientation: str = CANONICAL_ORIENTATION) -> np.ndarray:
    """Voxel -> RAS+ affine for an array whose axes point as ``orientation`` says, origin at voxel 0."""
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for axis, (code, step) in enumerate(zip(orientation.upper(), spacing)):
        world_axis, sign = _DIRECTION[code]
        aff[world_axis, axis] = sign * float(step)
    return aff


def _to_canonical(data: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path}: the affine is singular or not finite; the header's geometry is broken")
    current = io_orientation(affine)
    target = axcodes2ornt(CANONICAL_ORIENTATION)
    transform = ornt_transform(current, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return np.ascontiguousarray(data, dtype=np.float32), affine
    new = np.ascontiguousarray(apply_orientation(data, transform), dtype=np.float32)
    return new, affine @ inv_ornt_aff(transform, data.shape)


def measure_air_hu(hu: np.ndarray, padding_below_hu: float, sample_step: int = 3) -> float | None:
    """The air level of a chest CT: the 1st percentile of voxels that are not constant padding.

    Scanner padding is one constant value at the volume's minimum; it is left out
    (the minimum, when it is below ``padding_below_hu`` or holds over 0.1% of the
    voxels). Air outside the body
    and in the airways then forms the low end of the distribution, at about -1000 HU
    in a correctly scaled volume. A strided sample keeps this cheap on 512^3 volumes.
    """
    sample = hu[::sample_step, ::sample_step, ::sample_step].ravel()
    vmin = sample.min()
    at_min = sample == vmin
    # A constant mass at the minimum is padding (or air clamped to one value): either
    # way it says nothing about the scaling, while noisy air around it does.
    if vmin < padding_below_hu or at_min.mean() > 0.001:
        sample = sample[~at_min]
    if sample.size == 0:
        return None
    return float(np.percentile(sample, 1.0))
