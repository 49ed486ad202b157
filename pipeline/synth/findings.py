"""Which abnormalities a synthetic scan has: the 18 CT-RATE labels and the details of each.

Labels come from a Gaussian factor (copula) model. Each label is a latent normal
``z = A f + sqrt(1 - |A|^2) e`` thresholded at its prevalence, where ``f`` are a
few shared patient factors (age, smoking, heart failure, infection, in-patient
care, compression of the lung by fluid) and ``e`` is the label's own noise. The
marginal prevalence is therefore exact in expectation, and labels that share a
factor co-occur as in CT-RATE (arterial and coronary calcification with age;
pleural effusion with atelectasis and cardiomegaly; consolidation with opacity).
A follow-up scan of the same patient keeps most of its latents (correlation
``FOLLOW_UP_RHO``), so findings persist between scans a and b.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from schemas.labels import CT_RATE_LABELS

FACTORS = ("age", "smoking", "cardiac", "infection", "inpatient", "compression")

# label -> (prevalence, {factor: loading}); prevalences are close to CT-RATE's train split.
LABEL_MODEL: dict[str, tuple[float, dict[str, float]]] = {
    "Medical material": (0.10, {"inpatient": 0.60, "cardiac": 0.25}),
    "Arterial wall calcification": (0.28, {"age": 0.75, "smoking": 0.20}),
    "Cardiomegaly": (0.11, {"cardiac": 0.60, "age": 0.35}),
    "Pericardial effusion": (0.07, {"cardiac": 0.55, "infection": 0.20}),
    "Coronary artery wall calcification": (0.25, {"age": 0.70, "smoking": 0.20}),
    "Hiatal hernia": (0.14, {"age": 0.45}),
    "Lymphadenopathy": (0.25, {"infection": 0.45, "age": 0.20}),
    "Emphysema": (0.20, {"smoking": 0.70, "age": 0.30}),
    "Atelectasis": (0.25, {"inpatient": 0.35, "cardiac": 0.25, "infection": 0.30, "compression": 0.45}),
    "Lung nodule": (0.45, {"age": 0.30, "smoking": 0.30}),
    "Lung opacity": (0.38, {"infection": 0.55, "cardiac": 0.30}),
    "Pulmonary fibrotic sequela": (0.27, {"age": 0.45, "infection": 0.30}),
    "Pleural effusion": (0.12, {"cardiac": 0.55, "inpatient": 0.30, "compression": 0.50}),
    "Mosaic attenuation pattern": (0.08, {"smoking": 0.35, "infection": 0.30}),
    "Peribronchial thickening": (0.10, {"smoking": 0.45, "infection": 0.35}),
    "Consolidation": (0.17, {"infection": 0.70, "inpatient": 0.25}),
    "Bronchiectasis": (0.10, {"smoking": 0.35, "age": 0.35, "infection": 0.30}),
    "Interlobular septal thickening": (0.08, {"cardiac": 0.50, "infection": 0.30, "age": 0.20}),
}
assert tuple(LABEL_MODEL) == CT_RATE_LABELS, "LABEL_MODEL must list the 18 labels in CT-RATE order"

FOLLOW_UP_RHO = 0.85

LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}


def _loadings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = np.zeros((len(CT_RATE_LABELS), len(FACTORS)))
    prev = np.zeros(len(CT_RATE_LABELS))
    for i, (_name, (p, loads)) in enumerate(LABEL_MODEL.items()):
        prev[i] = p
        for f, w in loads.items():
            A[i, FACTORS.index(f)] = w
    own = np.sqrt(1.0 - (A**2).sum(axis=1))
    return A, own, ndtri(1.0 - prev)


@dataclass
class Latents:
    """The normal latents of one scan; a follow-up scan is drawn close to them."""

    factors: np.ndarray  # (n_factors,)
    own: np.ndarray  # (18,)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Latents:
        return cls(rng.standard_normal(len(FACTORS)), rng.standard_normal(len(CT_RATE_LABELS)))

    def follow_up(self, rng: np.random.Generator, rho: float = FOLLOW_UP_RHO) -> Latents:
        s = np.sqrt(1.0 - rho * rho)
        return Latents(
            rho * self.factors + s * rng.standard_normal(self.factors.shape),
            rho * self.own + s * rng.standard_normal(self.own.shape),
        )

    def labels(self) -> list[int]:
        A, own, thresholds = _loadings()
        z = A @ self.factors + own * self.own
        return [int(v) for v in (z > thresholds)]

    @property
    def age_z(self) -> float:
        return float(self.factors[FACTORS.index("age")])


@dataclass
class Findings:
    """The 18 labels of one scan and, for each positive label, how it looks (``details[label]``)."""

    labels: list[int]
    details: dict[str, dict] = field(default_factory=dict)
    age_z: float = 0.0  # latent age (standard normal): older chests calcify and lose bone density

    def has(self, name: str) -> bool:
        return bool(self.labels[CT_RATE_LABELS.index(name)])

    def positives(self) -> list[str]:
        return [n for n, v in zip(CT_RATE_LABELS, self.labels) if v]


def _side(rng, p_bilateral: float) -> str:
    if rng.random() < p_bilateral:
        return "bilateral"
    return "right" if rng.random() < 0.55 else "left"


def _sides(side: str) -> list[str]:
    return ["right", "left"] if side == "bilateral" else [side]


def _lobe(rng, side: str | None = None, weights=None) -> tuple[str, str]:
    side = side or ("right" if rng.random() < 0.55 else "left")
    lobes = LOBES[side]
    w = np.ones(len(lobes)) if weights is None else np.asarray(weights[side], dtype=float)
    return side, lobes[int(rng.choice(len(lobes), p=w / w.sum()))]


def _severity(rng) -> str:
    return str(rng.choice(["mild", "moderate", "marked"], p=[0.5, 0.35, 0.15]))


def draw_details(rng: np.random.Generator, labels: list[int]) -> dict[str, dict]:
    """Size, side, lobe and kind of each positive label; the renderers and the report both read them."""
    on = dict(zip(CT_RATE_LABELS, labels))
    d: dict[str, dict] = {}
    lower_heavy = {"right": [1, 1, 3], "left": [1, 3]}
    upper_heavy = {"right": [4, 1, 1], "left": [4, 1]}
    if on["Medical material"]:
        # every kind holds metal; a catheter (plastic, ~350 HU) comes only with one of them
        kinds = ["port", "pacemaker", "sternotomy wires", "surgical clips", "ECG electrodes"]
        first = str(rng.choice(kinds, p=[0.25, 0.2, 0.25, 0.15, 0.15]))
        chosen = [first] + (["central venous catheter"] if rng.random() < 0.25 else [])
        d["Medical material"] = {"kinds": chosen, "side": "right" if rng.random() < 0.6 else "left"}
    if on["Arterial wall calcification"]:
        sev = _severity(rng)
        lo, hi = {"mild": (3, 6), "moderate": (6, 10), "marked": (10, 15)}[sev]
        d["Arterial wall calcification"] = {"n_plaques": int(rng.integers(lo, hi)), "severity": sev}
    if on["Cardiomegaly"]:
        d["Cardiomegaly"] = {"scale": float(rng.uniform(1.2, 1.38))}
    if on["Pericardial effusion"]:
        d["Pericardial effusion"] = {"thickness_mm": float(rng.uniform(6.0, 12.0))}
    if on["Coronary artery wall calcification"]:
        vessels = [v for v in ("LAD", "LCx", "RCA") if rng.random() < 0.6] or ["LAD"]
        d["Coronary artery wall calcification"] = {"vessels": vessels, "severity": _severity(rng)}
    if on["Hiatal hernia"]:
        d["Hiatal hernia"] = {"radius_mm": float(rng.uniform(18.0, 32.0)), "air_fraction": float(rng.uniform(0.3, 0.7))}
    if on["Lymphadenopathy"]:
        stations = [
            "right paratracheal",
            "subcarinal",
            "aortopulmonary window",
            "right hilar",
            "left hilar",
            "prevascular",
        ]
        k = int(rng.integers(1, 4))
        chosen = [stations[i] for i in sorted(rng.choice(len(stations), size=k, replace=False))]
        d["Lymphadenopathy"] = {"stations": chosen, "short_axis_mm": [float(rng.uniform(11.0, 22.0)) for _ in chosen]}
    if on["Emphysema"]:
        d["Emphysema"] = {
            "kind": str(rng.choice(["centrilobular", "paraseptal", "panlobular"], p=[0.6, 0.25, 0.15])),
            "fraction": float(rng.uniform(0.10, 0.30)),
            "severity": _severity(rng),
        }
    if on["Atelectasis"]:
        kind = str(rng.choice(["subsegmental", "lobar"], p=[0.75, 0.25]))
        side, lobe = _lobe(rng, weights=lower_heavy)
        d["Atelectasis"] = {"kind": kind, "side": side, "lobe": lobe}
    if on["Lung nodule"]:
        n = int(rng.choice([1, 2, 3, 4], p=[0.5, 0.25, 0.15, 0.10]))
        nodules = []
        for i in range(n):
            side, lobe = _lobe(rng, weights=upper_heavy)
            diam = float(rng.uniform(8.0, 22.0)) if i == 0 else float(rng.uniform(4.0, 10.0))
            nodules.append(
                {"side": side, "lobe": lobe, "diameter_mm": diam, "calcified": bool(i > 0 and rng.random() < 0.3)}
            )
        d["Lung nodule"] = {"nodules": nodules}
    if on["Lung opacity"]:
        side = _side(rng, 0.5)
        d["Lung opacity"] = {
            "side": side,
            "lobes": [_lobe(rng, s)[1] for s in _sides(side)],
            "n_patches": int(rng.integers(1, 4)),
        }
    if on["Pulmonary fibrotic sequela"]:
        side = _side(rng, 0.35)
        d["Pulmonary fibrotic sequela"] = {
            "side": side,
            "lobes": [_lobe(rng, s)[1] for s in _sides(side)],
            "n_bands": int(rng.integers(2, 6)),
        }
    if on["Pleural effusion"]:
        side = _side(rng, 0.45)
        d["Pleural effusion"] = {
            "side": side,
            "size": str(rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15])),
        }
    if on["Mosaic attenuation pattern"]:
        d["Mosaic attenuation pattern"] = {"contrast_hu": float(rng.uniform(70.0, 120.0))}
    if on["Peribronchial thickening"]:
        d["Peribronchial thickening"] = {"wall_factor": float(rng.uniform(1.6, 2.2)), "side": _side(rng, 0.7)}
    if on["Consolidation"]:
        side, lobe = _lobe(rng, weights=lower_heavy)
        d["Consolidation"] = {"side": side, "lobe": lobe, "radius_mm": float(rng.uniform(22.0, 38.0))}
    if on["Bronchiectasis"]:
        side = _side(rng, 0.5)
        d["Bronchiectasis"] = {
            "side": side,
            "kind": str(rng.choice(["cylindrical", "varicose"], p=[0.75, 0.25])),
            "dilation": float(rng.uniform(1.8, 2.6)),
        }
    if on["Interlobular septal thickening"]:
        d["Interlobular septal thickening"] = {"side": _side(rng, 0.75), "zone": str(rng.choice(["basal", "diffuse"]))}
    return d


def draw_findings(rng: np.random.Generator, latents: Latents, previous: Findings | None = None) -> Findings:
    """Labels from the latents and details for each positive label.

    On a follow-up scan (``previous`` given) a finding present on both scans keeps its details (same side,
    lobe, size), so the same nodule or effusion is seen again; new findings get new details.
    """
    labels = latents.labels()
    details = draw_details(rng, labels)
    if previous is not None:
        for name, value in zip(CT_RATE_LABELS, labels):
            if value and name in previous.details:
                details[name] = previous.details[name]
    return Findings(labels=labels, details=details, age_z=latents.age_z)


def sides_of(side: str) -> list[str]:
    """'bilateral' -> both sides; 'right' / 'left' -> that one."""
    return _sides(side)
