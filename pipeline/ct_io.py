"""Read a CT volume (NIfTI or NumPy) into float32 Hounsfield units in one orientation.

Every stage reads CTs through :func:`load_ct`, so there is one HU policy and one
orientation in the project:

* The array returned is indexed ``hu[i, j, k]`` with axis 0 running towards the
  patient's Left, axis 1 Posterior, axis 2 Superior (``CANONICAL_ORIENTATION`` =
  LPS, nibabel axcodes). Stored axes that are permuted or flipped are brought to
  it as a *view* of the stored array (permuted or negative strides, no copy); the
  affine is updated so that it still maps voxel indices to the same world
  (nibabel RAS+, mm) position. The memory stays in the file's order (Fortran
  order for NIfTI): the projector follows the strides, CT-CLIP preprocessing
  copies anyway.
* Header scaling is applied once, by the policy in :class:`schemas.ct.CTLoadConfig`.
* Scanner padding outside the field of view (-2048, -3024, ...) becomes air (-1000).
* Air must read about -1000 HU, or the volume is refused: this catches slope and
  intercept applied twice (air near -2000) or never (air near 0).
* NaN or infinite voxels are refused: every comparison with NaN is false, so they
  would pass the air check and turn into blank images or NaN latents downstream.

Speed: the floor is the gzip inflate. A ``.nii.gz`` is inflated in one call into a buffer
of the exact size (ISA-L or zlib-ng where installed, ``pipeline.inflate``); the voxels are a
view of it. Scaling, padding and the finite check then run together, block by block in
cache, writing the float32 result once; the air check reads a 1/27 strided sample.

The policies, thresholds and defaults are described for users in docs/ct-input.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from nibabel.volumeutils import int_scinter_ftype

from pipeline.inflate import gunzip_pieces
from schemas.ct import CANONICAL_ORIENTATION, CTLoadConfig
from schemas.errors import PipelineError

AIR_HU = -1000.0


class CTLoadError(PipelineError, RuntimeError):
    """A volume could not be turned into HU; the message names the file and the fix."""


class AirCheckError(CTLoadError):
    """Air does not read about -1000 HU: the HU scaling is probably wrong."""


@dataclass(frozen=True)
class CTVolume:
    hu: np.ndarray  # float32 (X, Y, Z) in CANONICAL_ORIENTATION: a view, possibly with negative strides
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
        raw, scale, affine, how = _read_nifti(path, cfg, slope, intercept)
    elif name.endswith((".npy", ".npz")):
        raw, scale, affine, how = _read_numpy(path, cfg, spacing, orientation, slope, intercept)
    else:
        raise CTLoadError(f"{path}: unknown volume format; expected .nii, .nii.gz, .npy or .npz")
    transform = _canonical_transform(affine, path)
    try:
        hu, non_finite, sample = _scale_and_pad(
            raw, scale, cfg.padding_below_hu, _air_sample_origin(raw.shape, transform)
        )
    except Exception as e:  # a truncated gzip stream or a short .nii (memory-mapped) fails here
        raise CTLoadError(
            f"{path}: voxel data unreadable ({type(e).__name__}: {e}); the file is probably truncated"
        ) from e
    if non_finite:
        raise CTLoadError(
            f"{path}: non-finite voxels: {non_finite} (NaN or infinite); re-export the volume or drop it from the manifest"
        )
    # The air level of the scaled values before padding removal, on a 1/27 strided sample.
    air = air_level(sample, cfg.padding_below_hu) if cfg.air_check else None
    if cfg.air_check and (air is None or abs(air - AIR_HU) > cfg.air_tolerance_hu):
        raise AirCheckError(
            f"{path}: air reads {air if air is None else round(air)} HU, expected about -1000 "
            f"(HU scaling '{how}'). If the CSV slope/intercept were applied on top of header "
            "scaling, use --hu-policy header; if the file stores raw values without header scaling, "
            "use --hu-policy csv."
        )
    # A view, not a copy: flipped axes carry negative strides, permuted ones permuted strides.
    stored_shape = hu.shape
    hu = apply_orientation(hu, transform)
    return CTVolume(
        hu=hu, affine=affine @ inv_ornt_aff(transform, stored_shape), source=str(path), hu_scaling=how, air_hu=air
    )


# Voxels converted per block: the int16 input, the float32 output and the temporaries stay in
# the core's cache, so scaling, padding and the finite check cost one pass over memory.
_BLOCK = 1 << 16
AIR_SAMPLE_STEP = 3


def _air_sample_origin(shape, transform: np.ndarray) -> tuple[int, ...]:
    """Where, along each stored axis, the strided air sample starts: ``hu[::3, ::3, ::3]`` of the
    LPS array starts at the last stored voxel of a flipped axis. Every third voxel from there
    is the same set of voxels (and the air level depends only on the set)."""
    return tuple((n - 1) % AIR_SAMPLE_STEP if flip < 0 else 0 for n, (_axis, flip) in zip(shape, np.asarray(transform)))


def _sample_positions(shape, order: str, origin) -> np.ndarray:
    """Flat (memory-order) indices of the voxels ``stored[o0::3, o1::3, o2::3]``, ascending."""
    axes = [np.arange(o, n, AIR_SAMPLE_STEP, dtype=np.int64) for o, n in zip(origin, shape)]
    if order == "F":  # index = x + nx * (y + ny * z): z outermost gives ascending order
        z, y, x = axes[2][:, None, None], axes[1][None, :, None], axes[0][None, None, :]
        return ((z * shape[1] + y) * shape[0] + x).ravel()
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    return ((x * shape[1] + y) * shape[2] + z).ravel()


def _scale_and_pad(
    raw: np.ndarray | StoredVoxels, scale: _Scaling, padding_below_hu: float, sample_origin
) -> tuple[np.ndarray, int, np.ndarray]:
    """float32 HU in the stored voxel order (and memory order) of ``raw``, padding turned into
    air; the number of non-finite voxels (counted only where the stored type and scaling could
    make any); and the scaled values, before padding removal, of the air-check sample.

    ``raw`` is an array or a gzip stream of voxels (``StoredVoxels``), read piece by piece: an
    inflated piece is converted while it is still in cache, and the whole int16 volume never
    exists in memory."""
    if isinstance(raw, np.ndarray):
        order: Literal["C", "F"] = "F" if raw.flags.f_contiguous and not raw.flags.c_contiguous else "C"
        flat_raw = np.ravel(raw, order=order)  # a view for the memory-ordered arrays that readers return
        pieces: Iterable[np.ndarray] = (flat_raw[i : i + 16 * _BLOCK] for i in range(0, flat_raw.size, 16 * _BLOCK))
    else:
        order, pieces = "F", raw.pieces()
    n = int(np.prod(raw.shape, dtype=np.int64))
    out = np.empty(n, dtype=np.float32)
    positions = _sample_positions(raw.shape, order, sample_origin)
    sample = np.empty(positions.size, dtype=np.float32)
    count_bad = not _always_finite(raw.dtype, scale)
    non_finite = 0
    mask = np.empty(min(_BLOCK, max(n, 1)), dtype=bool)
    start = 0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is counted as non-finite below
        for piece in pieces:
            if start + piece.size > n:
                raise ValueError(f"more voxels than the header's {n:,}")
            for i in range(0, piece.size, _BLOCK):
                block = out[start : start + min(_BLOCK, piece.size - i)]
                scale.into(piece[i : i + _BLOCK], block)
                if count_bad:  # before padding, which would turn -inf into air
                    non_finite += block.size - int(np.count_nonzero(np.isfinite(block)))
                lo, hi = np.searchsorted(positions, (start, start + block.size))
                sample[lo:hi] = block[positions[lo:hi] - start]
                below = mask[: block.size]
                np.less(block, padding_below_hu, out=below)
                np.copyto(block, AIR_HU, where=below)
                start += block.size
    if start != n:
        raise EOFError(f"{start:,} voxels read, the header has {n:,}")
    return out.reshape(raw.shape, order=order), non_finite, sample


def _always_finite(dtype: np.dtype, scale: _Scaling) -> bool:
    """True when every value of an integer ``dtype`` scales to a finite float (the scaling is
    affine, so its two extremes decide); float data can hold NaN/inf and is always counted."""
    if dtype.kind not in "iub":
        return False
    info = np.iinfo(dtype) if dtype.kind != "b" else None
    ends = np.array([0, 1] if info is None else [info.min, info.max], dtype=dtype)
    return bool(np.all(np.isfinite(scale(ends))))


def _check_size(path: Path, shape: tuple[int, ...], cfg: CTLoadConfig) -> None:
    if len(shape) != 3:
        raise CTLoadError(f"{path}: expected a 3-D volume, got shape {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > cfg.max_voxels:
        raise CTLoadError(
            f"{path}: {shape} is {n:,} voxels, above the limit of {cfg.max_voxels:,} "
            f"({n * 4 / 2**30:.1f} GiB as float32); raise max_voxels in the config if the machine has the memory"
        )


class _Scaling:
    """``v * slope + inter`` (each step only where its value says so) into float32.

    ``work`` is the dtype the arithmetic is defined in. The result is built in place in the
    float32 output block (no temporaries) where that gives the same values: stored values that
    float32 holds exactly (8/16-bit integers, float32) and either ``work`` is float32 or only
    one operation applies with an operand float32 holds exactly (one correctly rounded
    operation in float64 followed by rounding to float32 equals the float32 operation, since
    53 >= 2 x 24 + 2 bits). Otherwise the expression runs in ``work`` and is cast once.
    """

    def __init__(self, slope, inter, work: np.dtype):
        self.work = np.dtype(work)
        self.slope = None if slope is None else np.asarray(slope, dtype=self.work)
        self.inter = None if inter is None else np.asarray(inter, dtype=self.work)
        operands = [v for v in (self.slope, self.inter) if v is not None]
        self.in_float32 = self.work == np.float32 or (
            len(operands) == 1 and bool(np.float32(operands[0]) == operands[0])
        )

    def into(self, block: np.ndarray, out: np.ndarray) -> None:
        if self.in_float32 and np.can_cast(block.dtype, np.float32, "safe"):
            out[...] = block
            if self.slope is not None:
                np.multiply(out, self.slope.astype(np.float32), out=out)
            if self.inter is not None:
                np.add(out, self.inter.astype(np.float32), out=out)
            return
        v = block.astype(self.work)
        if self.slope is not None:
            v *= self.slope
        if self.inter is not None:
            v += self.inter
        out[...] = v

    def __call__(self, block: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype=np.float32)
        self.into(block, out)
        return out


def _csv_scale(slope: float | None, intercept: float | None) -> _Scaling:
    """The manifest's slope/intercept: values cast to float32, then ``* slope + intercept`` in float32."""
    return _Scaling(1.0 if slope is None else slope, 0.0 if intercept is None else intercept, np.dtype(np.float32))


def _header_scale(dataobj, stored: np.dtype) -> _Scaling:
    """nibabel's own read scaling, exactly as ``get_fdata(dtype=float32)`` does it, per block.

    As nibabel's ArrayProxy and ``apply_read_scaling``: slope and intercept are float32 where
    that is exact; integer data is scaled in the float type ``int_scinter_ftype`` picks (float64
    where float32 would overflow); a slope of 1 and an intercept of 0 are skipped; numpy's type
    promotion of stored values with them gives the working type; the result is cast to float32.
    Elementwise, so blocks give the values of the whole array (tests/core/test_ct_io_fast_path.py
    checks them against ``get_fdata`` for several stored types).
    """
    slope, inter = np.atleast_1d(np.asanyarray(dataobj.slope)), np.atleast_1d(np.asanyarray(dataobj.inter))
    if np.can_cast(slope, np.float32):
        slope = slope.astype(np.float32)
    if np.can_cast(inter, np.float32):
        inter = inter.astype(np.float32)
    if (float(slope[0]), float(inter[0])) == (1.0, 0.0):
        return _Scaling(None, None, np.dtype(np.float32))
    if stored.kind in "iu":
        default = slope.dtype.type if slope.dtype.kind == "f" else np.float64
        ftype = int_scinter_ftype(stored, slope, inter, default)
        slope, inter = slope.astype(ftype), inter.astype(ftype)
    use_slope, use_inter = bool(slope[0] != 1.0), bool(inter[0] != 0.0)
    work = np.result_type(stored, *([slope] if use_slope else []), *([inter] if use_inter else []))
    return _Scaling(slope[0] if use_slope else None, inter[0] if use_inter else None, work)


def _read_nifti(
    path: Path, cfg: CTLoadConfig, slope, intercept
) -> tuple[np.ndarray | StoredVoxels, _Scaling, np.ndarray, str]:
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
    if use_csv:
        if slope is None and intercept is None and cfg.hu_policy == "csv":
            raise CTLoadError(f"{path}: hu_policy 'csv' but the manifest row has no slope/intercept")
        scale, how = _csv_scale(slope, intercept), "csv"
    else:
        scale, how = _header_scale(img.dataobj, img.get_data_dtype()), ("header" if header_has_scaling else "none")
    try:
        raw = read_stored_voxels(path, img)
    except Exception as e:  # truncated gzip, short file, ...
        raise CTLoadError(
            f"{path}: voxel data unreadable ({type(e).__name__}: {e}); the file is probably truncated"
        ) from e
    return raw, scale, np.asarray(img.affine, dtype=np.float64), how


class StoredVoxels:
    """The voxels of a ``.nii.gz``, inflated piece by piece in stored (Fortran) order.

    The compressed file is read whole (tens of MB) and inflated with ISA-L or zlib-ng where
    installed (``pipeline.inflate``); each piece is converted to HU by the caller while it is
    in cache, so no inflated copy of the whole volume is made (nibabel's gzip stream inflates
    it whole, in small reads, and copies).
    """

    def __init__(self, path: Path, img):
        self.shape = tuple(int(s) for s in img.shape)
        self.dtype = img.get_data_dtype()
        self.offset = int(img.dataobj.offset)
        self.data = path.read_bytes()

    def pieces(self) -> Iterator[np.ndarray]:
        skip, carry = self.offset, b""
        size = self.dtype.itemsize
        for chunk in gunzip_pieces(self.data):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if carry:
                chunk, carry = carry + chunk, b""
            whole = len(chunk) - len(chunk) % size
            if whole < len(chunk):
                carry = chunk[whole:]
            if whole:
                yield np.frombuffer(chunk, dtype=self.dtype, count=whole // size)


def read_stored_voxels(path: Path, img) -> np.ndarray | StoredVoxels:
    """The unscaled voxels of a NIfTI file in stored order: a stream for ``.nii.gz``, an array
    (nibabel's memory map) for ``.nii``."""
    if path.name.endswith(".gz"):
        return StoredVoxels(path, img)
    return np.asanyarray(img.dataobj.get_unscaled())


def _read_numpy(
    path: Path, cfg, spacing, orientation, slope, intercept
) -> tuple[np.ndarray, _Scaling, np.ndarray, str]:
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
    if cfg.hu_policy != "header" and (slope is not None or intercept is not None):
        scale, how = _csv_scale(slope, intercept), "csv"
    else:
        scale, how = _Scaling(None, None, np.dtype(np.float32)), "none"
    return arr, scale, affine_from_spacing(spacing, orientation or CANONICAL_ORIENTATION), how


_DIRECTION = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def affine_from_spacing(spacing, orientation: str = CANONICAL_ORIENTATION) -> np.ndarray:
    """Voxel -> RAS+ affine for an array whose axes point as ``orientation`` says, origin at voxel 0."""
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for axis, (code, step) in enumerate(zip(orientation.upper(), spacing)):
        world_axis, sign = _DIRECTION[code]
        aff[world_axis, axis] = sign * float(step)
    return aff


def _canonical_transform(affine: np.ndarray, path: Path) -> np.ndarray:
    """The nibabel orientation transform from the stored axes to ``CANONICAL_ORIENTATION``."""
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path}: the affine is singular or not finite; the header's geometry is broken")
    return ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_ORIENTATION))


def measure_air_hu(hu: np.ndarray, padding_below_hu: float, sample_step: int = AIR_SAMPLE_STEP) -> float | None:
    """The air level of a chest CT (see :func:`air_level`) on a strided sample of ``hu``."""
    return air_level(hu[::sample_step, ::sample_step, ::sample_step].ravel(), padding_below_hu)


def air_level(sample: np.ndarray, padding_below_hu: float) -> float | None:
    """The air level of a chest CT: the 1st percentile of voxels that are not constant padding.

    Scanner padding is one constant value at the volume's minimum; it is left out
    (the minimum, when it is below ``padding_below_hu`` or holds over 0.1% of the
    voxels). Air outside the body
    and in the airways then forms the low end of the distribution, at about -1000 HU
    in a correctly scaled volume. A strided sample keeps this cheap on 512^3 volumes; the
    result depends only on which voxels are in it, not on their order.
    """
    vmin = sample.min()
    at_min = sample == vmin
    # A constant mass at the minimum is padding (or air clamped to one value): either
    # way it says nothing about the scaling, while noisy air around it does.
    if vmin < padding_below_hu or at_min.mean() > 0.001:
        sample = sample[~at_min]
    if sample.size == 0:
        return None
    return float(np.percentile(sample, 1.0))
