"""Views, source and detector in patient coordinates (nibabel RAS+, mm).

A view is a beam direction and the two directions of the image axes, all in patient space, so
a DRR does not depend on how the CT's voxel axes were stored:

======== ============================ ======================== ==================
view     beam (source -> detector)    image columns run to     image rows run to
======== ============================ ======================== ==================
pa       posterior -> anterior (+A)   patient's left (-R)      inferior (-S)
ap       anterior -> posterior (-A)   patient's left (-R)      inferior (-S)
lateral  right -> left (-R)           posterior (-A)           inferior (-S)
======== ============================ ======================== ==================

Frontal views follow the radiological display convention (the patient's right on the image
left, as if facing the patient); the lateral is a left lateral (left side on the detector)
shown with the patient facing the image left.

The isocentre is the centre of the volume's bounding box. Cone beam: the source sits
``sod_mm`` before the isocentre along the beam, the detector ``sid_mm`` from the source,
perpendicular to the central ray. Parallel beam: rays along the beam through each pixel.

The projector walks voxel planes perpendicular to the beam. That needs a volume whose voxel
axes are the patient axes (LPS after :func:`pipeline.ct_io.load_ct`); an oblique volume is
first resampled onto such a grid (:func:`axis_aligned`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from schemas.drr import GeometryConfig, View
from schemas.errors import PipelineError

# view -> (beam direction, image column direction, image row direction) as (world axis, sign).
VIEW_FRAMES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "pa": ((1, +1), (0, -1), (2, -1)),
    "ap": ((1, -1), (0, -1), (2, -1)),
    "lateral": ((0, -1), (1, -1), (2, -1)),
}


class GeometryError(PipelineError, ValueError):
    """The volume and the geometry do not fit together (e.g. the source would sit inside the volume)."""


@dataclass(frozen=True)
class ProjectionPlan:
    """Where every ray crosses every voxel plane, in voxel index units.

    ``axes`` = (column axis, plane axis, row axis) of the volume: the projector reads the volume
    permuted to that order. ``pos_u[n, p]`` is the fractional voxel index along the column axis
    where the ray of detector column ``p`` crosses plane ``n``; ``pos_v[n, q]`` the same along
    the row axis for detector row ``q`` (both separable because planes are parallel to the
    detector). ``ray_weight[q, p]`` is the ray's path length (mm) per plane.
    """

    axes: tuple[int, int, int]
    pos_u: np.ndarray  # (n_planes, W) float64
    pos_v: np.ndarray  # (n_planes, H) float64
    ray_weight: np.ndarray  # (H, W) float64
    beam_extent_mm: float  # volume thickness along the beam (mean-hu divides by it)
    parallel: bool = False  # every plane maps to the detector alike (parallel beam)


def _check_axis_aligned(affine: np.ndarray, shape, tol_voxels: float = 0.05) -> bool:
    """True when each voxel axis runs along its own patient axis (drift below ``tol_voxels``)."""
    direction = affine[:3, :3]
    spacing = np.linalg.norm(direction, axis=0)
    off = direction - np.diag(np.diag(direction))
    drift = np.abs(off) * (np.asarray(shape) - 1)[None, :]  # mm across the whole volume
    return bool(np.all(drift.sum(axis=1) <= tol_voxels * spacing.min()))


def unflipped(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with every axis that runs backwards in memory (a negative stride, as
    ``load_ct`` returns a flipped stored axis) turned forwards, and the affine that still maps
    each voxel to its place: a view, no copy. The projector follows the affine, so the DRR is
    the same; torch cannot hold negative strides."""
    m = np.eye(4)
    for axis, stride in enumerate(hu.strides):
        if stride < 0:
            hu = np.flip(hu, axis)
            m[axis, axis], m[axis, 3] = -1.0, hu.shape[axis] - 1  # new index i -> old index n - 1 - i
    return hu, affine @ m


def plan_projection(shape, affine: np.ndarray, view: View, geo: GeometryConfig) -> ProjectionPlan:
    """Ray/plane crossings for an axis-aligned volume (``affine`` diagonal) seen from ``view``."""
    if not _check_axis_aligned(affine, shape):
        raise GeometryError("the volume is oblique; resample it with axis_aligned() first")
    (b_ax, b_sign), (u_ax, u_sign), (v_ax, v_sign) = VIEW_FRAMES[view]
    diag = np.diag(affine[:3, :3]).astype(np.float64)
    origin = affine[:3, 3].astype(np.float64)
    shape = np.asarray(shape)
    centre = origin + diag * (shape - 1) / 2.0

    n_planes = int(shape[b_ax])
    plane_world = origin[b_ax] + diag[b_ax] * np.arange(n_planes)
    size, pixel = geo.size, geo.detector_mm / geo.size
    offsets = (np.arange(size) - (size - 1) / 2.0) * pixel  # pixel centres (mm from the detector centre)

    if geo.projection == "cone":
        source_b = centre[b_ax] - b_sign * geo.sod_mm
        depth = b_sign * (plane_world - source_b)  # distance of each plane from the source
        if depth.min() <= 0:
            raise GeometryError(
                f"the volume reaches {-depth.min():.0f} mm behind the source; increase sod_mm (now {geo.sod_mm})"
            )
        scale = depth / geo.sid_mm
        ray_len = np.sqrt(geo.sid_mm**2 + offsets[None, :] ** 2 + offsets[:, None] ** 2) / geo.sid_mm
    else:
        scale = np.ones(n_planes)
        ray_len = np.ones((size, size))

    def crossings(axis: int, sign: int) -> np.ndarray:
        world = centre[axis] + sign * offsets[None, :] * scale[:, None]
        return (world - origin[axis]) / diag[axis]

    return ProjectionPlan(
        axes=(u_ax, b_ax, v_ax),
        pos_u=crossings(u_ax, u_sign),
        pos_v=crossings(v_ax, v_sign),
        ray_weight=ray_len * abs(diag[b_ax]),
        beam_extent_mm=n_planes * abs(diag[b_ax]),
        parallel=geo.projection == "parallel",
    )


def axis_aligned(
    hu: torch.Tensor, affine: np.ndarray, fill: float = -1000.0, slab: int = 32
) -> tuple[torch.Tensor, np.ndarray]:
    """``(hu, affine)`` unchanged when the voxel axes run along the patient axes; otherwise the
    volume resampled (trilinear) onto an LPS grid of the same spacing that covers it, outside
    filled with ``fill`` (air). Works slab by slab to bound memory."""
    if _check_axis_aligned(affine, hu.shape):
        return hu, affine
    shape = np.asarray(hu.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    # LPS grid: axis 0 towards -x (left), axis 1 towards -y (posterior), axis 2 towards +z.
    new_diag = np.array([-spacing[0], -spacing[1], spacing[2]])
    new_origin = np.array([hi[0], hi[1], lo[2]])
    new_shape = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    new_affine = np.eye(4)
    new_affine[:3, :3] = np.diag(new_diag)
    new_affine[:3, 3] = new_origin
    to_old = np.linalg.inv(affine) @ new_affine  # new voxel index -> old voxel index

    out = torch.empty(tuple(int(s) for s in new_shape), dtype=hu.dtype, device=hu.device)
    src = (hu - fill)[None, None]  # zero padding then means `fill`
    m = torch.as_tensor(to_old, dtype=torch.float64, device=hu.device)
    jj, kk = torch.meshgrid(
        torch.arange(new_shape[1], dtype=torch.float64, device=hu.device),
        torch.arange(new_shape[2], dtype=torch.float64, device=hu.device),
        indexing="ij",
    )
    for a0 in range(0, int(new_shape[0]), slab):
        ii = torch.arange(a0, min(a0 + slab, int(new_shape[0])), dtype=torch.float64, device=hu.device)
        idx = torch.stack(torch.broadcast_tensors(ii[:, None, None], jj[None], kk[None]), dim=-1)
        old = idx @ m[:3, :3].T + m[:3, 3]  # (s, J, K, 3) old voxel indices
        norm = 2.0 * old / torch.as_tensor(shape - 1, dtype=torch.float64, device=hu.device).clamp(min=1) - 1.0
        grid = norm.flip(-1).to(hu.dtype)[None]  # grid_sample wants (x=W=k, y=H=j, z=D=i)
        sampled = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[a0 : a0 + len(ii)] = sampled[0, 0] + fill
    return out, new_affine
