"""Findings of the heart, great vessels and mediastinum, and medical devices.

The table of what each label paints is in :mod:`pipeline.synth.abnormalities`.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.abnormalities import finding_rng
from pipeline.synth.anatomy import AIR, SIDE_SIGN, Chest
from pipeline.synth.canvas import Canvas
from pipeline.synth.findings import Findings
from pipeline.synth.geometry import (
    Tubes,
    ellipsoid_fraction,
    ellipsoid_level,
    paint_tubes,
    smooth_polyline,
    soft_inside,
)


# ---- mediastinum and heart -----------------------------------------------------------------
def _heart_point(chest: Chest, unit: np.ndarray, lift: float) -> np.ndarray:
    hc, hr, rot = chest.heart
    u = unit / np.linalg.norm(unit)
    local = u * (hr + lift)
    cr, sr = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    return hc + np.array([cr * local[0] - sr * local[1], sr * local[0] + cr * local[1], local[2]])


_CORONARY_PATHS = {
    "LAD": [(-0.2, -0.95, 0.45), (0.3, -0.95, 0.1), (0.7, -0.65, -0.3), (0.95, -0.2, -0.35)],
    "RCA": [(-0.55, -0.7, 0.5), (-0.95, -0.2, 0.2), (-0.8, 0.45, -0.2), (-0.2, 0.8, -0.55)],
    "LCx": [(0.05, -0.55, 0.8), (0.6, -0.1, 0.75), (0.85, 0.45, 0.35), (0.45, 0.85, 0.0)],
}


def coronary_tubes(chest: Chest, f: Findings, seed: int) -> tuple[Tubes, Tubes]:
    """Coronary arteries in the epicardial fat, and calcified plaques along them when labelled."""
    tubes, calcium = Tubes.empty(), Tubes.empty()
    d = f.details.get("Coronary artery wall calcification")
    rng = finding_rng(seed, "Coronary artery wall calcification")
    n_plaques = {"mild": 2, "moderate": 4, "marked": 7}
    for name, path in _CORONARY_PATHS.items():
        pts = smooth_polyline(np.array([_heart_point(chest, np.array(p), 2.2) for p in path]), 4)
        tubes += Tubes.from_polyline(pts, 1.8)
        if d and name in d["vessels"]:
            for _ in range(n_plaques[d["severity"]]):
                i = int(rng.integers(0, max(len(pts) - 2, 1)))
                a = pts[i] + rng.normal(0, 0.8, 3)
                b = a + (pts[i + 1] - pts[i]) * rng.uniform(0.3, 0.8)
                calcium += Tubes(a[None], b[None], np.array([rng.uniform(2.0, 3.2)]), np.array([rng.uniform(2.0, 3.2)]))
    return tubes, calcium


def aortic_plaques(chest: Chest, f: Findings, seed: int) -> Tubes:
    """Calcified plaques on the aortic wall (arch and descending aorta)."""
    d = f.details.get("Arterial wall calcification")
    if not d:
        return Tubes.empty()
    rng = finding_rng(seed, "Arterial wall calcification")
    line = chest.aorta_centerline
    radii = chest.aorta_radii(len(line))
    start = int(0.3 * len(line))
    out = Tubes.empty()
    for _ in range(d["n_plaques"]):
        i = int(rng.integers(start, len(line) - 1))
        t = line[i + 1] - line[i]
        t = t / (np.linalg.norm(t) + 1e-9)
        n = np.cross(t, rng.standard_normal(3))
        n = n / (np.linalg.norm(n) + 1e-9)
        a = line[i] + n * (radii[i] - 1.0)
        arc = np.cross(t, n) * rng.uniform(4.0, 12.0)
        r = rng.uniform(1.6, 2.6)
        out += Tubes(a[None], (a + arc + t * rng.uniform(0, 6.0))[None], np.array([r]), np.array([r]))
    return out


LYMPH_STATIONS = (
    "right paratracheal",
    "subcarinal",
    "aortopulmonary window",
    "right hilar",
    "left hilar",
    "prevascular",
)


def station_center(chest: Chest, name: str) -> np.ndarray:
    ty, cz = chest.trachea_y, chest.carina_z
    H = chest.hila
    return {
        "right paratracheal": np.array([-17.0, ty - 4.0, cz + 25.0]),
        "subcarinal": np.array([3.0, ty + 14.0, cz - 22.0]),
        "aortopulmonary window": np.array([20.0, ty - 8.0, cz + 8.0]),
        "right hilar": H["right"] + (8.0, -10.0, -10.0),
        "left hilar": H["left"] + (-8.0, -10.0, -10.0),
        "prevascular": np.array([-2.0, ty - 58.0, cz + 30.0]),
    }[name]


def mediastinal(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    """Lymph nodes (normal ones always; enlarged when labelled) and a hiatal hernia."""
    rng = finding_rng(seed, "Lymphadenopathy")
    enlarged = {}
    d = f.details.get("Lymphadenopathy")
    if d:
        enlarged = dict(zip(d["stations"], d["short_axis_mm"]))
    for name in LYMPH_STATIONS:
        short = enlarged.get(name, rng.uniform(4.0, 7.0))
        center = station_center(chest, name) + rng.normal(0, 2.0, 3)
        res = ellipsoid_fraction(c.grid, center, (short / 2.0, short / 2.0, 0.7 * short))
        if res:
            c.blend(res[1], 42.0, box=res[0])
    hh = f.details.get("Hiatal hernia")
    if hh:
        R = hh["radius_mm"]
        # in the posterior mediastinum, in front of the descending aorta (which lies on the spine), behind the heart
        front_of_aorta = chest.spine_y - chest.p.spine_radius - 12.0 - chest.p.aorta_radius
        center = np.array([8.0, front_of_aorta - 0.85 * R - 2.0, chest.dome_z("left") + 0.5 * R])
        radii = (R, 0.85 * R, 0.9 * R)
        res = ellipsoid_fraction(c.grid, center, radii)
        if res:
            box, frac = res
            c.blend(frac, 40.0, box=box)  # gastric wall
            X, Y, Z = c.grid.sub_coords(box)
            inner_r = tuple(r - 4.0 for r in radii)
            inner = soft_inside((1.0 - ellipsoid_level(X, Y, Z, center, inner_r)) * np.mean(inner_r), c.grid.h)
            level_z = center[2] + (0.5 - hh["air_fraction"]) * 2.0 * radii[2] * 0.8
            gas = inner * soft_inside(Z - level_z, c.grid.h)
            c.blend(inner, 15.0, box=box)  # fluid and food residue below the air-fluid level
            c.blend(gas, AIR, box=box)


# ---- medical material ----------------------------------------------------------------------
def _skin_point(chest: Chest, x: float, z: float, depth: float) -> np.ndarray:
    """A point ``depth`` mm under the anterior skin at lateral position ``x``."""
    p = chest.p
    y = -p.body_ry * (1.0 - min(abs(x / p.body_rx), 0.99) ** 2.4) ** (1 / 2.4)
    return np.array([x, y + depth, z])


def medical_material(c: Canvas, chest: Chest, f: Findings) -> None:
    d = f.details.get("Medical material")
    if not d:
        return
    g = c.grid
    metal = c.metal_layer()
    s = SIDE_SIGN[d["side"]]
    wire = max(1.0, 0.4 * g.h)  # blooming: a thin wire shows at least about a voxel wide on a real scanner
    cz, ty = chest.carina_z, chest.trachea_y
    svc = np.array([-30.0, ty - 28.0, cz])
    hc, hr, rot = chest.heart
    rv_apex = _heart_point(chest, np.array([0.6, -0.8, -0.4]), -12.0)
    ra = _heart_point(chest, np.array([-0.9, -0.1, 0.2]), -10.0)
    plastic = Tubes.empty()
    for kind in d["kinds"]:
        if kind == "port":
            body = _skin_point(chest, s * 0.42 * chest.p.body_rx, cz + 25.0, 9.0)
            res = ellipsoid_fraction(g, body, (14.0, 6.0, 14.0))
            if res:
                np.maximum(metal[res[0]], res[1], out=metal[res[0]])
            plastic += Tubes.from_polyline(np.array([body, svc + (0, 0, 40.0), svc, ra]), 1.3)
        elif kind == "pacemaker":
            gen = _skin_point(chest, s * 0.5 * chest.p.body_rx, cz + 45.0, 8.0)
            res = ellipsoid_fraction(g, gen, (22.0, 5.0, 20.0))
            if res:
                np.maximum(metal[res[0]], res[1], out=metal[res[0]])
            leads = Tubes.from_polyline(np.array([gen, gen + (-s * 30, 25, 10), svc + (0, 0, 50.0), svc, ra]), wire)
            leads += Tubes.from_polyline(np.array([ra, rv_apex]), wire)
            paint_tubes(g, leads, metal)
        elif kind == "sternotomy wires":
            cx, cy, rx, ry = chest.cavity
            wires = Tubes.empty()
            for z in np.linspace(chest.carina_z + 30.0, chest.dome_z("right") + 10.0, 6):
                ring = [(13.0 * np.cos(t), cy - ry - 9.0 + 8.0 * np.sin(t), z) for t in np.linspace(0, 2 * np.pi, 9)]
                wires += Tubes.from_polyline(np.array(ring), wire)
            paint_tubes(g, wires, metal)
        elif kind == "surgical clips":
            clips = Tubes.empty()
            for k, name in enumerate(("subcarinal", "right hilar", "aortopulmonary window", "left hilar")):
                a = station_center(chest, name) + (0.0, 0.0, 3.0 * k)
                clips += Tubes(a[None], (a + (6.0, 2.0, 3.0))[None], np.array([wire]), np.array([wire]))
            paint_tubes(g, clips, metal)
        elif kind == "ECG electrodes":
            for x in (-0.35, 0.0, 0.45):
                for z in (cz + 20.0, chest.dome_z("left") + 10.0):
                    res = ellipsoid_fraction(g, _skin_point(chest, x * chest.p.body_rx, z, -1.5), (4.0, 1.5, 4.0))
                    if res:
                        np.maximum(metal[res[0]], res[1], out=metal[res[0]])
        elif kind == "central venous catheter":
            jug = np.array([-35.0, ty - 20.0, chest.p.scan_length + 10.0])
            plastic += Tubes.from_polyline(np.array([jug, svc + (0, 0, 40.0), svc, ra]), 1.4)
    if len(plastic):
        c.blend(paint_tubes(g, plastic, np.zeros(g.shape, np.float32)), 350.0)
