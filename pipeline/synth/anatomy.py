"""The normal chest of one synthetic patient: shape parameters and where each organ lies.

:func:`draw_anatomy` draws a patient's build (body size, fat, lung height,
diaphragm domes, heart, spine) from realistic ranges; :class:`Chest` turns it
into organ positions in the patient frame (see :mod:`pipeline.synth.geometry`)
and answers geometric questions that both the renderer and the tests ask: is a
point inside the right lung, which lobe, where is the posterior lung base. The
findings that change the anatomy itself (an enlarged heart, pericardial fluid, a
raised hemidiaphragm after lobar collapse) enter here, so that the lungs give
way to the heart as they do in a real chest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pipeline.synth.findings import Findings
from pipeline.synth.geometry import Grid, Tubes, smooth_polyline

# Tissue densities (HU), unenhanced chest CT.
AIR, FAT, MUSCLE, BLOOD, LIVER, SPLEEN, FLUID, CSF = -1000.0, -100.0, 45.0, 40.0, 58.0, 48.0, 8.0, 10.0
CORTICAL_BONE, CARTILAGE = 900.0, 130.0


@dataclass(frozen=True)
class AnatomyParams:
    """A patient's build, in mm (patient frame: X left, Y posterior, Z superior, Z=0 at the scan's lower end)."""

    body_rx: float  # lateral half-width of the body
    body_ry: float  # antero-posterior half-depth
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest wall muscle thickness
    scan_length: float  # lung apices to below the diaphragm
    apex_gap: float  # scan top to lung apex
    dome_right: float  # Z of the right hemidiaphragm dome
    dome_drop_left: float  # left dome lies lower by this
    carina_above_dome: float
    heart_scale: float  # 1 = average normal heart
    heart_rot: float  # degrees, long axis towards the left anterior
    aorta_radius: float
    spine_radius: float
    vertebra_height: float
    vertebra_phase: float
    marrow_hu: float
    lung_hu: float  # mean parenchymal density of this patient's lungs
    fov_offset: tuple[float, float]  # body centre minus scan field-of-view centre, X and Y
    seed_anatomy: int  # seeds the vessel trees and the lung texture (same for every scan of the patient)
    breast_mm: float = 0.0  # anterior protrusion of the breasts (0: none, as in men)


def _wall(fat: float, muscle: float) -> tuple[float, float]:
    """Thickness (mm) of the anterior and posterior chest wall: fat, muscle, ribs; paraspinal muscles behind."""
    return fat + muscle + 5.0, 0.6 * fat + muscle + 40.0


def draw_anatomy(rng: np.random.Generator, age_z: float = 0.0) -> AnatomyParams:
    # the thoracic cavity first (its size varies less than the body's), then the wall around it
    cav_rx, cav_ry = float(rng.uniform(108.0, 132.0)), float(rng.uniform(70.0, 88.0))
    muscle = float(rng.uniform(8.0, 14.0))
    fat = float(min(rng.gamma(4.0, 4.5) + 4.0, 155.0 - cav_rx - muscle - 10.0))  # body + offset fit a 350 mm field
    front, back = _wall(fat, muscle)
    return AnatomyParams(
        body_rx=cav_rx + fat + muscle + 10.0,
        body_ry=cav_ry + (front + back) / 2.0,
        fat=fat,
        muscle=muscle,
        scan_length=float(rng.uniform(285.0, 320.0)),
        apex_gap=float(rng.uniform(8.0, 20.0)),
        dome_right=float(rng.uniform(70.0, 92.0)),
        dome_drop_left=float(rng.uniform(8.0, 20.0)),
        carina_above_dome=float(rng.uniform(100.0, 125.0)),
        heart_scale=float(rng.normal(1.0, 0.04)),
        heart_rot=float(rng.uniform(25.0, 40.0)),
        aorta_radius=float(rng.uniform(13.0, 16.0) + 1.2 * max(age_z, 0.0)),
        spine_radius=float(rng.uniform(15.0, 18.5)),
        vertebra_height=float(rng.uniform(21.0, 26.0)),
        vertebra_phase=float(rng.uniform(0.0, 1.0)),
        marrow_hu=float(np.clip(rng.normal(250.0, 30.0) - 35.0 * age_z, 120.0, 330.0)),
        lung_hu=float(rng.uniform(-875.0, -840.0)),
        fov_offset=(float(np.clip(rng.normal(0.0, 5.0), -10, 10)), float(np.clip(rng.normal(-8.0, 5.0), -18, 2))),
        seed_anatomy=int(rng.integers(0, 2**31 - 1)),
        breast_mm=_breast(rng, cav_rx + fat + muscle + 10.0, cav_ry + (front + back) / 2.0),
    )


BREAST_X = 0.45  # breast centres at +-0.45 body_rx


def _breast(rng: np.random.Generator, body_rx: float, body_ry: float) -> float:
    """Breast protrusion (mm) in the ~45% of patients who are women; kept inside the smallest (350 mm) field.

    The front of a breast lies at (BREAST_X body_rx, 0.96 body_ry + protrusion) from the body centre, which is
    up to 10 mm (X) and 18 mm (Y) off the field's centre; it must stay 5 mm inside the 175 mm radius.
    """
    female, size = rng.random() < 0.45, float(rng.uniform(20.0, 60.0))
    room = np.sqrt(max(170.0**2 - (BREAST_X * body_rx + 10.0) ** 2, 0.0)) - 18.0 - 0.96 * body_ry
    return float(np.clip(size, 0.0, max(room, 0.0))) if female else 0.0


SIDE_SIGN = {"right": -1.0, "left": 1.0}


@dataclass
class Chest:
    """Organ positions of one patient at one scan (findings that reshape organs included)."""

    p: AnatomyParams
    findings: Findings = field(default_factory=lambda: Findings(labels=[0] * 18))

    # ---- the body wall and the thoracic cavity -------------------------------------------------
    @property
    def cavity(self) -> tuple[float, float, float, float]:
        """(cx, cy, rx, ry) of the elliptic inner thoracic wall (inside the ribs)."""
        p = self.p
        rx = p.body_rx - p.fat - p.muscle - 10.0
        front, back = _wall(p.fat, p.muscle)
        ry = p.body_ry - (front + back) / 2.0
        return 0.0, (front - back) / 2.0, rx, ry

    def width_profile(self, Z):
        """Lateral scale of the lungs with height: a dome at the apex, widest at the base."""
        p = self.p
        apex = p.scan_length - p.apex_gap
        dome = p.dome_right
        top = np.sqrt(np.clip((apex - Z) / 55.0, 0.0, 1.0))
        # convex lateral border: widening fast below the apex, then little towards the base
        return top * (0.8 + 0.2 * np.sin(0.5 * np.pi * np.clip((apex - Z) / (apex - dome), 0.0, 1.0)))

    @property
    def apex_z(self) -> float:
        return self.p.scan_length - self.p.apex_gap

    def dome_z(self, side: str) -> float:
        z = self.p.dome_right if side == "right" else self.p.dome_right - self.p.dome_drop_left
        at = self.findings.details.get("Atelectasis")
        if at and at["kind"] == "lobar" and at["side"] == side:
            z += 12.0  # volume loss pulls the hemidiaphragm up
        return z

    def diaphragm_z(self, side: str, X, Y):
        """Height of the hemidiaphragm under (X, Y): a dome, deepest in the posterior costophrenic recess."""
        cx, cy, rx, ry = self.cavity
        s = SIDE_SIGN[side]
        u = (X - s * 0.45 * rx) / (0.6 * rx)
        front = cy - 0.3 * ry
        back = np.clip((Y - front) / ry, 0.0, None)
        ant = np.clip((front - Y) / ry, 0.0, None)
        return self.dome_z(side) - 26.0 * u * u - 48.0 * back * back - 12.0 * ant * ant

    @property
    def carina_z(self) -> float:
        return self.p.dome_right + self.p.carina_above_dome

    # ---- mediastinum ---------------------------------------------------------------------------
    @property
    def spine_y(self) -> float:
        cx, cy, rx, ry = self.cavity
        return cy + ry - 0.8 * self.p.spine_radius  # the vertebral body bulges into the cavity

    @property
    def trachea_y(self) -> float:
        return self.spine_y - self.p.spine_radius - 24.0

    @property
    def heart(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(centre, semi-axes, z-rotation in degrees) of the heart muscle and blood."""
        cx, cy, rx, ry = self.cavity
        scale = self.p.heart_scale
        cm = self.findings.details.get("Cardiomegaly")
        if cm:
            scale *= cm["scale"]
        radii = np.array([0.5 * rx, 0.38 * ry + 4.0, 50.0]) * np.array([scale, scale, scale**0.6])
        center = np.array([0.14 * rx * scale, cy - 0.36 * ry + 0.25 * (radii[1] - 0.4 * ry), 0.0])
        center[2] = self.dome_z("left") + 0.55 * radii[2]
        return center, radii, self.p.heart_rot

    @property
    def pericardial_space(self) -> float:
        """Thickness (mm) between heart and pericardium: epicardial fat, or fluid in an effusion."""
        pe = self.findings.details.get("Pericardial effusion")
        return pe["thickness_mm"] if pe else 3.5

    def heart_sac_radii(self) -> np.ndarray:
        """Semi-axes of the outer pericardium (heart + space + pericardial membrane)."""
        center, radii, rot = self.heart
        return radii + self.pericardial_space + 1.5

    def mediastinum_half_width(self, Z):
        """Half-width of the central soft-tissue band between the lungs (thymic fat, vessels, trachea)."""
        return 17.0 + 6.0 * np.clip((Z - self.carina_z) / 80.0, 0.0, 1.0)

    @cached_property
    def aorta_centerline(self) -> np.ndarray:
        hc, hr, _ = self.heart
        cz, ty, sy, r = self.carina_z, self.trachea_y, self.spine_y, self.p.spine_radius
        pts = [
            (hc[0] - 0.45 * hr[0], hc[1] - 0.1 * hr[1], hc[2] + 0.5 * hr[2]),  # aortic root
            (-12.0, ty - 35.0, cz + 5.0),  # ascending
            (-6.0, ty - 30.0, cz + 30.0),
            (12.0, ty - 8.0, cz + 42.0),  # arch, left of the trachea
            (26.0, ty + 18.0, cz + 28.0),
            (24.0, sy - r - 8.0, cz),  # descending, left antero-lateral to the spine
            (18.0, sy - r - 10.0, cz - 90.0),
            (8.0, sy - r - 12.0, -40.0),  # through the aortic hiatus
        ]
        return smooth_polyline(np.array(pts), 5)

    def aorta_radii(self, n: int) -> np.ndarray:
        r = self.p.aorta_radius
        t = np.linspace(0.0, 1.0, n)
        return r * np.where(t < 0.45, 1.1, 1.1 - 0.3 * np.clip((t - 0.45) / 0.3, 0.0, 1.0))

    @cached_property
    def hila(self) -> dict[str, np.ndarray]:
        cx, cy, rx, ry = self.cavity
        return {
            "right": np.array([-0.32 * rx, self.trachea_y + 6.0, self.carina_z - 22.0]),
            "left": np.array([0.34 * rx, self.trachea_y + 14.0, self.carina_z - 14.0]),
        }

    # ---- lungs ---------------------------------------------------------------------------------
    def lung_envelope(self, side: str, X, Y, Z):
        """Where the lung would be without the mediastinum: the hemithorax above the diaphragm."""
        cx, cy, rx, ry = self.cavity
        s = SIDE_SIGN[side]
        w = self.width_profile(Z)
        wy = 0.35 + 0.65 * w  # the apex narrows front to back less than side to side
        inside = ((X - s * 0.5 * rx) / (0.53 * rx * np.maximum(w, 1e-3))) ** 2 + ((Y - cy) / (ry * wy)) ** 2 < 1.0
        return inside & (Z > self.diaphragm_z(side, X, Y)) & (w > 0)

    def lung_mask(self, side: str, X, Y, Z):
        """The lung of ``side``: the envelope minus mediastinum, heart sac, spine and descending aorta."""
        m = self.lung_envelope(side, X, Y, Z)
        m &= np.abs(X - 2.0) > self.mediastinum_half_width(Z)
        hc, _, rot = self.heart
        from pipeline.synth.geometry import ellipsoid_level

        m &= ellipsoid_level(X, Y, Z, hc, self.heart_sac_radii(), rot) > 1.0
        m &= ((X / (self.p.spine_radius * 1.25)) ** 2 + ((Y - self.spine_y) / (self.p.spine_radius + 14.0)) ** 2) > 1.0
        desc = self.aorta_centerline
        # the descending aorta is nearly vertical below the arch: a cylinder per height is exact enough
        below = desc[desc[:, 2] < self.carina_z + 5.0]
        ax = np.interp(Z, below[::-1, 2], below[::-1, 0])
        ay = np.interp(Z, below[::-1, 2], below[::-1, 1])
        m &= ((X - ax) ** 2 + (Y - ay) ** 2) > (self.p.aorta_radius + 3.0) ** 2
        return m

    def fissure_z(self, side: str, X, Y) -> tuple:
        """Heights of the oblique fissure and (right lung) the horizontal fissure above (X, Y).

        The oblique fissure rises towards the back and the side (in an axial slice it runs from posteromedial to
        anterolateral); the horizontal fissure lies near the hilum, tilted a little.
        """
        h = self.hila[side]
        lateral = SIDE_SIGN[side] * (X - h[0])
        oblique = h[2] + 1.1 * (Y - h[1]) + 10.0 + 0.5 * lateral
        horizontal = h[2] - 4.0 - 0.12 * lateral + 0.1 * (Y - h[1])
        return oblique, horizontal

    def lobe_of(self, side: str, X, Y, Z) -> np.ndarray:
        """Lobe index per point: 0 upper, 1 middle (right only), 2 lower, split by the fissure surfaces."""
        oblique, horizontal = self.fissure_z(side, X, Y)
        lower = Z < oblique
        middle = (~lower) & (Z < horizontal) if side == "right" else np.zeros_like(lower)
        return np.where(lower, 2, np.where(middle, 1, 0))

    def random_lung_point(
        self, rng: np.random.Generator, side: str, lobe: str | None = None, margin: float = 0.0
    ) -> np.ndarray:
        """A point inside the lung of ``side`` (and ``lobe``) at least ``margin`` mm from its edge.

        Rejection sampling; if a small lobe cannot hold the margin, the margin is relaxed, then the lobe, so a
        lesion always finds a place (one odd patient never stops a data set).
        """
        cx, cy, rx, ry = self.cavity
        s = SIDE_SIGN[side]
        lobe_idx = {"upper": 0, "middle": 1, "lower": 2}.get(lobe or "", None)
        for m, want_lobe in ((margin, True), (margin / 2, True), (0.0, True), (0.0, False)):
            for _ in range(24):
                pts = np.column_stack(
                    [
                        s * rng.uniform(0.0, rx, 256),
                        rng.uniform(cy - ry, cy + ry, 256),
                        rng.uniform(self.diaphragm_z(side, 0.0, cy + ry), self.apex_z, 256),
                    ]
                )
                ok = self._inside_with_margin(side, pts, m)
                if lobe_idx is not None and want_lobe:
                    ok &= self.lobe_of(side, pts[:, 0], pts[:, 1], pts[:, 2]) == lobe_idx
                if ok.any():
                    return pts[int(np.argmax(ok))]
        raise RuntimeError(f"no point found in the {side} lung")

    def _inside_with_margin(self, side: str, pts: np.ndarray, margin: float) -> np.ndarray:
        ok = self.lung_mask(side, pts[:, 0], pts[:, 1], pts[:, 2])
        if margin > 0:
            for d in np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * margin:
                q = pts + d
                ok &= self.lung_mask(side, q[:, 0], q[:, 1], q[:, 2])
        return ok

    def posterior_base_region(self, side: str, X, Y, Z, depth_mm: float = 18.0, height_mm: float = 45.0):
        """The most dependent part of a hemithorax: lung within ``depth_mm`` of its back wall, low in the chest.

        This is where free pleural fluid layers in a supine patient; the tests look for fluid here.
        """
        cx, cy, rx, ry = self.cavity
        s = SIDE_SIGN[side]
        env = self.lung_envelope(side, X, Y, Z)
        w = self.width_profile(Z)
        wy = 0.35 + 0.65 * w
        # back wall of the hemithorax at this X: solve the envelope ellipse for Y
        u = (X - s * 0.5 * rx) / (0.53 * rx * np.maximum(w, 1e-3))
        back = cy + ry * wy * np.sqrt(np.clip(1.0 - u * u, 0.0, None))
        return env & (Y > back - depth_mm) & (Z < self.dome_z(side) + height_mm - 15.0)

    # ---- ribs and spine ------------------------------------------------------------------------
    def rib_polylines(self) -> list[tuple[np.ndarray, float]]:
        """Centre lines of the 12 rib pairs, following the inner chest wall and sloping down anteriorly.

        Returns (points (K, 3), fraction of the rib, from the front end, that is cartilage).
        """
        cx, cy, rx, ry = self.cavity
        p = self.p
        out = []
        top = self.apex_z + 4.0
        gap = (top - (self.p.dome_right - 25.0)) / 11.5
        for k in range(12):
            z0 = top - k * gap
            end = (0.9 if k < 7 else 0.78 if k < 10 else 0.52) * np.pi
            phi = np.linspace(0.0, end, 14)
            drop = 70.0 + 2.0 * k  # ribs run down and forward: the front end is 3-4 vertebrae lower
            z = z0 - drop * (phi / np.pi) ** 1.15
            w = np.maximum(self.width_profile(z), 0.3)
            wy = 0.35 + 0.65 * w
            for s in (-1.0, 1.0):
                # just outside the hemithorax (the lung envelope's ellipse), from the spine round to the front
                x = s * (0.5 * rx + (0.53 * rx * w + 7.0) * np.sin(phi))
                y = cy + (ry * wy + 7.0) * np.cos(phi)
                head = np.array([[s * (p.spine_radius + 8.0), self.spine_y + 14.0, z0 + 4.0]])
                pts = np.vstack([head, np.column_stack([x, y, z])])
                cart = 0.28 if k < 10 else 0.0
                out.append((pts, cart))
        return out

    def vertebra_level(self, Z) -> np.ndarray:
        """Position within a vertebral level: 0..1, the last 18% of which is the disc."""
        return np.mod(Z / self.p.vertebra_height + self.p.vertebra_phase, 1.0)

    # ---- great vessels and airways ------------------------------------------------------------
    def central_vessels(self) -> Tubes:
        """Pulmonary trunk and arteries, SVC and the supra-aortic branches (blood density)."""
        hc, hr, _ = self.heart
        cz, ty = self.carina_z, self.trachea_y
        H = self.hila
        top = self.p.scan_length + 10.0
        trunk = smooth_polyline(
            np.array(
                [
                    (hc[0] + 0.15 * hr[0], hc[1] - 0.75 * hr[1], hc[2] + 0.45 * hr[2]),
                    (14.0, ty - 38.0, cz - 14.0),
                    (8.0, ty - 20.0, cz - 8.0),
                ]
            ),
            4,
        )
        rpa = np.array([(8.0, ty - 20.0, cz - 8.0), (-20.0, ty - 12.0, cz - 14.0), tuple(H["right"])])
        lpa = np.array([(8.0, ty - 20.0, cz - 8.0), (30.0, ty - 2.0, cz - 4.0), tuple(H["left"])])
        arch_top = self.aorta_centerline[np.argmax(self.aorta_centerline[:, 2])]
        svc = np.array(
            [(-32.0, ty - 26.0, top), (-30.0, ty - 28.0, cz), (-26.0, hc[1] - 0.2 * hr[1], hc[2] + 0.6 * hr[2])]
        )
        tubes = Tubes.from_polyline(trunk, 13.0) + Tubes.from_polyline(rpa, [11.0, 10.0, 8.0])
        tubes += Tubes.from_polyline(lpa, [11.0, 10.0, 8.0]) + Tubes.from_polyline(svc, 10.0)
        for dx, r in ((-12.0, 6.5), (2.0, 4.5), (16.0, 5.0)):  # brachiocephalic, left carotid, left subclavian
            tubes += Tubes.from_polyline(np.array([arch_top + (dx + 6.0, 0.0, -2.0), (dx * 1.6, ty - 12.0, top)]), r)
        return tubes

    def trachea_and_bronchi(self) -> tuple[Tubes, Tubes]:
        """(outer wall, lumen) tubes of the trachea and the two main bronchi."""
        ty, cz = self.trachea_y, self.carina_z
        top = self.p.scan_length + 10.0
        H = self.hila
        carina = np.array([0.0, ty + 2.0, cz])
        trachea = np.array([(0.0, ty - 6.0, top), (0.0, ty - 2.0, cz + 40.0), tuple(carina)])
        right = np.array([tuple(carina), tuple(H["right"] + (6.0, -4.0, 6.0))])
        left = np.array([tuple(carina), (22.0, ty + 6.0, cz - 12.0), tuple(H["left"] + (-6.0, -4.0, 4.0))])
        wall = Tubes.from_polyline(trachea, 10.5) + Tubes.from_polyline(right, 7.5) + Tubes.from_polyline(left, 7.0)
        lumen = Tubes.from_polyline(trachea, 8.5) + Tubes.from_polyline(right, 6.0) + Tubes.from_polyline(left, 5.5)
        return wall, lumen

    def esophagus(self) -> np.ndarray:
        sy, r, ty = self.spine_y, self.p.spine_radius, self.trachea_y
        top = self.p.scan_length + 10.0
        gej = (28.0, sy - r - 26.0, self.dome_z("left") - 18.0)
        return smooth_polyline(
            np.array(
                [
                    (2.0, ty + 13.0, top),
                    (6.0, sy - r - 9.0, self.carina_z - 20.0),
                    (10.0, sy - r - 16.0, self.dome_z("left") + 20.0),
                    gej,
                ]
            ),
            4,
        )


def grid_for(chest: Chest, size: int, fov_mm: float, slice_mm: float) -> Grid:
    """The voxel grid of a reconstruction: ``size`` x ``size`` over ``fov_mm``, slices covering the scan length."""
    sx = fov_mm / size
    nz = int(np.ceil(chest.p.scan_length / slice_mm))
    fx, fy = -chest.p.fov_offset[0], -chest.p.fov_offset[1]
    origin = (fx - (size - 1) / 2.0 * sx, fy - (size - 1) / 2.0 * sx, 0.0)
    return Grid(shape=(size, size, nz), spacing=(sx, sx, slice_mm), origin=origin)
