"""CT loading: header scaling, HU policy, padding, air check, orientation, NumPy volumes, bad files."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.ct_io import AirCheckError, CTLoadError, affine_from_spacing, load_ct
from schemas.ct import CTLoadConfig

SPACING = (0.8, 0.7, 2.0)
SHAPE = (20, 16, 12)  # L, P, S


def phantom_lps() -> np.ndarray:
    """Air, a soft-tissue body with a lung-like low region, padding outside an in-plane circle, one bone marker."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    body = ((x - 10) / 7.5) ** 2 + ((y - 8) / 6) ** 2 <= 1
    hu[body] = 40.0
    hu[body & (np.abs(x - 10) > 2) & (np.abs(x - 10) < 6) & (np.abs(y - 8) < 3)] = -850.0
    hu[15:17, 10:12, 9:11] = 900.0  # marker: patient's left, posterior, superior
    hu[((x - 9.5) / 10.5) ** 2 + ((y - 7.5) / 8.5) ** 2 > 1] = -2048.0  # outside the scan circle
    return hu


LPS_AFFINE = affine_from_spacing(SPACING, "LPS")
LPS_AFFINE[:3, 3] = (120.0, 80.0, -300.0)


def save_nifti(path, stored: np.ndarray, affine, slope=None, inter=None):
    img = nib.Nifti1Image(stored.astype(np.int16), affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def test_affine_from_spacing_directions():
    aff = affine_from_spacing((1.0, 2.0, 3.0), "LPS")
    np.testing.assert_array_equal(np.diag(aff), [-1.0, -2.0, 3.0, 1.0])
    assert nib.aff2axcodes(affine_from_spacing((1, 1, 1), "SRA")) == ("S", "R", "A")


def test_header_scaling_applied_once_and_padding_becomes_air(tmp_path):
    hu = phantom_lps()
    path = save_nifti(tmp_path / "v.nii.gz", hu + 1024, LPS_AFFINE, slope=1.0, inter=-1024.0)
    vol = load_ct(path)
    expected = np.where(hu < -1500, -1000.0, hu)
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.hu.dtype == np.float32 and vol.hu_scaling == "header"
    assert abs(vol.air_hu + 1000) < 1
    np.testing.assert_allclose(vol.spacing, SPACING)
    # The manifest's CSV slope/intercept are ignored under the default 'header' policy.
    np.testing.assert_array_equal(load_ct(path, slope=1.0, intercept=-1024.0).hu, expected)


def test_csv_policy_uses_raw_values_once(tmp_path):
    hu = phantom_lps()
    scaled = save_nifti(tmp_path / "scaled.nii.gz", hu + 1024, LPS_AFFINE, slope=1.0, inter=-1024.0)
    raw = save_nifti(tmp_path / "raw.nii.gz", hu + 1024, LPS_AFFINE)
    expected = np.where(hu < -1500, -1000.0, hu)
    for path in (scaled, raw):  # header scaling ignored: raw stored integers times slope plus intercept
        vol = load_ct(path, CTLoadConfig(hu_policy="csv"), slope=1.0, intercept=-1024.0)
        np.testing.assert_array_equal(vol.hu, expected)
        assert vol.hu_scaling == "csv"


def test_auto_policy_prefers_header_then_csv(tmp_path):
    hu = phantom_lps()
    expected = np.where(hu < -1500, -1000.0, hu)
    auto = CTLoadConfig(hu_policy="auto")
    scaled = save_nifti(tmp_path / "scaled.nii.gz", hu + 1024, LPS_AFFINE, slope=1.0, inter=-1024.0)
    raw = save_nifti(tmp_path / "raw.nii.gz", hu + 1024, LPS_AFFINE)
    assert load_ct(scaled, auto, slope=1.0, intercept=-1024.0).hu_scaling == "header"
    vol = load_ct(raw, auto, slope=1.0, intercept=-1024.0)
    assert vol.hu_scaling == "csv"
    np.testing.assert_array_equal(vol.hu, expected)


def test_air_check_catches_double_and_missing_scaling(tmp_path):
    hu = phantom_lps()
    plain = save_nifti(tmp_path / "plain.nii.gz", hu, LPS_AFFINE)  # stores HU directly
    # CSV intercept applied to a file that already holds HU: air reads about -2024.
    with pytest.raises(AirCheckError, match=r"plain.nii.gz: air reads -20\d\d HU.*--hu-policy header"):
        load_ct(plain, CTLoadConfig(hu_policy="csv"), slope=1.0, intercept=-1024.0)
    raw = save_nifti(tmp_path / "raw.nii.gz", hu + 1024, LPS_AFFINE)  # raw values, nothing says how to scale
    with pytest.raises(AirCheckError, match=r"air reads 2\d HU"):
        load_ct(raw)
    # With the check off the same file loads (unchanged values), for users who know better.
    assert load_ct(raw, CTLoadConfig(air_check=False)).air_hu is None


@pytest.mark.parametrize(
    "perm, flips", [((0, 1, 2), (0,)), ((2, 0, 1), (0, 2)), ((1, 2, 0), (1,)), ((2, 1, 0), (0, 1, 2))]
)
def test_orientation_round_trip(tmp_path, perm, flips):
    """The same anatomy stored with permuted or flipped axes loads to the same LPS array and affine."""
    hu = phantom_lps()
    stored = np.flip(np.transpose(hu, perm), axis=flips)
    # Hand-built voxel map: stored index (a0, a1, a2) -> LPS index; along stored axis d runs LPS axis perm[d].
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for d, src in enumerate(perm):
        if d in flips:
            m[src, d], m[src, 3] = -1.0, SHAPE[src] - 1
        else:
            m[src, d] = 1.0
    path = save_nifti(tmp_path / "p.nii.gz", stored + 1024, LPS_AFFINE @ m, slope=1.0, inter=-1024.0)
    vol = load_ct(path)
    np.testing.assert_array_equal(vol.hu, np.where(hu < -1500, -1000.0, hu))
    np.testing.assert_allclose(vol.affine, LPS_AFFINE, atol=1e-9)
    # The marker sits at the patient's left, posterior, superior: RAS+ x negative side, y negative, z high.
    i, j, k = np.argwhere(vol.hu > 500).mean(axis=0)
    world = vol.affine @ [i, j, k, 1]
    centre = vol.affine @ [(SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2, (SHAPE[2] - 1) / 2, 1]
    assert world[0] < centre[0] and world[1] < centre[1] and world[2] > centre[2]


def test_numpy_volume_with_manifest_spacing(tmp_path):
    hu = phantom_lps()
    spl = np.ascontiguousarray(
        np.flip(np.transpose(hu, (2, 1, 0)), axis=0)
    )  # axes S(flipped: runs I->S reversed), P, L
    # np.flip on axis 0 makes stored axis 0 run Superior->Inferior, i.e. axcode 'I'.
    np.save(tmp_path / "v.npy", spl)
    vol = load_ct(tmp_path / "v.npy", spacing=(SPACING[2], SPACING[1], SPACING[0]), orientation="IPL")
    np.testing.assert_array_equal(vol.hu, np.where(hu < -1500, -1000.0, hu))
    np.testing.assert_allclose(vol.spacing, SPACING)
    np.savez_compressed(tmp_path / "v.npz", ct=spl)
    np.testing.assert_array_equal(load_ct(tmp_path / "v.npz", spacing=(2.0, 0.7, 0.8), orientation="IPL").hu, vol.hu)
    with pytest.raises(CTLoadError, match="give its spacing"):
        load_ct(tmp_path / "v.npy")


def test_too_large_refused_before_reading(tmp_path):
    path = save_nifti(tmp_path / "big.nii.gz", phantom_lps() + 1024, LPS_AFFINE, 1.0, -1024.0)
    with pytest.raises(CTLoadError, match=r"\(20, 16, 12\) is 3,840 voxels, above the limit of 1,000"):
        load_ct(path, CTLoadConfig(max_voxels=1000))


def test_bad_files_named_with_reason(tmp_path):
    with pytest.raises(CTLoadError, match="missing.nii.gz: file not found"):
        load_ct(tmp_path / "missing.nii.gz")
    good = save_nifti(tmp_path / "good.nii.gz", phantom_lps() + 1024, LPS_AFFINE, 1.0, -1024.0)
    data = gzip.decompress(good.read_bytes())
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(CTLoadError, match="trunc.nii.gz: voxel data unreadable"):
        load_ct(truncated)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(CTLoadError, match="junk.nii.gz: unreadable NIfTI header"):
        load_ct(tmp_path / "junk.nii.gz")
    img = nib.Nifti1Image((phantom_lps() + 1024).astype(np.int16), None)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a header whose z axis has no extent
    flat = tmp_path / "flat.nii.gz"
    nib.save(img, str(flat))
    with pytest.raises(CTLoadError, match="flat.nii.gz: the affine is singular"):
        load_ct(flat)
    (tmp_path / "v.mha").write_bytes(b"")
    with pytest.raises(CTLoadError, match="unknown volume format"):
        load_ct(tmp_path / "v.mha")


def test_non_finite_voxels_refused_with_count(tmp_path):
    """NaN compares false with everything, so it would pass the air check; the loader counts and refuses it."""
    hu = phantom_lps()
    assert load_ct(_float_nifti(tmp_path / "clean.nii.gz", hu)).hu.shape == SHAPE  # float files load when finite
    bad = hu.copy()
    bad[0, 0, :3] = np.nan
    bad[5, 5, 5] = np.inf
    bad[6, 6, 6] = -np.inf
    with pytest.raises(CTLoadError, match=r"some.nii.gz: non-finite voxels: 5 "):
        load_ct(_float_nifti(tmp_path / "some.nii.gz", bad))
    with pytest.raises(CTLoadError, match=rf"all.npy: non-finite voxels: {hu.size} "):
        np.save(tmp_path / "all.npy", np.full(SHAPE, np.nan, dtype=np.float32))
        load_ct(tmp_path / "all.npy", spacing=SPACING)
    # The check holds with the air check off, and for a CSV intercept that is itself not finite.
    with pytest.raises(CTLoadError, match="non-finite voxels: 5 "):
        load_ct(tmp_path / "some.nii.gz", CTLoadConfig(air_check=False))
    raw = save_nifti(tmp_path / "raw.nii.gz", hu + 1024, LPS_AFFINE)
    with pytest.raises(CTLoadError, match=rf"non-finite voxels: {hu.size} "):
        load_ct(raw, CTLoadConfig(hu_policy="csv"), slope=1.0, intercept=float("nan"))


def _float_nifti(path, hu: np.ndarray):
    nib.save(nib.Nifti1Image(hu.astype(np.float32), LPS_AFFINE), str(path))
    return path
