"""Paint one reconstruction of a scan: the normal chest, then each drawn abnormality, in painting order.

Order matters as in a real body: lung parenchyma changes (emphysema, mosaic
attenuation, ground glass) come before the vessels, which stay visible through
them; consolidation, collapse, nodules and fluid come after and cover them; the
mediastinum and bones are painted last because they bound the lungs.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth import abnormalities as ab
from pipeline.synth.airways import LungTrees
from pipeline.synth.anatomy import (AIR, BLOOD, CARTILAGE, CORTICAL_BONE, CSF, FAT, FLUID, LIVER, MUSCLE, SPLEEN,
                                    Chest)
from pipeline.synth.canvas import Canvas
from pipeline.synth.findings import Findings
from pipeline.synth.geometry import (Grid, Tubes, ellipsoid_fraction, ellipsoid_level, paint_tubes, sample_field,
                                     smooth_noise_field, soft_inside)


def _superellipse_depth(X, Y, rx, ry, n=2.4):
    """Approximate depth (mm) inside a superellipse of half-axes rx, ry (negative outside)."""
    level = (np.abs(X / rx) ** n + np.abs(Y / ry) ** n) ** (1.0 / n)
    return (1.0 - level) * np.sqrt(rx * ry)


def paint_body(c: Canvas, chest: Chest) -> None:
    X, Y, Z = c.coords
    p, h = chest.p, c.grid.h
    c.blend(soft_inside(_superellipse_depth(X, Y, p.body_rx, p.body_ry), h), FAT)
    skin = soft_inside(_superellipse_depth(X, Y, p.body_rx, p.body_ry) - 0.2, h) - soft_inside(
        _superellipse_depth(X, Y, p.body_rx, p.body_ry) - 2.2, h)
    c.blend(np.clip(skin, 0, 1), 30.0)
    # chest wall muscle: an inner superellipse, thicker at the back (paraspinal muscles)
    cx, cy, rx, ry = chest.cavity
    mrx = p.body_rx - p.fat
    mry = p.body_ry - 0.75 * p.fat
    c.blend(soft_inside(_superellipse_depth(X, Y - 0.15 * p.fat, mrx, mry), h), MUSCLE)
    # the cavity: mediastinal fat by default; lungs and organs are painted into it
    depth = (1.0 - np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)) * np.sqrt(rx * ry)
    c.blend(soft_inside(depth, h), -90.0)


def paint_abdomen(c: Canvas, chest: Chest) -> None:
    """Below the diaphragm: liver, spleen, stomach (gas cap over fluid) and fat, under a muscular diaphragm."""
    X, Y, Z = c.coords
    cx, cy, rx, ry = chest.cavity
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
    c.hu[lungs] = (chest.p.lung_hu + gravity + tex)[lungs] if np.ndim(gravity) == 3 else np.broadcast_to(
        chest.p.lung_hu + gravity + tex, c.hu.shape)[lungs]


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
    coronary, calcium = ab.coronary_tubes(chest, findings, seed)
    paint = paint_tubes(g, coronary, np.zeros(g.shape, np.float32))
    c.blend(paint, BLOOD)
    if len(calcium):
        cal = paint_tubes(g, calcium, np.zeros(g.shape, np.float32))
        c.blend(cal, 1200.0)


def paint_great_vessels(c: Canvas, chest: Chest, findings: Findings, seed: int) -> None:
    g = c.grid
    line = chest.aorta_centerline
    aorta = Tubes.from_polyline(line, chest.aorta_radii(len(line)))
    occ = paint_tubes(g, aorta + chest.central_vessels(), np.zeros(g.shape, np.float32))
    c.blend(occ, BLOOD)
    plaques = ab.aortic_plaques(chest, findings, seed)
    if len(plaques):
        c.blend(paint_tubes(g, plaques, np.zeros(g.shape, np.float32)), 1000.0)
    wall, lumen = chest.trachea_and_bronchi()
    c.blend(paint_tubes(g, wall, np.zeros(g.shape, np.float32)), 35.0)
    c.blend(paint_tubes(g, lumen, np.zeros(g.shape, np.float32)), AIR)
    eso = chest.esophagus()
    c.blend(paint_tubes(g, Tubes.from_polyline(eso, 8.0), np.zeros(g.shape, np.float32)), MUSCLE)
    c.blend(paint_tubes(g, Tubes.from_polyline(eso[: len(eso) // 2], 1.8), np.zeros(g.shape, np.float32)), AIR)


def paint_spine(c: Canvas, chest: Chest) -> None:
    X, Y, Z = c.coords
    p, h = chest.p, c.grid.h
    r, sy = p.spine_radius, chest.spine_y
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
    arch = (level < 0.7)
    c.blend(soft_inside(13.0 - rr, h) * arch, 0.55 * CORTICAL_BONE + 0.45 * p.marrow_hu)
    c.blend(soft_inside(7.5 - rr, h), CSF)
    spinous = soft_inside(4.0 - np.abs(X), h) * soft_inside(np.minimum(Y - yc - 8.0, yc + 30.0 - Y), h) * (level < 0.55)
    c.blend(spinous, 500.0)
    # transverse processes point back and out, towards the rib heads
    transverse = soft_inside(5.0 - np.abs(Y - yc - 0.35 * np.abs(X) + 4.0), h) * soft_inside(30.0 - np.abs(X), h)
    c.blend(transverse * (np.abs(X) > 10.0) * (level < 0.45), 500.0)


def paint_ribs_and_sternum(c: Canvas, chest: Chest) -> None:
    g = c.grid
    X, Y, Z = c.coords
    h = g.h
    bone, marrow, cart = Tubes.empty(), Tubes.empty(), Tubes.empty()
    for pts, cart_frac in chest.rib_polylines():
        n_bone = int(round(len(pts) * (1.0 - cart_frac)))
        bone += Tubes.from_polyline(pts[:n_bone], 5.0)
        marrow += Tubes.from_polyline(pts[:n_bone], 3.0)
        if cart_frac:
            cart += Tubes.from_polyline(pts[n_bone - 1:], 4.5)
    c.blend(paint_tubes(g, cart, np.zeros(g.shape, np.float32)), CARTILAGE)
    c.blend(paint_tubes(g, bone, np.zeros(g.shape, np.float32)), CORTICAL_BONE)
    c.blend(paint_tubes(g, marrow, np.zeros(g.shape, np.float32)), chest.p.marrow_hu)
    # sternum: flat bone in front of the mediastinum, manubrium wider
    cx, cy, rx, ry = chest.cavity
    ys = cy - ry - 9.0
    top, bottom = chest.carina_z + 45.0, chest.dome_z("right") - 5.0
    wx = np.where(Z > chest.carina_z + 12.0, 24.0, 14.0)
    depth = (1.0 - np.sqrt((X / wx) ** 2 + ((Y - ys) / 6.5) ** 2)) * 6.5
    zin = soft_inside(np.minimum(Z - bottom, top - Z), h)
    c.blend(soft_inside(depth, h) * zin, CORTICAL_BONE)
    c.blend(soft_inside(depth - 1.8, h) * zin, chest.p.marrow_hu)
    # clavicles, from the manubrium out towards the shoulders
    clav = Tubes.empty()
    for s in (-1.0, 1.0):
        pts = np.array([(s * 18.0, ys - 2.0, top - 4.0), (s * 60.0, ys - 6.0, top + 8.0),
                        (s * 0.85 * chest.p.body_rx, cy - 0.2 * ry, top + 18.0)])
        clav += Tubes.from_polyline(pts, 6.5)
    c.blend(paint_tubes(g, clav, np.zeros(g.shape, np.float32)), 0.6 * CORTICAL_BONE + 0.4 * chest.p.marrow_hu)


def render(chest: Chest, findings: Findings, trees: LungTrees, grid: Grid, scan_seed: int) -> Canvas:
    """The noise-free HU volume of ``chest`` with ``findings``, on ``grid`` (before the scanner model)."""
    texture = smooth_noise_field(np.random.default_rng(chest.p.seed_anatomy), 4.0, (-220, -220, -20),
                                 (220, 220, chest.p.scan_length + 20), 1.0)
    c = Canvas.empty(grid, AIR)
    paint_body(c, chest)
    paint_abdomen(c, chest)
    paint_lungs(c, chest, texture)
    ab.parenchymal_before_vessels(c, chest, findings, scan_seed)
    paint_trees(c, chest, trees, findings)
    ab.parenchymal_after_vessels(c, chest, findings, scan_seed)
    ab.pleural_effusion(c, chest, findings)
    paint_heart(c, chest, findings, scan_seed)
    paint_great_vessels(c, chest, findings, scan_seed)
    ab.mediastinal(c, chest, findings, scan_seed)
    paint_spine(c, chest)
    paint_ribs_and_sternum(c, chest)
    ab.medical_material(c, chest, findings)
    return c
