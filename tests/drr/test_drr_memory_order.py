"""The projector follows the volume's memory order (no copy to C order), with the same result."""

import itertools

import numpy as np
import pytest
import torch

from pipeline.ct_io import affine_from_spacing
from pipeline.drr.geometry import unflipped
from pipeline.drr.render import render_volume
from schemas.drr import DRRRenderConfig, GeometryConfig
from tests.helpers.phantoms import chest_like

SPACING = (2.0, 2.5, 3.0)


@pytest.mark.parametrize("projection", ["cone", "parallel"])
def test_fortran_order_and_flipped_views_render_the_same(projection):
    hu = chest_like(spacing=SPACING)
    affine = affine_from_spacing(SPACING, "LPS")
    cfg = DRRRenderConfig(
        views=["pa", "lateral"], geometry=GeometryConfig(size=48, detector_mm=160.0, projection=projection)
    )
    ref = render_volume(np.ascontiguousarray(hu), affine, cfg)
    # The same voxels in the same index order, laid out as a NIfTI reader leaves them.
    fortran = np.asfortranarray(hu)
    flipped = np.ascontiguousarray(hu[:, ::-1, ::-1])[:, ::-1, ::-1]  # negative strides on axes 1, 2
    for layout in (fortran, flipped, np.asfortranarray(hu[::-1])[::-1]):
        np.testing.assert_array_equal(layout, hu)
        got = render_volume(layout, affine, cfg)
        np.testing.assert_allclose(got.line_integrals, ref.line_integrals, rtol=1e-5, atol=1e-5)
        assert np.abs(got.images.astype(np.int64) - ref.images).max() <= 1


def test_unflipped_is_a_view_at_the_same_world_positions():
    hu = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::-1, ::-1]
    affine = affine_from_spacing((1.0, 2.0, 3.0), "LPS")
    affine[:3, 3] = (5.0, 6.0, 7.0)
    fwd, new_affine = unflipped(hu, affine)
    assert all(s > 0 for s in fwd.strides) and np.shares_memory(fwd, hu)
    torch.as_tensor(fwd)  # torch refuses negative strides
    for idx in np.ndindex(hu.shape):  # each voxel value sits at the same world point
        j = np.nonzero(fwd == hu[idx])
        new_idx = np.array([j[0][0], j[1][0], j[2][0], 1.0])
        np.testing.assert_allclose(new_affine @ new_idx, affine @ np.array([*idx, 1.0]))


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_staged_slab_copy_equals_the_plain_copy(order):
    """The slab copy through the staging buffer (used when V is not the nearest axis in memory)
    gives exactly the slab, whatever the volume's memory order and a short last slab."""
    from pipeline.drr.projector import _copy_slab

    base = torch.arange(40 * 7 * 33, dtype=torch.float32).reshape(40, 7, 33)
    vol = base.permute(*order).contiguous().permute(*np.argsort(order).tolist())  # same values, other memory order
    assert torch.equal(vol, base)
    stage = torch.empty(40 * 33 * 5)
    for n0, b in ((0, 5), (5, 2)):
        dst = torch.zeros(b, 40, 35)[:, :, 1:34]
        _copy_slab(dst, vol[:, n0 : n0 + b], stage)
        assert torch.equal(dst, base[:, n0 : n0 + b].permute(1, 0, 2))
