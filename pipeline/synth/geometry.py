"""Voxel grids in patient millimetres and the shape primitives the phantom is painted with.

The phantom lives in a patient frame in mm: ``X`` towards the patient's left,
``Y`` posterior, ``Z`` superior with 0 at the bottom of the scanned range (the
array axes of a CT-RATE volume, L, P, S). Every shape is an analytic function of
these coordinates, so two reconstructions of one scan (different grids) sample
the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel centres of one reconstruction: ``X[i] = origin[0] + i * spacing[0]`` and so on."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # patient-frame mm of voxel (0, 0, 0)

    def axis(self, a: int) -> np.ndarray:
        return (self.origin[a] + np.arange(self.shape[a]) * self.spacing[a]).astype(np.float32)

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays of shapes (nx,1,1), (1,ny,1), (1,1,nz)."""
        return (self.axis(0)[:, None, None], self.axis(1)[None, :, None], self.axis(2)[None, None, :])

    @property
    def h(self) -> float:
        """Typical voxel size (mm): the width over which painted edges are smoothed (partial volume)."""
        return float(np.mean(self.spacing))

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        """Slices of the voxels whose centres lie in the mm box [lo, hi]; None when the box misses the grid."""
        out: list[slice] = []
        for a in range(3):
            i0 = int(np.ceil((lo[a] - self.origin[a]) / self.spacing[a]))
            i1 = int(np.floor((hi[a] - self.origin[a]) / self.spacing[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def sub(self, box: tuple[slice, ...]) -> Grid:
        """The grid of the voxels in ``box`` (three slices with unit step)."""
        (i0, i1, _), (j0, j1, _), (k0, k1, _) = (sl.indices(n) for sl, n in zip(box, self.shape))
        (ox, oy, oz), (sx, sy, sz) = self.origin, self.spacing
        return Grid((i1 - i0, j1 - j0, k1 - k0), self.spacing, (ox + i0 * sx, oy + j0 * sy, oz + k0 * sz))

    def sub_coords(self, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, z = (self.axis(a)[box[a]] for a in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def soft_inside(signed_depth: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre lies ``signed_depth`` mm inside a surface."""
    return np.clip(signed_depth / h + 0.5, 0.0, 1.0).astype(np.float32)


def _ellipsoid_local(X, Y, Z, center, rot_z_deg: float):
    dx, dy, dz = X - center[0], Y - center[1], Z - center[2]
    if rot_z_deg:
        c, s = np.cos(np.radians(rot_z_deg)), np.sin(np.radians(rot_z_deg))
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return dx, dy, dz


def ellipsoid_level(X, Y, Z, center, radii, rot_z_deg: float = 0.0) -> np.ndarray:
    """Normalised radius of an (optionally z-rotated) ellipsoid: < 1 inside, 1 on the surface."""
    dx, dy, dz = _ellipsoid_local(X, Y, Z, center, rot_z_deg)
    return np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)


def ellipsoid_depth(X, Y, Z, center, radii, rot_z_deg: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm) inside the ellipsoid's surface, (1 - level) / |grad level|.

    Exact for a sphere; for a flat or long ellipsoid it follows the short axis, so a thin plate keeps its
    partial volume on thick slices instead of vanishing between them.
    """
    dx, dy, dz = _ellipsoid_local(X, Y, Z, center, rot_z_deg)
    ux, uy, uz = dx / radii[0], dy / radii[1], dz / radii[2]
    level = np.sqrt(ux * ux + uy * uy + uz * uz)
    grad = np.sqrt((ux / radii[0]) ** 2 + (uy / radii[1]) ** 2 + (uz / radii[2]) ** 2)
    return (1.0 - level) * level / np.maximum(grad, 1e-6)


def ellipsoid_fraction(grid: Grid, center, radii, rot_z_deg: float = 0.0) -> tuple[tuple, np.ndarray] | None:
    """(box, fraction) of an ellipsoid painted into its bounding box only (cheap for small shapes)."""
    r = float(max(radii)) + grid.h
    c = np.asarray(center, dtype=np.float64)
    box = grid.index_box(c - r, c + r)
    if box is None:
        return None
    X, Y, Z = grid.sub_coords(box)
    return box, soft_inside(ellipsoid_depth(X, Y, Z, center, radii, rot_z_deg), grid.h)


def smooth_polyline(points: np.ndarray, n_per_segment: int = 4) -> np.ndarray:
    """Catmull-Rom spline through ``points`` (K, 3), sampled ``n_per_segment`` times per span."""
    p = np.asarray(points, dtype=np.float64)
    padded = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    t = np.linspace(0.0, 1.0, n_per_segment, endpoint=False)[:, None]
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(p[-1:])
    return np.vstack(out)


@dataclass
class Tubes:
    """Straight segments with linearly varying radius: ``a``, ``b`` (N, 3) mm, ``ra``, ``rb`` (N,) mm."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray

    @classmethod
    def empty(cls) -> Tubes:
        z = np.zeros((0, 3))
        return cls(z, z.copy(), np.zeros(0), np.zeros(0))

    @classmethod
    def from_polyline(cls, points, radii) -> Tubes:
        p = np.asarray(points, dtype=np.float64)
        r = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(p),))
        return cls(p[:-1], p[1:], r[:-1].copy(), r[1:].copy())

    def __add__(self, other: Tubes) -> Tubes:
        return Tubes(
            np.vstack([self.a, other.a]),
            np.vstack([self.b, other.b]),
            np.concatenate([self.ra, other.ra]),
            np.concatenate([self.rb, other.rb]),
        )

    def scaled_radii(self, factor) -> Tubes:
        return Tubes(self.a, self.b, self.ra * factor, self.rb * factor)

    def __len__(self) -> int:
        return len(self.a)


def paint_tubes(grid: Grid, tubes: Tubes, out: np.ndarray, min_radius: float = 0.0) -> np.ndarray:
    """Max-accumulate the partial-volume fraction of every tube into ``out`` (float32, grid shape).

    A tube thinner than a voxel fills it partly (fraction scaled by diameter /
    voxel size), as a thin vessel does in a real CT. Thick tubes are evaluated
    segment by segment inside their bounding boxes; the many thin ones (vessel
    trees have thousands) are sampled as points along their axes and splatted
    into the few voxels around each point, all at once.
    """
    keep = np.maximum(tubes.ra, tubes.rb) >= min_radius
    thin = keep & (np.maximum(tubes.ra, tubes.rb) < 1.2 * grid.h)
    _splat_thin(grid, Tubes(tubes.a[thin], tubes.b[thin], tubes.ra[thin], tubes.rb[thin]), out)
    thick = keep & ~thin
    _paint_thick(grid, Tubes(tubes.a[thick], tubes.b[thick], tubes.ra[thick], tubes.rb[thick]), out)
    return out


def _fraction(d, r, h):
    return np.clip((r - d) / h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * r / h)


def _paint_thick(grid: Grid, tubes: Tubes, out: np.ndarray) -> None:
    h = grid.h
    for a, b, ra, rb in zip(tubes.a, tubes.b, tubes.ra, tubes.rb):
        pad = max(ra, rb) + h
        box = grid.index_box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
        if box is None:
            continue
        X, Y, Z = grid.sub_coords(box)
        ab = b - a
        L2 = float(ab @ ab) or 1e-9
        t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / L2, 0.0, 1.0)
        d = np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)
        view = out[box]
        np.maximum(view, _fraction(d, ra + t * (rb - ra), h).astype(np.float32), out=view)


def _splat_thin(grid: Grid, tubes: Tubes, out: np.ndarray) -> None:
    if not len(tubes):
        return
    h = grid.h
    sp = np.asarray(grid.spacing)
    org = np.asarray(grid.origin)
    step = 0.5 * float(sp.min())
    length = np.linalg.norm(tubes.b - tubes.a, axis=1)
    n = np.maximum(np.ceil(length / step).astype(np.int64), 1) + 1
    seg = np.repeat(np.arange(len(tubes)), n)
    first = np.cumsum(n) - n
    t = (np.arange(len(seg)) - first[seg]) / (n[seg] - 1)
    pts = tubes.a[seg] + t[:, None] * (tubes.b[seg] - tubes.a[seg])
    r = tubes.ra[seg] + t * (tubes.rb[seg] - tubes.ra[seg])
    centre = np.rint((pts - org) / sp).astype(np.int64)
    reach = np.ceil((r[:, None] + 0.5 * h) / sp).astype(np.int64)  # voxels per axis a point can touch
    flat_out = out.reshape(-1)
    keys = reach[:, 0] * 10000 + reach[:, 1] * 100 + reach[:, 2]
    for key in np.unique(keys):
        sel = keys == key
        rx, ry, rz = reach[sel][0]
        c, p, rr = centre[sel], pts[sel], r[sel]
        # separable offsets: index and squared distance per axis, combined by broadcasting (P, nx, ny, nz)
        ix = c[:, 0:1] + np.arange(-rx, rx + 1)
        iy = c[:, 1:2] + np.arange(-ry, ry + 1)
        iz = c[:, 2:3] + np.arange(-rz, rz + 1)
        dx2 = (org[0] + ix * sp[0] - p[:, 0:1]) ** 2
        dy2 = (org[1] + iy * sp[1] - p[:, 1:2]) ** 2
        dz2 = (org[2] + iz * sp[2] - p[:, 2:3]) ** 2
        d = np.sqrt(dx2[:, :, None, None] + dy2[:, None, :, None] + dz2[:, None, None, :])
        frac = _fraction(d, rr[:, None, None, None], h)
        ok = (
            (frac > 0)
            & ((ix >= 0) & (ix < grid.shape[0]))[:, :, None, None]
            & ((iy >= 0) & (iy < grid.shape[1]))[:, None, :, None]
            & ((iz >= 0) & (iz < grid.shape[2]))[:, None, None, :]
        )
        P = np.nonzero(ok)
        lin = (ix[P[0], P[1]] * grid.shape[1] + iy[P[0], P[2]]) * grid.shape[2] + iz[P[0], P[3]]
        np.maximum.at(flat_out, lin, frac[ok].astype(np.float32))


def smooth_noise_field(rng: np.random.Generator, cell_mm: float, extent_lo, extent_hi, smooth_cells: float = 1.0):
    """A random field on a coarse mm lattice (unit variance after smoothing) to sample with :func:`sample_field`.

    Drawn once per patient on a fixed lattice, it gives the same texture to every
    reconstruction of the patient, whatever their voxel grids.
    """
    from scipy.ndimage import gaussian_filter

    lo = np.asarray(extent_lo, dtype=np.float64)
    n = np.ceil((np.asarray(extent_hi) - lo) / cell_mm).astype(int) + 2
    field = gaussian_filter(rng.standard_normal(tuple(n), dtype=np.float32), smooth_cells, mode="wrap")
    field /= max(float(field.std()), 1e-6)
    return field, lo, cell_mm


def sample_field(field_spec, grid: Grid, box=None) -> np.ndarray:
    """Trilinear sample of a :func:`smooth_noise_field` at the grid's voxel centres (or a box of them).

    The voxel centres form an outer product of three axes, so trilinear
    interpolation is three 1-D linear interpolations, one axis at a time
    (gathers, no BLAS: worker processes stay single-threaded).
    """
    field, lo, cell = field_spec
    out = field
    for a in range(3):
        ax = grid.axis(a) if box is None else grid.axis(a)[box[a]]
        n = field.shape[a]
        pos = np.clip((ax - lo[a]) / cell, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
        shape = [1, 1, 1]
        shape[a] = len(pos)
        frac = (pos - i0).astype(np.float32).reshape(shape)
        out = np.take(out, i0, axis=a) * (1.0 - frac) + np.take(out, i0 + 1, axis=a) * frac
    return np.ascontiguousarray(out, dtype=np.float32)
