"""The projector against exact path lengths (box, sphere) and an independent ray marcher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from pipeline.ct_io import affine_from_spacing
from pipeline.drr.geometry import VIEW_FRAMES, plan_projection
from pipeline.drr.projector import project
from schemas.drr import GeometryConfig
from tests.helpers.phantoms import occupancy_sphere

SPACING = (1.5, 1.25, 2.0)
SHAPE = (96, 110, 72)


def _rays(geo: GeometryConfig, view: str, centre: np.ndarray):
    """Source points and unit directions (RAS mm) of every detector pixel, built from the view
    table directly (not from the plan), shape (H, W, 3)."""
    (b_ax, b_sign), (u_ax, u_sign), (v_ax, v_sign) = VIEW_FRAMES[view]
    beam, u, v = np.zeros(3), np.zeros(3), np.zeros(3)
    beam[b_ax], u[u_ax], v[v_ax] = b_sign, u_sign, v_sign
    off = (np.arange(geo.size) - (geo.size - 1) / 2) * geo.detector_mm / geo.size
    pix = off[None, :, None] * u + off[:, None, None] * v  # (H, W, 3) offset in the detector plane
    if geo.projection == "parallel":
        start = centre - 1000 * beam + pix
        return start, np.broadcast_to(beam, start.shape)
    source = centre - geo.sod_mm * beam
    target = source + geo.sid_mm * beam + pix
    d = target - source
    return np.broadcast_to(source, d.shape), d / np.linalg.norm(d, axis=-1, keepdims=True)


def _box_chord(start, direction, lo, hi):
    """Exact length of each ray inside the axis-aligned box [lo, hi] (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - start) / direction
        t2 = (hi - start) / direction
    tmin = np.where(np.isfinite(t1), np.minimum(t1, t2), -np.inf).max(axis=-1)
    tmax = np.where(np.isfinite(t1), np.maximum(t1, t2), np.inf).min(axis=-1)
    inside_parallel = np.all(np.where(direction == 0, (start >= lo) & (start <= hi), True), axis=-1)
    return np.where(inside_parallel, np.clip(tmax - tmin, 0, None), 0.0)


def _sphere_chord(start, direction, centre, radius):
    rel = centre - start
    t = (rel * direction).sum(-1)
    d2 = (rel**2).sum(-1) - t**2
    return 2 * np.sqrt(np.clip(radius**2 - d2, 0, None))


GEOMETRIES = [
    GeometryConfig(projection="parallel", size=72, detector_mm=200),
    GeometryConfig(projection="cone", size=72, detector_mm=260, sid_mm=450, sod_mm=300),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: g.projection)
@pytest.mark.parametrize("view", ["pa", "lateral"])
def test_uniform_box_exact_path_lengths(geo, view):
    aff = affine_from_spacing(SPACING, "LPS")
    vol = np.zeros(SHAPE, np.float32)
    lo_v, hi_v = np.array([20, 15, 10]), np.array([70, 90, 55])  # voxels lo..hi-1 are inside
    vol[20:70, 15:90, 10:55] = 1.0
    img = project(torch.from_numpy(vol), plan_projection(SHAPE, aff, view, geo)).numpy()
    # the box's faces are half a voxel outside the first and last voxel centres, in world mm
    corners = np.stack([lo_v - 0.5, hi_v - 0.5]) @ aff[:3, :3].T + aff[:3, 3]
    centre = aff[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + aff[:3, 3]
    start, direction = _rays(geo, view, centre)
    truth = _box_chord(start, direction, corners.min(0), corners.max(0))
    # Rays that enter and leave through the two faces across the beam and stay 2 voxels away
    # from the side faces (where bilinear interpolation blurs the edge): their chord through
    # the box equals the one through the box narrowed by 4 mm on the side faces only.
    beam_axis = VIEW_FRAMES[view][0][0]
    margin = np.full(3, 4.0)
    margin[beam_axis] = 0.0
    narrowed = _box_chord(start, direction, corners.min(0) + margin, corners.max(0) - margin)
    interior = (truth > 0) & np.isclose(narrowed, truth, rtol=1e-9)
    assert interior.sum() > 100
    # Joseph's method is exact there: every plane is crossed whole, path length per plane known
    np.testing.assert_allclose(img[interior], truth[interior], rtol=2e-5)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: g.projection)
def test_sphere_chord_lengths(geo):
    radius = 55.0
    aff = affine_from_spacing(SPACING, "LPS")
    vol = occupancy_sphere(SHAPE, SPACING, radius)
    img = project(torch.from_numpy(vol), plan_projection(SHAPE, aff, "pa", geo)).numpy()
    centre = aff[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + aff[:3, 3]
    start, direction = _rays(geo, "pa", centre)
    truth = _sphere_chord(start, direction, centre, radius)
    inner = truth > 0.4 * 2 * radius
    err = np.abs(img - truth)[inner]
    assert err.mean() < 0.15 and err.max() < max(SPACING)  # mm, against chords up to 110 mm
    assert abs(img.sum() / truth.sum() - 1) < 2e-3  # total attenuation (volume) conserved


def test_matches_independent_trilinear_ray_marcher():
    """A smooth random volume, cone beam, lateral: the separable projector against plain
    trilinear ray marching (scipy map_coordinates, step 0.05 voxel) written from the ray table."""
    rng = np.random.default_rng(0)
    shape, spacing = (40, 44, 36), (2.0, 1.6, 2.4)
    aff = affine_from_spacing(spacing, "LPS")
    aff[:3, 3] = (12.0, -30.0, 5.0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    vol = np.zeros(shape)
    for _ in range(12):  # gaussian blobs
        c, s = rng.uniform(5, np.array(shape) - 5), rng.uniform(2, 6)
        vol += rng.uniform(0.2, 1.0) * np.exp(-(((grid - c) ** 2).sum(-1)) / (2 * s * s))
    geo = GeometryConfig(projection="cone", size=24, detector_mm=140, sid_mm=300, sod_mm=200)
    img = project(torch.from_numpy(vol.astype(np.float32)), plan_projection(shape, aff, "lateral", geo)).numpy()

    centre = aff[:3, :3] @ ((np.array(shape) - 1) / 2) + aff[:3, 3]
    start, direction = _rays(geo, "lateral", centre)
    step = 0.05 * min(spacing)
    t = np.arange(150, 250, step)  # the volume lies 150..250 mm from the source
    pts = start[..., None, :] + t[:, None] * direction[..., None, :]  # (H, W, T, 3) world
    vox = (pts - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    # zero-padded by one voxel: values fall linearly to zero one voxel beyond the edge centres,
    # as the projector's bilinear interpolation against its zero padding does
    samples = map_coordinates(np.pad(vol, 1), vox.reshape(-1, 3).T + 1, order=1, mode="constant", cval=0.0)
    reference = samples.reshape(pts.shape[:-1]).sum(-1) * step
    assert np.corrcoef(img.ravel(), reference.ravel())[0, 1] > 0.9999
    assert np.abs(img - reference).max() < 0.01 * reference.max()


def test_slab_size_does_not_change_the_result():
    vol = torch.rand(30, 33, 20)
    plan = plan_projection(vol.shape, affine_from_spacing((1.0, 1.2, 2.0)), "pa", GEOMETRIES[1])
    a = project(vol, plan, slab=1)
    b = project(vol, plan, slab=7)
    c = project(vol, plan, slab=64)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("view", ["pa", "lateral"])
@pytest.mark.parametrize("shape", [(30, 33, 20), (24, 26, 41)])
def test_both_interpolation_orders_agree(view, shape):
    """U first and V first (the two orders of the separable resample) give the same line
    integrals to float rounding, whichever of the in-plane axes is the longer, slab 7 leaving a
    short last slab; also through V first's staging copy (a volume whose plane axis is nearest)."""
    from pipeline.drr.projector import _u_first, _v_first

    torch.manual_seed(0)
    vol = torch.rand(*shape)
    plan = plan_projection(vol.shape, affine_from_spacing((1.0, 1.2, 2.0)), view, GEOMETRIES[1])
    uvn = vol.permute(*plan.axes)
    a = _u_first(uvn.contiguous(), plan, None, 7)  # 7 planes a slab
    b = _v_first(uvn.contiguous(), plan, None, 7)
    c = _v_first(uvn.permute(0, 2, 1).contiguous().permute(0, 2, 1), plan, None, 7)  # plane axis nearest
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, c, rtol=0, atol=0)
    assert a.abs().max() > 1.0  # rays cross the volume
