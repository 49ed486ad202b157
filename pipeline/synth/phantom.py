"""Paint one reconstruction of a scan: the normal chest, then each drawn abnormality, in painting order.

Order matters as in a real body: lung parenchyma changes (emphysema, mosaic
attenuation, ground glass) come before the vessels, which stay visible through
them; consolidation, collapse, nodules and fluid come after and cover them; the
mediastinum and bones are painted last because they bound the lungs.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth import abnormalities as ab
from pipeline.synth import mediastinum as med
from pipeline.synth.airways import LungTrees
from pipeline.synth.anatomy import (
    AIR,
    BLOOD,
    BREAST_X,
    CARTILAGE,
    CORTICAL_BONE,
    CSF,
    FAT,
    FLUID,
    LIVER,
    MUSCLE,
    SPLEEN,
    Chest,
)
from pipeline.synth.canvas import Canvas
from pipeline.synth.findings import Findings
from pipeline.synth.geometry import (
    Grid,
    Tubes,
    ellipsoid_depth,
    ellipsoid_fraction,
    ellipsoid_level,
    paint_tubes,
    sample_field,
    smooth_noise_field,
    soft_inside,
)


def _superellipse_depth(X, Y, rx, ry, n=2.4):
    """Approximate depth (mm) inside a superellipse of half-axes rx, ry (negative outside)."""
    level = (np.abs(X / rx) ** n + np.abs(Y / ry) ** n) ** (1.0 / n)
    return (1.0 - level) * np.sqrt(rx * ry)


def paint_body(c: Canvas, chest: Chest) -> None:
    X, Y, Z = c.coords
    p, h = chest.p, c.grid.h
    c.blend(soft_inside(_superellipse_depth(X, Y, p.body_rx, p.body_ry), h), FAT)
    skin = soft_inside(_superellipse_depth(X, Y, p.body_rx, p.body_ry) - 0.2, h) - soft_inside(
        _superellipse_depth(X, Y, p.body_rx, p.body_ry) - 2.2, h
    )
    c.blend(np.clip(skin, 0, 1), 30.0)
    # chest wall muscle: an inner superellipse, thicker at the back (paraspinal muscles)
    cx, cy, rx, ry = chest.cavity
    mrx = p.body_rx - p.fat
    mry = p.body_ry - 0.75 * p.fat
    c.blend(soft_inside(_superellipse_depth(X, Y - 0.15 * p.fat, mrx, mry), h), MUSCLE)
    if p.breast_mm > 0:
        paint_breasts(c, chest, mrx, mry)
    # the cavity: mediastinal fat by default; lungs and organs are painted into it
    depth = (1.0 - np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)) * np.sqrt(rx * ry)
    c.blend(soft_inside(depth, h), -90.0)


def paint_breasts(c: Canvas, chest: Chest, mrx: float, mry: float) -> None:
    """Breasts: fat with a glandular core, in front of the pectoral muscles, at the level of the lower heart."""
    p, h = chest.p, c.grid.h
    z = chest.dome_z("right") + 35.0
    for s in (-1.0, 1.0):
        x = s * BREAST_X * p.body_rx
        y_skin = -p.body_ry * (1.0 - BREAST_X**2.4) ** (1 / 2.4)  # the body's front at x
        radii = (0.3 * p.body_rx, p.breast_mm + 25.0, 0.3 * p.body_rx)
        center = (x, y_skin + 25.0, z)
        res = ellipsoid_fraction(c.grid, center, radii)
        if res is None:
            continue
        box, frac = res
        X, Y, Z = c.grid.sub_coords(box)
        # only in front of the muscle layer: the breast lies on the chest wall, it does not replace it
        front = soft_inside(-_superellipse_depth(X, Y - 0.15 * p.fat, mrx, mry), h)
        c.blend(frac * front, FAT, box=box)
        gland = soft_inside(ellipsoid_depth(X, Y, Z, center, tuple(0.55 * r for r in radii)), h)
        c.blend(gland * front, 20.0, box=box)


def paint_table(c: Canvas, chest: Chest) -> None:
    """The scanner couch under the supine patient: carbon-fibre shells round a foam core, curving up at the sides."""
    sub = c.sub((-1e4, chest.p.body_ry - 30.0, -1e4), (1e4, 1e4, 1e4))
    if sub is None:
        return
    c = sub
    X, Y, Z = c.coords
    h = c.grid.h
    top = chest.p.body_ry + 3.0 - 0.0006 * X * X  # the patient lies on it
    inside_x = soft_inside(210.0 - np.abs(X), h)
    for depth, thick, value in ((0.0, 3.0, 250.0), (3.0, 24.0, -900.0), (27.0, 3.0, 250.0)):
        band = soft_inside(Y - top - depth, h) * soft_inside(top + depth + thick - Y, h) * inside_x
        c.blend(np.broadcast_to(band, c.hu.shape), value)


def paint_abdomen(c: Canvas, chest: Chest) -> None:
    """Below the diaphragm: liver, spleen, stomach (gas cap over fluid) and fat, under a muscular diaphragm."""
    cx, cy, rx, ry = chest.cavity
    sub = c.sub((-1e4, -1e4, -1e4), (1e4, 1e4, max(chest.dome_z("right"), chest.dome_z("left")) + 2 * c.grid.h))
    if sub is None:
        return
    c = sub
    X, Y, Z = c.coords
    h = c.grid.h
    dz = np.where(X < 0, chest.diaphragm_z("right", X, Y), chest.diaphragm_z("left", X, Y))
    inside = (((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2) < 1.0
    below = soft_inside(dz - Z, h) * inside
    c.blend(below, FAT)
    liver_edge = 25.0 - 0.6 * (Y - cy) - 0.5 * (chest.dome_z("right") - Z)
    c.blend(soft_inside(dz - 5.0 - Z, h) * soft_inside(liver_edge - X, h), LIVER, where=inside)
    for center, radii, value in (
        ((0.62 * rx, cy + 0.45 * ry, chest.dome_z("left") - 45.0), (0.28 * rx, 0.35 * ry, 45.0), SPLEEN),
        ((0.35 * rx, cy - 0.25 * ry, chest.dome_z("left") - 35.0), (0.3 * rx, 0.38 * ry, 34.0), 20.0),
    ):
        level = ellipsoid_level(X, Y, Z, center, radii)
        c.blend(soft_inside((1.0 - level) * np.mean(radii), h) * soft_inside(dz - 4.0 - Z, h), value)
        if value == 20.0:  # gastric fundus gas rises to the top of the stomach
            gas = soft_inside((1.0 - level) * np.mean(radii) - 3.0, h) * soft_inside(Z - center[2] - 12.0, h)
            c.blend(gas * soft_inside(dz - 4.0 - Z, h), AIR)
    # the diaphragm muscle itself: a band under the lung bases
    band = soft_inside(dz - Z, h) - soft_inside(dz - 4.5 - Z, h)
    c.blend(np.clip(band, 0, 1) * inside, MUSCLE)


def paint_lungs(c: Canvas, chest: Chest, texture_field) -> None:
    X, Y, Z = c.coords
    cx, cy, rx, ry = chest.cavity
    for side in ("right", "left"):
        c.lung[side] = chest.lung_mask(side, X, Y, Z)
    lungs = c.lungs
    # parenchyma: patient mean, denser towards the dependent (posterior) side, fine texture
    gravity = 35.0 * np.clip((Y - (cy - ry)) / (2 * ry), 0.0, 1.0)
    tex = 14.0 * sample_field(texture_field, c.grid)
    c.hu[lungs] = np.broadcast_to(chest.p.lung_hu + gravity + tex, c.hu.shape)[lungs]
    paint_fissures(c, chest)


def paint_fissures(c: Canvas, chest: Chest, thickness: float = 1.0) -> None:
    """Interlobar fissures (two layers of visceral pleura, ~1 mm): faint lines on thick slices, crisp on thin ones."""
    h = c.grid.h
    full = c
    for side in ("right", "left"):
        mask = full.lung[side]
        if not mask.any():
            continue
        box = tuple(
            slice(
                int(np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0][0]),
                int(np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[0][-1]) + 1,
            )
            for a in range(3)
        )
        c = Canvas(full.grid.sub(box), full.hu[box], {side: mask[box]})
        X, Y, Z = c.coords
        oblique, horizontal = chest.fissure_z(side, X, Y)
        # vertical distance times the cosine of the surface's slope: the distance to the surface
        dist = np.abs(Z - oblique) / np.sqrt(1.0 + 1.1**2 + 0.5**2)
        if side == "right":  # the horizontal fissure separates upper and middle lobe, above the oblique one
            dist = np.minimum(dist, np.where(Z > oblique, np.abs(Z - horizontal) / 1.01, np.inf))
        frac = np.clip((0.5 * thickness - dist) / h + 0.5, 0.0, 1.0) * min(1.0, thickness / h)
        c.blend(frac, 0.0, where=c.lung[side])


def paint_trees(c: Canvas, chest: Chest, trees: LungTrees, findings: Findings) -> None:
    """Vessels (blood density) and bronchi (wall, then air lumen), restricted to the lungs."""
    g = c.grid
    rmin = 0.15 * min(g.spacing)  # thinner vessels would add < 0.1 of a voxel: invisible
    vessels = np.zeros(g.shape, np.float32)
    paint_tubes(g, trees.arteries.tubes + trees.veins.tubes, vessels, rmin)
    lumen_t, wall_t = ab.bronchial_tubes(trees.bronchi, findings)
    wall = paint_tubes(g, wall_t, np.zeros(g.shape, np.float32), rmin)
    lumen = paint_tubes(g, lumen_t, np.zeros(g.shape, np.float32), rmin)
    lungs = c.lungs
    c.blend(vessels, BLOOD, where=lungs)
    c.blend(wall, 30.0, where=lungs)
    c.blend(lumen, AIR, where=lungs)
    c.lumen = lumen * lungs


def paint_heart(c: Canvas, chest: Chest, findings: Findings, seed: int) -> None:
    hc, hr, rot = chest.heart
    g = c.grid
    sac = chest.heart_sac_radii()
    fluid = "Pericardial effusion" in findings.details
    for radii, value in ((sac, 25.0), (sac - 1.5, FLUID + 5.0 if fluid else FAT), (hr, BLOOD)):
        res = ellipsoid_fraction(g, hc, radii, rot)
        if res:
            c.blend(res[1], value, box=res[0])
    coronary, calcium = med.coronary_tubes(chest, findings, seed)
    paint = paint_tubes(g, coronary, np.zeros(g.shape, np.float32))
    c.blend(paint, BLOOD)
    if len(calcium):
        cal = paint_tubes(g, calcium, np.zeros(g.shape, np.float32))
        c.blend(cal, 1600.0)


def paint_great_vessels(c: Canvas, chest: Chest, findings: Findings, seed: int) -> None:
    g = c.grid
    line = chest.aorta_centerline
    aorta = Tubes.from_polyline(line, chest.aorta_radii(len(line)))
    occ = paint_tubes(g, aorta + chest.central_vessels(), np.zeros(g.shape, np.float32))
    c.blend(occ, BLOOD)
    plaques = med.aortic_plaques(chest, findings, seed)
    if len(plaques):
        c.blend(paint_tubes(g, plaques, np.zeros(g.shape, np.float32)), 1600.0)
    wall, lumen = chest.trachea_and_bronchi()
    c.blend(paint_tubes(g, wall, np.zeros(g.shape, np.float32)), 35.0)
    c.blend(paint_tubes(g, lumen, np.zeros(g.shape, np.float32)), AIR)
    eso = chest.esophagus()
    c.blend(paint_tubes(g, Tubes.from_polyline(eso, 8.0), np.zeros(g.shape, np.float32)), MUSCLE)
    c.blend(paint_tubes(g, Tubes.from_polyline(eso[: len(eso) // 2], 1.8), np.zeros(g.shape, np.float32)), AIR)


def paint_spine(c: Canvas, chest: Chest) -> None:
    p, h = chest.p, c.grid.h
    r, sy = p.spine_radius, chest.spine_y
    sub = c.sub((-45.0, sy - r - 2 * h, -1e4), (45.0, sy + r + 9.0 + 40.0, 1e4))
    if sub is None:
        return
    c = sub
    X, Y, Z = c.coords
    level = chest.vertebra_level(Z)
    body_depth = (1.0 - np.sqrt((X / (1.15 * r)) ** 2 + ((Y - sy) / r) ** 2)) * r
    in_body = soft_inside(body_depth, h)
    c.blend(in_body * (level >= 0.82), 80.0)  # intervertebral disc
    bone = in_body * (level < 0.82)
    c.blend(bone, CORTICAL_BONE)
    c.blend(soft_inside(body_depth - 2.0, h) * (level < 0.82) * (level > 0.02), p.marrow_hu)
    # posterior arch: a ring round the canal, spinous and transverse processes
    yc = sy + r + 9.0
    rr = np.sqrt(X * X + (Y - yc) ** 2)
    arch = level < 0.7
    c.blend(soft_inside(13.0 - rr, h) * arch, 0.55 * CORTICAL_BONE + 0.45 * p.marrow_hu)
    c.blend(soft_inside(7.5 - rr, h), CSF)
    spinous = soft_inside(4.0 - np.abs(X), h) * soft_inside(np.minimum(Y - yc - 8.0, yc + 30.0 - Y), h) * (level < 0.55)
    c.blend(spinous, 500.0)
    # transverse processes point back and out, towards the rib heads
    transverse = soft_inside(5.0 - np.abs(Y - yc - 0.35 * np.abs(X) + 4.0), h) * soft_inside(30.0 - np.abs(X), h)
    c.blend(transverse * (np.abs(X) > 10.0) * (level < 0.45), 500.0)


def paint_ribs_and_sternum(c: Canvas, chest: Chest) -> None:
    g = c.grid
    h = g.h
    bone, marrow, cart = Tubes.empty(), Tubes.empty(), Tubes.empty()
    for pts, cart_frac in chest.rib_polylines():
        n_bone = int(round(len(pts) * (1.0 - cart_frac)))
        bone += Tubes.from_polyline(pts[:n_bone], 5.0)
        marrow += Tubes.from_polyline(pts[:n_bone], 3.0)
        if cart_frac:
            cart += Tubes.from_polyline(pts[n_bone - 1 :], 4.5)
    c.blend(paint_tubes(g, cart, np.zeros(g.shape, np.float32)), CARTILAGE)
    c.blend(paint_tubes(g, bone, np.zeros(g.shape, np.float32)), CORTICAL_BONE)
    c.blend(paint_tubes(g, marrow, np.zeros(g.shape, np.float32)), chest.p.marrow_hu)
    # sternum: flat bone in front of the mediastinum, manubrium wider
    cx, cy, rx, ry = chest.cavity
    ys = cy - ry - 9.0
    top, bottom = chest.carina_z + 45.0, chest.dome_z("right") - 5.0
    # the box holds the soft edge too: depth is scaled by the 6.5 mm half-thickness, so in X it reaches 24 (1 + h/13)
    reach_x, reach_y = 24.0 * (1.0 + h / 6.5) + h, 6.5 + h
    sc = c.sub((-reach_x, ys - reach_y, bottom - 2 * h), (reach_x, ys + reach_y, top + 2 * h))
    if sc is not None:
        X, Y, Z = sc.coords
        wx = np.where(Z > chest.carina_z + 12.0, 24.0, 14.0)
        depth = (1.0 - np.sqrt((X / wx) ** 2 + ((Y - ys) / 6.5) ** 2)) * 6.5
        zin = soft_inside(np.minimum(Z - bottom, top - Z), h)
        sc.blend(soft_inside(depth, h) * zin, CORTICAL_BONE)
        sc.blend(soft_inside(depth - 1.8, h) * zin, chest.p.marrow_hu)
    # clavicles, from the manubrium out towards the shoulders
    clav = Tubes.empty()
    for s in (-1.0, 1.0):
        pts = np.array(
            [
                (s * 18.0, ys - 2.0, top - 4.0),
                (s * 60.0, ys - 6.0, top + 8.0),
                (s * 0.85 * chest.p.body_rx, cy - 0.2 * ry, top + 18.0),
            ]
        )
        clav += Tubes.from_polyline(pts, 6.5)
    c.blend(paint_tubes(g, clav, np.zeros(g.shape, np.float32)), 0.6 * CORTICAL_BONE + 0.4 * chest.p.marrow_hu)


def paint_scapulae(c: Canvas, chest: Chest) -> None:
    """Shoulder blades: thin bone plates on the back of the upper rib cage, narrowing to the inferior angle.

    With the arms raised (as in CT-RATE) they sit posterolaterally; they matter for simulated radiographs.
    """
    h = c.grid.h
    cx, cy, rx, ry = chest.cavity
    top, bottom = chest.apex_z - 5.0, chest.carina_z - 70.0
    sub = c.sub((-1e4, cy - 0.3 * ry, bottom - 2 * h), (1e4, 1e4, top + 2 * h))
    if sub is None:
        return
    c = sub
    X, Y, Z = c.coords
    t = np.clip((top - Z) / (top - bottom), 0.0, 1.0)  # 0 at the top of the blade, 1 at its inferior angle
    w = np.maximum(chest.width_profile(Z), 0.3)
    wy = 0.35 + 0.65 * w
    for s in (-1.0, 1.0):
        A, B = 0.53 * rx * w + 7.0, ry * wy + 7.0  # the rib line of rib_polylines()
        u, v = (X - s * 0.5 * rx) / A, (Y - cy) / B
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(s * u, v)  # 0 at the back of the hemithorax, pi/2 at its side
        depth = (rho - 1.0) * np.sqrt(A * B)  # mm outside the rib line
        centre, half = 0.2 * np.pi + 0.1 * np.pi * (1 - t), 0.16 * np.pi * (1.0 - 0.8 * t)
        plate = soft_inside(np.minimum(depth - 9.0, 14.0 - depth), h) * soft_inside(
            (half - np.abs(phi - centre)) * B, h
        )
        plate = plate * soft_inside(np.minimum(Z - bottom, top - Z), h)
        c.blend(plate, 0.6 * CORTICAL_BONE + 0.4 * chest.p.marrow_hu)


def render(chest: Chest, findings: Findings, trees: LungTrees, grid: Grid, scan_seed: int) -> Canvas:
    """The noise-free HU volume of ``chest`` with ``findings``, on ``grid`` (before the scanner model)."""
    cx, cy, rx, ry = chest.cavity
    texture = smooth_noise_field(
        np.random.default_rng(chest.p.seed_anatomy),
        4.0,
        (-rx - 8, cy - ry - 8, -8),
        (rx + 8, cy + ry + 8, chest.p.scan_length + 8),
        1.0,
    )
    c = Canvas.empty(grid, AIR)
    paint_table(c, chest)
    paint_body(c, chest)
    paint_abdomen(c, chest)
    paint_lungs(c, chest, texture)
    ab.parenchymal_before_vessels(c, chest, findings, scan_seed)
    paint_trees(c, chest, trees, findings)
    ab.parenchymal_after_vessels(c, chest, findings, scan_seed)
    ab.pleural_effusion(c, chest, findings)
    paint_heart(c, chest, findings, scan_seed)
    paint_great_vessels(c, chest, findings, scan_seed)
    med.mediastinal(c, chest, findings, scan_seed)
    paint_spine(c, chest)
    paint_ribs_and_sternum(c, chest)
    paint_scapulae(c, chest)
    med.medical_material(c, chest, findings)
    return c
