"""The bronchovascular trees of the lungs: arteries with their bronchi, and veins.

Each lobe gets a tree grown from the hilum by random dichotomous branching
(child radii 0.85 and 0.70 of the parent, roughly Murray's law; branch angles
20-40 degrees), stopped where a branch would leave the lung. Bronchi run beside
their artery with a lumen a little smaller than it (the artery-to-bronchus ratio
that bronchiectasis inverts) and a wall about a fifth of the lumen radius (what
peribronchial thickening doubles). Trees are drawn from the patient's anatomy
seed, so every scan and reconstruction of a patient shows the same vessels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.anatomy import SIDE_SIGN, Chest
from pipeline.synth.geometry import Tubes

LOBE_INDEX = {"upper": 0, "middle": 1, "lower": 2}

# (lobe, direction as (lateral, posterior, superior)); lateral is multiplied by the side's sign.
_ROOTS = {
    "right": [
        ("upper", (0.55, 0.1, 1.0)),
        ("upper", (0.5, -0.7, 0.6)),
        ("middle", (0.6, -0.9, -0.3)),
        ("lower", (0.3, 1.0, 0.05)),
        ("lower", (0.45, 0.45, -1.0)),
        ("lower", (0.1, 0.2, -1.0)),
    ],
    "left": [
        ("upper", (0.5, 0.15, 1.0)),
        ("upper", (0.55, -0.8, 0.4)),
        ("upper", (0.6, -0.9, -0.4)),
        ("lower", (0.3, 1.0, 0.05)),
        ("lower", (0.45, 0.45, -1.0)),
        ("lower", (0.1, 0.2, -1.0)),
    ],
}


@dataclass
class BranchSet:
    """Segments of one kind of tree with, per segment, the side (0 right, 1 left), lobe index and generation."""

    tubes: Tubes
    side: np.ndarray
    lobe: np.ndarray
    generation: np.ndarray


@dataclass
class LungTrees:
    arteries: BranchSet
    veins: BranchSet
    bronchi: BranchSet  # radii are the lumen radii; walls are added at render time


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of each row of ``v`` about the unit rows of ``axis`` by ``angle`` (radians)."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return v * c + np.cross(axis, v) * s + axis * np.sum(axis * v, axis=1, keepdims=True) * (1 - c)


def _grow_side(chest: Chest, rng, side: str, starts, dirs, lobes, radius, length, max_gen, rmin):
    """Grow all trees of one side generation by generation (vectorised); returns (arteries, bronchi) rows.

    A row is (a, b, r_a, r_b, generation, lobe). A branch that would leave the
    lung is shortened (60%, then 35%) and dropped if it still does.
    """
    start, d = np.asarray(starts, float), _unit(np.asarray(dirs, float))
    lobe = np.asarray(lobes)
    r = np.full(len(start), radius)
    L = np.full(len(start), length)
    arts, brs = [], []
    for gen in range(max_gen):
        if not len(start):
            break
        end = np.full_like(start, np.nan)
        for f in (1.0, 0.6, 0.35):
            todo = np.isnan(end[:, 0])
            cand = start[todo] + d[todo] * (L[todo] * f)[:, None]
            ok = chest.lung_mask(side, cand[:, 0], cand[:, 1], cand[:, 2])
            idx = np.nonzero(todo)[0][ok]
            end[idx] = cand[ok]
        good = ~np.isnan(end[:, 0])
        start, end, d, r, L, lobe = start[good], end[good], d[good], r[good], L[good], lobe[good]
        r_end = r * 0.92
        for i in range(len(start)):
            arts.append((start[i], end[i], r[i], r_end[i], gen, lobe[i]))
        # the bronchus runs beside its artery, lumen 0.8 of the artery's radius
        has_b = r > 0.9
        ref = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
        shift = _unit(np.cross(d, ref)) * (r + 1.25 * 0.8 * r + 0.6)[:, None]
        for i in np.nonzero(has_b)[0].tolist():
            brs.append((start[i] + shift[i], end[i] + shift[i], 0.8 * r[i], 0.8 * r_end[i], gen, lobe[i]))
        go = r_end * 0.85 >= rmin
        start, d, r_end, L, lobe = end[go], d[go], r_end[go], L[go], lobe[go]
        n = len(start)
        if not n:
            break
        axis = _unit(np.cross(d, rng.standard_normal((n, 3))))
        ang_major = np.radians(rng.uniform(20.0, 40.0, n)) * 0.7
        ang_minor = np.radians(rng.uniform(20.0, 40.0, n)) * 1.2
        shrink = rng.uniform(0.76, 0.92, (2, n))
        d = _unit(np.vstack([_rotate(d, axis, ang_major), _rotate(d, axis, -ang_minor)]))
        start = np.vstack([start, start])
        r = np.concatenate([r_end * 0.85, r_end * 0.70])
        L = np.concatenate([L * shrink[0], L * shrink[1]])
        lobe = np.concatenate([lobe, lobe])
    return arts, brs


def _branchset(items: list[tuple], side_i: list[int]) -> BranchSet:
    if not items:
        e = np.zeros(0, np.int8)
        return BranchSet(Tubes.empty(), e, e.copy(), e.copy())
    return BranchSet(
        Tubes(
            np.array([it[0] for it in items]),
            np.array([it[1] for it in items]),
            np.array([it[2] for it in items], float),
            np.array([it[3] for it in items], float),
        ),
        np.array(side_i, np.int8),
        np.array([it[5] for it in items], np.int8),
        np.array([it[4] for it in items], np.int8),
    )


def grow_lung_trees(chest: Chest, seed: int, rmin: float = 0.6, max_gen: int = 10) -> LungTrees:
    """The patient's arterial, venous and bronchial trees (deterministic from ``seed``)."""
    rng = np.random.default_rng(seed)
    arts, veins, brs, a_side, v_side, b_side = [], [], [], [], [], []
    for side_i, side in enumerate(("right", "left")):
        s = SIDE_SIGN[side]
        hilum = chest.hila[side]
        roots = _ROOTS[side]
        lobes = [LOBE_INDEX[lobe] for lobe, _ in roots]
        dirs = np.array([(s * lat, post, sup) for _, (lat, post, sup) in roots]) + 0.15 * rng.standard_normal(
            (len(roots), 3)
        )
        a, b = _grow_side(
            chest, rng, side, np.repeat(hilum[None], len(roots), 0), dirs, lobes, 4.6, 30.0, max_gen, rmin
        )
        # veins drain towards the left atrium, below and in front of the hilum
        vstart = hilum + np.array([-s * 4.0, -14.0, -22.0])
        vdirs = dirs + np.array([0.0, -0.2, -0.25]) + 0.25 * rng.standard_normal(dirs.shape)
        v, _ = _grow_side(
            chest, rng, side, np.repeat(vstart[None], len(roots), 0), vdirs, lobes, 4.2, 28.0, max_gen, rmin
        )
        arts += a
        brs += b
        veins += v
        a_side += [side_i] * len(a)
        b_side += [side_i] * len(b)
        v_side += [side_i] * len(v)
    return LungTrees(_branchset(arts, a_side), _branchset(veins, v_side), _branchset(brs, b_side))
