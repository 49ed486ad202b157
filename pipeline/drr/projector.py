"""Line integrals through a voxel volume: Joseph's method, made separable.

Joseph's method samples each ray once per voxel plane perpendicular to its main direction
(bilinear interpolation inside the plane) and weighs every sample by the ray's path length
per plane. Here every plane is parallel to the detector (the projector works on volumes whose
voxel axes are the patient axes, see ``geometry``), so a ray's crossing with plane ``n`` is
``(pos_u[n, column], pos_v[n, row])``: the bilinear resample of a plane onto the detector
grid is separable, a 1-D interpolation along each in-plane axis.

For a slab of B planes this becomes, with P_n the plane (U x V) and Wu_n, Wv_n the sparse
1-D interpolation matrices (two non-zeros per row):

    image += sum_n  Wv_n  (Wu_n P_n)^T

1. ``Wu_n P_n``: a row gather plus ``lerp`` (``index_select`` of two plane rows per detector
   column): contiguous copies, no sparse bookkeeping.
2. the sum over the slab's planes of ``Wv_n (.)``: ONE sparse (CSR) x dense product, whose
   sparse operand stacks the B matrices side by side (2B non-zeros per detector row). This
   sums the planes inside the matrix product, so the (B, H, W) stack of resampled planes
   never exists in memory.

All buffers are allocated once per call and reused by every slab (fresh allocations page-fault
and cost more than the arithmetic); values outside the volume read as zero (air) through one
zero row padded at each end of both in-plane axes. Everything accumulates in float32. The same
code runs on CUDA (index_select, lerp and CSR x dense are native there).

Parallel beam: every plane maps to the detector alike, and interpolation is linear, so the
planes are summed first (one streaming pass over the volume, transform applied slab by slab)
and the single summed plane is resampled once.

Memory: the volume plus about 4 x B x U x V floats of slab buffers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from pipeline.drr.geometry import ProjectionPlan

VoxelTransform = Callable[[torch.Tensor], torch.Tensor]


def _pad_index(pos: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower neighbour index and weight of the upper neighbour, in coordinates padded by one
    zero row at each end (real index i -> i + 1). Positions beyond the padding read zeros."""
    p = pos.clamp(-1.0, float(n)) + 1.0
    lower = p.floor().clamp(max=float(n))
    return lower.long(), (p - lower).to(torch.float32)


def project(
    volume: torch.Tensor,
    plan: ProjectionPlan,
    transform: VoxelTransform | None = None,
    slab: int = 16,
) -> torch.Tensor:
    """Line integrals (H, W) float32 of ``transform(volume)`` along the rays of ``plan``.

    ``volume`` (float32, any device) is not modified: each slab is copied into a buffer and
    ``transform`` (e.g. HU -> mu, in place) runs on the copy while it is in cache.
    """
    vol = volume.permute(*plan.axes)  # (U, N, V): column axis, plane axis, row axis (a view)
    if vol.stride(2) > vol.stride(0):
        # Rows are gathered along U and copied along V, so V should be the axis nearer in
        # memory; the roles of the detector's columns and rows are symmetric, so exchange them
        # (a Fortran-ordered volume, as NIfTI stores it, reads in long runs instead of a gather).
        swapped = replace(plan, pos_u=plan.pos_v, pos_v=plan.pos_u, ray_weight=plan.ray_weight.T)
        return _project_uv(vol.permute(2, 1, 0), swapped, transform, slab).T.contiguous()
    return _project_uv(vol, plan, transform, slab)


def _project_uv(vol: torch.Tensor, plan: ProjectionPlan, transform: VoxelTransform | None, slab: int) -> torch.Tensor:
    if plan.parallel:
        summed = _sum_planes(vol, transform, slab)
        one_plane = replace(plan, pos_u=plan.pos_u[:1], pos_v=plan.pos_v[:1], parallel=False)
        return _project_planes(summed, one_plane, None, 1)
    return _project_planes(vol, plan, transform, slab)


def _sum_planes(vol: torch.Tensor, transform: VoxelTransform | None, slab: int) -> torch.Tensor:
    """(U, 1, V): the sum over the plane axis of ``transform(vol)``, slab by slab."""
    n_u, n_planes, n_v = vol.shape
    b_max = max(1, min(slab, n_planes))
    buf = torch.empty(n_u, b_max, n_v, device=vol.device)
    total = torch.zeros(n_u, 1, n_v, device=vol.device)
    for n0 in range(0, n_planes, b_max):
        b = min(b_max, n_planes - n0)
        part = buf[:, :b]
        part.copy_(vol[:, n0 : n0 + b])
        if transform is not None:
            transform(part)
        total += part.sum(dim=1, keepdim=True)
    return total


def _project_planes(
    vol: torch.Tensor, plan: ProjectionPlan, transform: VoxelTransform | None, slab: int
) -> torch.Tensor:
    """The separable Joseph projector over the planes of ``vol`` (U, N, V)."""
    dev = vol.device
    n_u, n_planes, n_v = vol.shape
    height, width = plan.ray_weight.shape
    b_max = max(1, min(slab, n_planes))

    lower_u, frac_u = (t.to(dev) for t in _pad_index(torch.as_tensor(plan.pos_u), n_u))  # (N, W)
    lower_v, frac_v = (t.to(dev) for t in _pad_index(torch.as_tensor(plan.pos_v), n_v))  # (N, H)

    planes = torch.zeros(n_u + 2, b_max, n_v, device=dev)  # rows 0 and n_u + 1 stay zero
    lo_rows = torch.empty(b_max * width, n_v, device=dev)
    hi_rows = torch.empty(b_max * width, n_v, device=dev)
    resampled = torch.zeros(b_max, n_v + 2, width, device=dev)  # rows 0 and n_v + 1 stay zero
    image = torch.zeros(height, width, device=dev)
    slab_pos = torch.arange(b_max, device=dev)

    for n0 in range(0, n_planes, b_max):
        b = min(b_max, n_planes - n0)
        inner = planes[1 : n_u + 1, :b]
        inner.copy_(vol[:, n0 : n0 + b])
        if transform is not None:
            transform(inner)

        # 1. along the column axis: rows (plane, detector column) of the flattened slab.
        flat = planes.view((n_u + 2) * b_max, n_v)
        rows = (lower_u[n0 : n0 + b] * b_max + slab_pos[:b, None]).reshape(-1)
        lo, hi = lo_rows[: b * width], hi_rows[: b * width]
        torch.index_select(flat, 0, rows, out=lo)
        torch.index_select(flat, 0, rows + b_max, out=hi)
        lo.lerp_(hi, frac_u[n0 : n0 + b].reshape(-1, 1))
        resampled[:b, 1 : n_v + 1].copy_(lo.view(b, width, n_v).transpose(1, 2))

        # 2. along the row axis, summed over the slab's planes: one CSR x dense product.
        cols = lower_v[n0 : n0 + b].T + (slab_pos[:b] * (n_v + 2))[None, :]  # (H, b)
        cols = torch.stack([cols, cols + 1], dim=-1).reshape(height, 2 * b)
        w_hi = frac_v[n0 : n0 + b].T
        vals = torch.stack([1.0 - w_hi, w_hi], dim=-1).reshape(height, 2 * b)
        crow = torch.arange(0, height * 2 * b + 1, 2 * b, device=dev)
        with warnings.catch_warnings():  # CSR x dense (MKL, cuSPARSE) is solid here; torch still calls it beta
            warnings.simplefilter("ignore")
            weights = torch.sparse_csr_tensor(
                crow, cols.reshape(-1), vals.reshape(-1), size=(height, b * (n_v + 2)), check_invariants=False
            )
        image += torch.sparse.mm(weights, resampled[:b].view(b * (n_v + 2), width))

    return image.mul_(torch.as_tensor(plan.ray_weight, dtype=torch.float32, device=dev))
