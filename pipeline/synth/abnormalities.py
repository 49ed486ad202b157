"""How each of the 18 labels changes the chest, one painter per finding.

Every painter reads the finding's details (drawn in :mod:`pipeline.synth.findings`)
and draws its random placement from a generator seeded by the scan and the
label, never from the grid, so all reconstructions of a scan show the same
lesion in the same place. Densities are those of unenhanced chest CT:

=====================================  ===========================================================
label                                  what is painted
=====================================  ===========================================================
Medical material                       port, pacemaker and leads, sternotomy wires, clips, ECG
                                       electrodes: metal (> 2000 HU after the kernel)
Arterial wall calcification            calcified plaques (~1600 HU before partial volume) in the aortic wall
Cardiomegaly                           heart enlarged 1.22-1.42x (anatomy: the lungs give way)
Pericardial effusion                   6-12 mm of fluid (~13 HU) between heart and pericardium
Coronary artery wall calcification     calcium along the LAD / LCx / RCA in the epicardial fat
Hiatal hernia                          gas- and fluid-filled stomach sac behind the heart
Lymphadenopathy                        mediastinal / hilar nodes of 11-22 mm short axis
Emphysema                              low-attenuation areas (< -950 HU), by type and zone
Atelectasis                            plate-like band or collapsed lobe (~55 HU), raised hemidiaphragm
Lung nodule                            1-4 solid (or calcified) round nodules, 4-22 mm
Lung opacity                           ground-glass patches (~ -560 HU), vessels visible through them
Pulmonary fibrotic sequela             fibrotic bands reaching the pleura
Pleural effusion                       fluid (~0-15 HU) layering in the posterior costophrenic recess
Mosaic attenuation pattern             geographic lobular areas of lower and higher density
Peribronchial thickening               bronchial walls 1.6-2.2x thicker
Consolidation                          dense segment (~45 HU) with air bronchograms
Bronchiectasis                         dilated, non-tapering bronchi (lumen > artery), thick walls
Interlobular septal thickening         subpleural polygonal network of thickened septa
=====================================  ===========================================================

The heart, great vessel, mediastinal and device findings are painted by
:mod:`pipeline.synth.mediastinum`.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.airways import LOBE_INDEX, BranchSet
from pipeline.synth.anatomy import FLUID, SIDE_SIGN, Chest
from pipeline.synth.canvas import Canvas
from pipeline.synth.findings import Findings, sides_of
from pipeline.synth.geometry import (
    Tubes,
    ellipsoid_fraction,
    ellipsoid_level,
    sample_field,
    smooth_noise_field,
    soft_inside,
)
from schemas.labels import CT_RATE_LABELS


def finding_rng(seed: int, label: str, k: int = 0) -> np.random.Generator:
    """The generator of one finding's placement: keyed by the scan's lesion seed and the label, not the grid."""
    return np.random.default_rng([seed, CT_RATE_LABELS.index(label), k])


def _field(chest: Chest, rng: np.random.Generator, cell: float, smooth: float = 1.0):
    cx, cy, rx, ry = chest.cavity
    return smooth_noise_field(
        rng, cell, (-rx - 10, cy - ry - 10, -10), (rx + 10, cy + ry + 10, chest.p.scan_length + 10), smooth
    )


def _upper_weight(chest: Chest, Z):
    dome = chest.dome_z("right")
    return np.clip((Z - dome) / (chest.apex_z - dome), 0.0, 1.0)


def _pick_fraction(score: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of ``mask`` voxels with the highest ``score``."""
    if not mask.any():
        return mask
    thr = np.quantile(score[mask], 1.0 - fraction)
    return mask & (score >= thr)


def _side_mask(c: Canvas, side: str) -> np.ndarray:
    out = np.zeros(c.grid.shape, bool)
    for s in sides_of(side):
        out |= c.lung[s]
    return out


# ---- airways -------------------------------------------------------------------------------
def bronchial_tubes(bronchi: BranchSet, findings: Findings) -> tuple[Tubes, Tubes]:
    """(lumen, outer wall) tubes of the bronchi with bronchiectasis and peribronchial thickening applied."""
    t = bronchi.tubes
    lumen_ra, lumen_rb = t.ra.copy(), t.rb.copy()
    wall = np.full(len(t), 1.22)
    be = findings.details.get("Bronchiectasis")
    if be:
        sides = [0 if s == "right" else 1 for s in sides_of(be["side"])]
        hit = np.isin(bronchi.side, sides) & (bronchi.lobe != LOBE_INDEX["upper"]) & (bronchi.generation >= 1)
        grow = be["dilation"] * (1.0 + 0.12 * bronchi.generation)  # no tapering towards the periphery
        if be["kind"] == "varicose":
            grow = grow * np.where(np.arange(len(t)) % 2 == 0, 1.25, 0.85)
        lumen_ra = np.where(hit, t.ra * grow, lumen_ra)
        lumen_rb = np.where(hit, t.rb * grow * 1.05, lumen_rb)
        wall = np.where(hit, 1.35, wall)
    pb = findings.details.get("Peribronchial thickening")
    if pb:
        sides = [0 if s == "right" else 1 for s in sides_of(pb["side"])]
        wall = np.where(np.isin(bronchi.side, sides), 1.0 + (wall - 1.0) * pb["wall_factor"] * 1.6, wall)
    lumen = Tubes(t.a, t.b, lumen_ra, lumen_rb)
    outer = Tubes(t.a, t.b, lumen_ra * wall + 0.4, lumen_rb * wall + 0.4)
    return lumen, outer


# ---- parenchyma ----------------------------------------------------------------------------
def emphysema(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    d = f.details["Emphysema"]
    rng = finding_rng(seed, "Emphysema")
    X, Y, Z = c.coords
    lungs = c.lungs
    # destroyed lung in blobs of ~1-2 cm (clusters of affected lobules), visible even on thick slices
    field = sample_field(_field(chest, rng, 6.0, 1.2), c.grid)
    up = np.broadcast_to(_upper_weight(chest, Z), c.hu.shape)
    if d["kind"] == "centrilobular":
        score = field + 1.6 * up
    elif d["kind"] == "paraseptal":
        from scipy.ndimage import distance_transform_edt

        edge = distance_transform_edt(lungs, sampling=c.grid.spacing)
        score = field + 1.5 * (edge < 20.0) + 0.8 * up  # subpleural bullae, upper zones
    else:  # panlobular: diffuse, lower zones
        score = 0.6 * field + 1.2 * (1.0 - up)
        c.hu[lungs] -= 35.0
    holes = _pick_fraction(score, lungs, d["fraction"])
    c.hu[holes] = -1005.0 + 6.0 * field[holes]


def mosaic_attenuation(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    d = f.details["Mosaic attenuation pattern"]
    field = sample_field(_field(chest, finding_rng(seed, "Mosaic attenuation pattern"), 6.0, 2.0), c.grid)
    lungs = c.lungs
    # geographic lobular areas: low density (air trapping / hypoperfusion) next to denser ones
    c.hu[lungs] += (0.5 * d["contrast_hu"] * np.tanh(3.0 * field))[lungs]


def lung_opacity(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    d = f.details["Lung opacity"]
    rng = finding_rng(seed, "Lung opacity")
    field = _field(chest, rng, 5.0, 1.5)
    for side, lobe in zip(sides_of(d["side"]), d["lobes"]):
        for _k in range(d["n_patches"]):
            center = chest.random_lung_point(rng, side, lobe, margin=5.0)
            r = rng.uniform(18.0, 40.0)
            res = ellipsoid_fraction(c.grid, center, (r, r * rng.uniform(0.7, 1.0), r * rng.uniform(0.8, 1.3)))
            if res is None:
                continue
            box, _ = res
            X, Y, Z = c.grid.sub_coords(box)
            level = ellipsoid_level(X, Y, Z, center, (r, r, r))
            frac = soft_inside((1.0 - level) * r + 6.0 * sample_field(field, c.grid, box), 8.0)
            c.blend(frac, -560.0, box=box, where=c.lung[side][box])


def septal_thickening(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    d = f.details["Interlobular septal thickening"]
    rng = finding_rng(seed, "Interlobular septal thickening")
    X, Y, Z = c.coords
    region = _side_mask(c, d["side"]) & (distance_transform_edt(c.lungs, sampling=c.grid.spacing) < 22.0)
    if d["zone"] == "basal":
        region &= np.broadcast_to(_upper_weight(chest, Z) < 0.5, region.shape)
    idx = np.nonzero(region)
    if not idx[0].size:
        return
    pts = np.column_stack([c.grid.axis(a)[idx[a]] for a in range(3)])
    # secondary pulmonary lobules ~12 mm: their borders (equidistant from two lobule centres) are the septa
    cx, cy, rx, ry = chest.cavity
    lo, hi = np.array([-rx, cy - ry, 0.0]), np.array([rx, cy + ry, chest.p.scan_length])
    n_seeds = int(np.prod((hi - lo) / 12.0))
    centres = lo + rng.random((n_seeds, 3)) * (hi - lo)
    dist, _ = cKDTree(centres).query(pts, k=2)
    gap = (dist[:, 1] - dist[:, 0]) / 2.0
    h = c.grid.h
    frac = np.clip((1.2 - gap) / h + 0.5, 0.0, 1.0) * min(1.0, 2.4 / h)
    vals = c.hu[idx]
    c.hu[idx] = vals + frac * (0.0 - vals)


def consolidation(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    d = f.details["Consolidation"]
    rng = finding_rng(seed, "Consolidation")
    center = chest.random_lung_point(rng, d["side"], d["lobe"], margin=0.0)
    field = _field(chest, rng, 6.0, 1.5)
    r = d["radius_mm"]
    res = ellipsoid_fraction(c.grid, center, (r, r, 1.2 * r))
    if res is None:
        return
    box, _ = res
    X, Y, Z = c.grid.sub_coords(box)
    lobe = chest.lobe_of(d["side"], X, Y, Z) == LOBE_INDEX[d["lobe"]]
    level = ellipsoid_level(X, Y, Z, center, (r, r, 1.2 * r))
    tex = sample_field(field, c.grid, box)
    frac = soft_inside((1.0 - level) * r + 5.0 * tex, 4.0) * (c.lung[d["side"]][box] & lobe)
    c.blend(frac, 45.0 + 6.0 * tex, box=box)
    # air bronchograms: the bronchi stay aerated inside the consolidated lung
    if c.lumen is not None:
        c.blend(frac * c.lumen[box], -950.0, box=box)


def atelectasis(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    d = f.details["Atelectasis"]
    rng = finding_rng(seed, "Atelectasis")
    side, lobe = d["side"], d["lobe"]
    s = SIDE_SIGN[side]
    center: np.ndarray | tuple[float, float, float]
    if d["kind"] == "subsegmental":
        # plate-like (discoid) atelectasis: a thin, nearly horizontal band in the lower zone
        center = chest.random_lung_point(rng, side, lobe, margin=8.0)
        radii = (rng.uniform(25.0, 40.0), rng.uniform(15.0, 25.0), 4.0)
        res = ellipsoid_fraction(c.grid, center, radii, rot_z_deg=float(rng.uniform(-30, 30)))
        if res:
            c.blend(res[1], 30.0, box=res[0], where=c.lung[side][res[0]])
        return
    h = chest.hila[side]
    cx, cy, rx, ry = chest.cavity
    if lobe == "lower":  # collapses posteromedially against the spine
        center = (s * (chest.p.spine_radius + 22.0), chest.spine_y - 8.0, chest.dome_z(side) + 30.0)
        radii = (26.0, 30.0, 70.0)
    elif lobe == "middle":
        center, radii = h + (s * 30.0, -40.0, -25.0), (35.0, 22.0, 16.0)
    else:
        center, radii = h + (s * 25.0, -15.0, 45.0), (30.0, 25.0, 40.0)
    res = ellipsoid_fraction(c.grid, center, radii)
    if res:
        box, frac = res
        X, Y, Z = c.grid.sub_coords(box)
        lobe_m = chest.lobe_of(side, X, Y, Z) == LOBE_INDEX[lobe]
        c.blend(frac, 55.0, box=box, where=c.lung[side][box] & lobe_m)


def fibrotic_sequela(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    from pipeline.synth.geometry import paint_tubes

    d = f.details["Pulmonary fibrotic sequela"]
    rng = finding_rng(seed, "Pulmonary fibrotic sequela")
    cx, cy, rx, ry = chest.cavity
    bands = Tubes.empty()
    for side, lobe in zip(sides_of(d["side"]), d["lobes"]):
        for _ in range(d["n_bands"]):
            a = chest.random_lung_point(rng, side, lobe, margin=4.0)
            # towards the nearest pleura: outwards from the hemithorax centre
            out = a - np.array([SIDE_SIGN[side] * 0.5 * rx, cy, a[2] + rng.uniform(-10, 10)])
            out = out / (np.linalg.norm(out) + 1e-9)
            pts = [a]
            for _ in range(3):
                step = out * rng.uniform(10.0, 18.0) + rng.normal(0, 3.0, 3)
                pts.append(pts[-1] + step)
            bands += Tubes.from_polyline(np.array(pts), rng.uniform(1.6, 2.6))
    occ = paint_tubes(c.grid, bands, np.zeros(c.grid.shape, np.float32))
    c.blend(occ, -20.0, where=c.lungs)


def nodules(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    for k, n in enumerate(f.details["Lung nodule"]["nodules"]):
        rng = finding_rng(seed, "Lung nodule", k)
        r = n["diameter_mm"] / 2.0
        center = chest.random_lung_point(rng, n["side"], n["lobe"], margin=r + 3.0)
        radii = tuple(r * rng.uniform(0.88, 1.12, 3))
        res = ellipsoid_fraction(c.grid, center, radii)
        if res:
            c.blend(res[1], 450.0 if n["calcified"] else 35.0, box=res[0])


def nodule_centers(chest: Chest, f: Findings, seed: int) -> list[np.ndarray]:
    """Where :func:`nodules` puts each nodule (the same draws), for tests and reports."""
    out = []
    for k, n in enumerate(f.details.get("Lung nodule", {}).get("nodules", [])):
        rng = finding_rng(seed, "Lung nodule", k)
        out.append(chest.random_lung_point(rng, n["side"], n["lobe"], margin=n["diameter_mm"] / 2.0 + 3.0))
    return out


def parenchymal_before_vessels(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    if f.has("Emphysema"):
        emphysema(c, chest, f, seed)
    if f.has("Mosaic attenuation pattern"):
        mosaic_attenuation(c, chest, f, seed)
    if f.has("Lung opacity"):
        lung_opacity(c, chest, f, seed)
    if f.has("Interlobular septal thickening"):
        septal_thickening(c, chest, f, seed)


def parenchymal_after_vessels(c: Canvas, chest: Chest, f: Findings, seed: int) -> None:
    if f.has("Pulmonary fibrotic sequela"):
        fibrotic_sequela(c, chest, f, seed)
    if f.has("Consolidation"):
        consolidation(c, chest, f, seed)
    if f.has("Atelectasis"):
        atelectasis(c, chest, f, seed)
    if f.has("Lung nodule"):
        nodules(c, chest, f, seed)


# ---- pleura --------------------------------------------------------------------------------
EFFUSION_SIZE = {"small": (32.0, 60.0), "moderate": (45.0, 80.0), "large": (70.0, 120.0)}  # depth, height (mm)


def pleural_effusion(c: Canvas, chest: Chest, f: Findings) -> None:
    """Free fluid layers in the dependent (posterior) pleural space, thickest at the base, with a meniscus."""
    d = f.details.get("Pleural effusion")
    if not d:
        return
    X, Y, Z = c.coords
    cx, cy, rx, ry = chest.cavity
    depth_max, height = EFFUSION_SIZE[d["size"]]
    for side in sides_of(d["side"]):
        s = SIDE_SIGN[side]
        w = chest.width_profile(Z)
        wy = 0.35 + 0.65 * w
        u = (X - s * 0.5 * rx) / (0.53 * rx * np.maximum(w, 1e-3))
        back = cy + ry * wy * np.sqrt(np.clip(1.0 - u * u, 0.0, None))
        z_low = chest.dome_z(side) - 50.0
        z_top = chest.dome_z(side) + height
        depth = depth_max * np.clip((z_top - Z) / (z_top - z_low), 0.0, 1.0) ** 0.6
        # meniscus: the fluid climbs the lateral wall
        depth = depth * (1.0 + 0.4 * np.clip(np.abs(u), 0.0, 1.0) ** 4)
        frac = soft_inside(depth - (back - Y), c.grid.h) * c.lung[side]
        c.blend(frac, FLUID)
