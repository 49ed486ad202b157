"""load_ct's fast path: block-wise scaling equals nibabel's, views instead of copies, the inflate."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.ct_io import CTLoadError, affine_from_spacing, load_ct
from pipeline.inflate import GzipError, gunzip
from schemas.ct import CTLoadConfig

SHAPE = (50, 44, 40)  # 88,000 voxels: more than one conversion block (65,536)
NO_AIR_CHECK = CTLoadConfig(air_check=False)


def _stored(dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-3000.0, 3000.0)
    return rng.uniform(lo, hi, SHAPE).astype(dtype)


@pytest.mark.parametrize(
    "dtype, slope, inter",
    [
        (np.int16, 1.0, -1024.0),  # CT-RATE's scaling
        (np.int16, 0.37, -1024.7),  # float32 rounding of both steps matters
        (np.int16, 1.0, -1024.7),  # one step only (nibabel works in float64 here)
        (np.int16, 0.37, 0.0),
        (np.uint16, 1.0, -32768.0),
        (np.uint8, 3.3, -1000.1),
        (np.int32, 1e-3, -5.0),
        (np.float32, 0.5, 10.0),
        (np.float64, 1.0, 0.0),  # no scaling
    ],
)
def test_scaling_equals_nibabel_get_fdata(tmp_path, dtype, slope, inter):
    stored = _stored(dtype)
    img = nib.Nifti1Image(stored, affine_from_spacing((0.7, 0.7, 1.5), "LPS"))
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "v.nii.gz"
    nib.save(img, str(path))
    expected = nib.load(str(path)).get_fdata(dtype=np.float32)  # the old loader's values
    expected = np.where(expected < -1500, np.float32(-1000), expected)
    np.testing.assert_array_equal(load_ct(path, NO_AIR_CHECK).hu, expected)


def test_csv_scaling_equals_float32_arithmetic(tmp_path):
    stored = _stored(np.int16)
    path = tmp_path / "v.nii"  # uncompressed: nibabel's memory map
    nib.save(nib.Nifti1Image(stored, affine_from_spacing((1, 1, 1), "LPS")), str(path))
    got = load_ct(path, CTLoadConfig(air_check=False, hu_policy="csv"), slope=0.37, intercept=-1024.7).hu
    expected = stored.astype(np.float32) * np.float32(0.37) + np.float32(-1024.7)
    np.testing.assert_array_equal(got, np.where(expected < -1500, np.float32(-1000), expected))


def test_flipped_and_permuted_storage_is_a_view(tmp_path):
    stored = _stored(np.int16)
    # Stored axes: S, R, A (a permutation and two flips of LPS).
    path = tmp_path / "sra.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine_from_spacing((2.0, 0.7, 0.8), "SRA")), str(path))
    vol = load_ct(path, NO_AIR_CHECK)
    expected = np.transpose(stored, (1, 2, 0))[::-1, ::-1, :].astype(np.float32)  # R->L, A->P, S
    np.testing.assert_array_equal(vol.hu, np.where(expected < -1500, np.float32(-1000), expected))
    assert not vol.hu.flags.owndata and not vol.hu.flags.c_contiguous  # no reorientation copy
    assert vol.hu.strides[0] < 0 and vol.hu.strides[1] < 0
    np.testing.assert_allclose(vol.spacing, (0.7, 0.8, 2.0))
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")


def test_non_finite_voxels_refused_before_padding_hides_them(tmp_path):
    stored = np.zeros(SHAPE, np.float32)
    stored[1, 2, 3], stored[4, 5, 6], stored[7, 8, 9] = np.nan, np.inf, -np.inf  # -inf < padding: counted first
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(stored, np.eye(4)), str(path))
    with pytest.raises(CTLoadError, match="nan.nii.gz: non-finite voxels: 3 "):
        load_ct(path, NO_AIR_CHECK)


def test_scaling_beyond_float32_is_refused_as_non_finite(tmp_path):
    stored = np.zeros(SHAPE, np.int32)
    stored[0, 0, :2] = (2_000_000_000, -2_000_000_000)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(1e30, 0.0)  # nibabel scales in float64; float32 cannot hold the result
    nib.save(img, str(tmp_path / "big.nii.gz"))
    with pytest.raises(CTLoadError, match="big.nii.gz: non-finite voxels: 2 "):
        load_ct(tmp_path / "big.nii.gz", NO_AIR_CHECK)


def test_gunzip_reads_every_member_and_refuses_a_cut_stream():
    a, b = b"\x01" * 70_000, bytes(range(256)) * 100
    both = gzip.compress(a) + gzip.compress(b)
    assert gunzip(both, size_hint=len(a) + len(b)) == a + b
    assert gunzip(gzip.compress(a), size_hint=len(a)) == a
    with pytest.raises(GzipError):
        gunzip(gzip.compress(a + b)[:-200], size_hint=len(a) + len(b))


def test_air_level_is_that_of_the_oriented_volume_before_padding(tmp_path):
    from pipeline.ct_io import measure_air_hu

    rng = np.random.default_rng(1)
    hu = rng.normal(-1000.0, 8.0, (47, 38, 29)).astype(np.float32)  # sizes not multiples of 3
    hu[10:30, 10:25, :] = 40.0
    hu[:3] = -2048.0  # padding on the patient's right (stored first after the flip below)
    for axcodes in ("LPS", "RAS", "AIR"):
        stored = np.round(hu + 1024).astype(np.int16)
        lps_to_stored = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("LPS"), nib.orientations.axcodes2ornt(axcodes)
        )
        stored = nib.orientations.apply_orientation(stored, lps_to_stored)
        img = nib.Nifti1Image(np.ascontiguousarray(stored), affine_from_spacing((1.0, 1.0, 1.0), axcodes))
        img.header.set_slope_inter(1.0, -1024.0)
        nib.save(img, str(tmp_path / f"{axcodes}.nii.gz"))
        vol = load_ct(tmp_path / f"{axcodes}.nii.gz")
        before_padding = np.round(hu + 1024).astype(np.float32) - 1024  # LPS, scaled, padding kept
        assert vol.air_hu == measure_air_hu(before_padding, -1500.0)


def test_concatenated_gzip_members_load(tmp_path):
    stored = _stored(np.int16)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(stored, np.eye(4)), str(path))
    whole = gzip.decompress(path.read_bytes())
    cut = 100_003  # an odd byte offset: one voxel is split between the members
    path.write_bytes(gzip.compress(whole[:cut]) + gzip.compress(whole[cut:]))
    expected = stored[::-1, ::-1].astype(np.float32)  # stored R, A, S -> L, P, S
    np.testing.assert_array_equal(load_ct(path, NO_AIR_CHECK).hu, np.where(expected < -1500, -1000.0, expected))
