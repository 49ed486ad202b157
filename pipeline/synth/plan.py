"""The plan of a synthetic data set: patients, their scans and reconstructions, names, splits, geometry.

Everything here is drawn in the main process from ``SeedSequence`` children of
the config's seed, keyed by patient / scan / reconstruction, so each volume can
then be rendered anywhere (a worker process) and still come out the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.anatomy import AnatomyParams, Chest, draw_anatomy, grid_for
from pipeline.synth.findings import Findings, Latents, draw_findings
from pipeline.synth.geometry import Grid
from schemas.stages import SynthConfig

# Purposes keyed into the seed, so that adding a draw of one kind never shifts another.
_ANATOMY, _FINDINGS, _SCAN, _RECON, _LAYOUT = 1, 2, 3, 4, 5


def seed_for(cfg_seed: int, *key: int) -> int:
    return int(np.random.SeedSequence([cfg_seed, *key]).generate_state(1)[0])


def rng_for(cfg_seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg_seed, *key]))


@dataclass(frozen=True)
class ReconPlan:
    recon_no: int  # 1, 2: the last part of the CT-RATE name
    kernel: str  # 'lung' or 'soft'
    slice_mm: float
    storage: str  # 'offset' (HU + 1024, scl_inter -1024) or 'direct' (HU, no header scaling)
    noise_seed: int


@dataclass(frozen=True)
class ScanPlan:
    scan_id: str  # 'a', 'b'
    findings: Findings
    fov_mm: float
    table_offset: tuple[float, float, float]  # patient frame -> scanner LPS world (mm)
    scan_seed: int  # lesion placement (the patient's: persistent findings stay in place on a follow-up)
    recons: tuple[ReconPlan, ...]


@dataclass(frozen=True)
class PatientPlan:
    index: int  # 0-based order of drawing
    split: str
    number: int  # 1-based patient number within the split
    anatomy: AnatomyParams
    scans: tuple[ScanPlan, ...]

    def volume_name(self, scan: ScanPlan, recon: ReconPlan) -> str:
        return f"{self.split}_{self.number}_{scan.scan_id}_{recon.recon_no}"

    def chest(self, scan: ScanPlan) -> Chest:
        return Chest(self.anatomy, scan.findings)

    def grid(self, scan: ScanPlan, recon: ReconPlan, size: int) -> Grid:
        return grid_for(self.chest(scan), size, scan.fov_mm, recon.slice_mm)


def _recons(rng: np.random.Generator, cfg_seed: int, key: tuple[int, int], in_plane: float) -> tuple[ReconPlan, ...]:
    n = 1 if rng.random() < 0.45 else 2
    kernels = ["lung", "soft"] if rng.random() < 0.5 else ["soft", "lung"]
    out = []
    for r in range(n):
        kernel = kernels[r]
        ratio = rng.uniform(1.5, 2.0) if kernel == "lung" else rng.uniform(2.2, 3.0)
        out.append(
            ReconPlan(
                recon_no=r + 1,
                kernel=kernel,
                slice_mm=round(float(in_plane * ratio), 4),
                storage="offset" if rng.random() < 0.5 else "direct",
                noise_seed=seed_for(cfg_seed, _RECON, *key, r),
            )
        )
    return tuple(out)


def _scan(cfg: SynthConfig, p_index: int, s_index: int, latents: Latents, previous: Findings | None) -> ScanPlan:
    rng = rng_for(cfg.seed, _SCAN, p_index, s_index)
    fov = round(float(rng.uniform(350.0, 400.0)), 1)
    in_plane = fov / cfg.size
    findings = draw_findings(rng_for(cfg.seed, _FINDINGS, p_index, s_index), latents, previous)
    table = (float(rng.uniform(-10, 10)), float(rng.uniform(-40, 40)), float(rng.uniform(-450.0, -150.0)))
    return ScanPlan(
        scan_id="ab"[s_index],
        findings=findings,
        fov_mm=fov,
        table_offset=table,
        # lesion placement is the patient's: a finding seen on both scans stays where it was
        scan_seed=seed_for(cfg.seed, _SCAN, p_index, 99),
        recons=_recons(rng, cfg.seed, (p_index, s_index), in_plane),
    )


def build_plan(cfg: SynthConfig) -> list[PatientPlan]:
    """Patients with 1-2 scans of 1-2 reconstructions each, until ``cfg.n`` volumes; split by patient."""
    drafts = []
    total, p_index = 0, 0
    while total < cfg.n:
        rng = rng_for(cfg.seed, _ANATOMY, p_index)
        latents = Latents.draw(rng)
        anatomy = draw_anatomy(rng, latents.age_z)
        n_scans = 2 if rng.random() < 0.25 else 1
        scans: list[ScanPlan] = []
        for s_index in range(n_scans):
            if s_index:
                latents = latents.follow_up(rng_for(cfg.seed, _FINDINGS, p_index, s_index, 7))
            scan = _scan(cfg, p_index, s_index, latents, scans[-1].findings if scans else None)
            keep = min(len(scan.recons), cfg.n - total)
            if keep <= 0:
                break
            scans.append(ScanPlan(**{**scan.__dict__, "recons": scan.recons[:keep]}))
            total += keep
        drafts.append((anatomy, tuple(scans)))
        p_index += 1
    n_patients = len(drafts)
    n_valid = int(round(cfg.valid_fraction * n_patients))
    if cfg.valid_fraction > 0:
        n_valid = min(max(n_valid, 1), n_patients - 1)
    order = rng_for(cfg.seed, _LAYOUT).permutation(n_patients)
    valid = set(int(i) for i in order[:n_valid])
    counters = {"train": 0, "valid": 0}
    plan = []
    for i, (anatomy, patient_scans) in enumerate(drafts):
        split = "valid" if i in valid else "train"
        counters[split] += 1
        plan.append(PatientPlan(index=i, split=split, number=counters[split], anatomy=anatomy, scans=patient_scans))
    return plan
