"""Write the synthetic data set in CT-RATE's layout, naming and CSV formats.

Layout (what ``x2ct-pipeline manifest ct-rate`` reads)::

    DIR/train/train_1/train_1_a/train_1_a_1.nii.gz
    DIR/valid/valid_1/valid_1_a/valid_1_a_2.nii.gz
    DIR/radiology_text_reports/{train,validation}_reports.csv      VolumeName, Findings_EN, Impressions_EN
    DIR/multi_abnormality_labels/{train,valid}_predicted_labels.csv VolumeName + the 18 labels
    DIR/metadata/{train,validation}_metadata.csv                   VolumeName, RescaleSlope, RescaleIntercept,
                                                                   XYSpacing, ZSpacing
    DIR/synth_provenance.json                                      how it was made

Volumes are rendered one scan per task (its reconstructions share the anatomy,
vessel trees and lesions) in a process pool; each file is written under a
hidden temporary name and renamed when complete, so a killed run loses only the
volumes in flight and rerunning the same command finishes it. Every file but the
provenance record (which holds a timestamp) is a pure function of the config.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline.runtime import (
    atomic_path,
    atomic_write_text,
    log_path,
    log_to_file,
    make_folder,
    output_lock,
    refuse_non_folder,
    remove_temporaries,
)
from pipeline.synth.plan import PatientPlan, ReconPlan, ScanPlan, build_plan, rng_for
from pipeline.synth.reports import write_report
from schemas.errors import PipelineError
from schemas.labels import CT_RATE_LABELS
from schemas.stages import SynthConfig

MARKER = ".synth_config.json"  # the content config, written first: a rerun of the same config resumes
OUR_ENTRIES = (
    "train",
    "valid",
    "radiology_text_reports",
    "multi_abnormality_labels",
    "metadata",
    "synth_provenance.json",
    MARKER,
)
_REPORT_KEY = 6
log = logging.getLogger(__name__)


class SynthOutputError(PipelineError, ValueError):
    """The output folder cannot be used as asked; the message says what to do."""


def affine_for(grid, table_offset) -> np.ndarray:
    """Voxel -> RAS+ affine of a reconstruction: axes L, P, S (diag(-sx, -sy, +sz)) at the scanner's table position."""
    sx, sy, sz = grid.spacing
    lps0 = np.asarray(grid.origin, float) + np.asarray(table_offset, float)  # LPS world of voxel (0, 0, 0)
    return np.array([[-sx, 0, 0, -lps0[0]], [0, -sy, 0, -lps0[1]], [0, 0, sz, lps0[2]], [0, 0, 0, 1.0]])


def volume_path(root: Path, patient: PatientPlan, scan: ScanPlan, recon: ReconPlan) -> Path:
    name = patient.volume_name(scan, recon)
    pid = f"{patient.split}_{patient.number}"
    return root / patient.split / pid / f"{pid}_{scan.scan_id}" / f"{name}.nii.gz"


def patient_trees(patient: PatientPlan):
    """The patient's vessel and airway trees, grown in the normal chest: the same for every scan and finding."""
    from pipeline.synth.airways import grow_lung_trees
    from pipeline.synth.anatomy import Chest

    return grow_lung_trees(Chest(patient.anatomy), patient.anatomy.seed_anatomy)


def render_volume(patient: PatientPlan, scan: ScanPlan, recon: ReconPlan, size: int, trees=None) -> np.ndarray:
    """The HU array (float32, LPS voxel order, padding -2048) of one reconstruction, as the scanner writes it."""
    from pipeline.synth.phantom import render
    from pipeline.synth.scanner import KERNELS, scanner_image

    chest = patient.chest(scan)
    if trees is None:
        trees = patient_trees(patient)
    grid = patient.grid(scan, recon, size)
    canvas = render(chest, scan.findings, trees, grid, scan.scan_seed)
    fov_center = (-patient.anatomy.fov_offset[0], -patient.anatomy.fov_offset[1])
    return scanner_image(canvas, KERNELS[recon.kernel], np.random.default_rng(recon.noise_seed), fov_center)


def _write_nifti(path: Path, hu: np.ndarray, affine: np.ndarray, storage: str) -> None:
    import nibabel as nib

    from pipeline.synth.scanner import STORAGE_OFFSET, stored_values

    img = nib.Nifti1Image(stored_values(hu, storage), affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if storage == "offset":
        img.header.set_slope_inter(1.0, -float(STORAGE_OFFSET))
    with atomic_path(path) as tmp:  # ends in .nii.gz: nibabel picks the format from the name
        nib.save(img, str(tmp))


def _render_scan(args: tuple[PatientPlan, ScanPlan, int, str]) -> list[str]:
    patient, scan, size, root = args
    todo = [r for r in scan.recons if not volume_path(Path(root), patient, scan, r).is_file()]  # finished: kept
    trees = patient_trees(patient) if todo else None
    for recon in todo:
        remove_temporaries(volume_path(Path(root), patient, scan, recon))  # of a killed run
        hu = render_volume(patient, scan, recon, size, trees)
        grid = patient.grid(scan, recon, size)
        _write_nifti(
            volume_path(Path(root), patient, scan, recon), hu, affine_for(grid, scan.table_offset), recon.storage
        )
    return [patient.volume_name(scan, r) for r in scan.recons]


@dataclass(frozen=True)
class VolumeRecord:
    """One row of the CSVs: what the manifest will read back."""

    name: str
    split: str
    findings: str
    impressions: str
    labels: list[int]
    spacing: tuple[float, float, float]


def records(cfg: SynthConfig, plan: list[PatientPlan]) -> list[VolumeRecord]:
    out = []
    for patient in plan:
        for s_index, scan in enumerate(patient.scans):
            findings_text, impressions = write_report(
                scan.findings, rng_for(cfg.seed, _REPORT_KEY, patient.index, s_index)
            )
            for recon in scan.recons:
                sx = scan.fov_mm / cfg.size
                out.append(
                    VolumeRecord(
                        patient.volume_name(scan, recon),
                        patient.split,
                        findings_text,
                        impressions,
                        list(scan.findings.labels),
                        (sx, sx, recon.slice_mm),
                    )
                )
    return out


def _natural(name: str) -> tuple:
    split, patient, scan, recon = name.split("_")
    return split, int(patient), scan, int(recon)


def _fmt(v: float) -> str:
    return repr(round(float(v), 6))


def write_tables(root: Path, recs: list[VolumeRecord]) -> None:
    tables = {
        "radiology_text_reports": (
            "{}_reports.csv",
            ["VolumeName", "Findings_EN", "Impressions_EN"],
            lambda r: [r.name + ".nii.gz", r.findings, r.impressions],
        ),
        "multi_abnormality_labels": (
            "{}_predicted_labels.csv",
            ["VolumeName", *CT_RATE_LABELS],
            lambda r: [r.name + ".nii.gz", *r.labels],
        ),
        "metadata": (
            "{}_metadata.csv",
            ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
            lambda r: [
                r.name + ".nii.gz",
                1,
                -1024,
                f"[{_fmt(r.spacing[0])}, {_fmt(r.spacing[1])}]",
                _fmt(r.spacing[2]),
            ],
        ),
    }
    # CT-RATE spells the valid split 'validation' in the reports and metadata file names
    split_word = {
        "radiology_text_reports": {"train": "train", "valid": "validation"},
        "multi_abnormality_labels": {"train": "train", "valid": "valid"},
        "metadata": {"train": "train", "valid": "validation"},
    }
    for folder, (pattern, header, row) in tables.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid"):
            path = root / folder / pattern.format(split_word[folder][split])
            rows = sorted((r for r in recs if r.split == split), key=lambda r: _natural(r.name))
            with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(header)
                for r in rows:
                    w.writerow(row(r))


def _marker_text(cfg: SynthConfig) -> str:
    return json.dumps(cfg.content_fields(), sort_keys=True) + "\n"


def prepare_output(cfg: SynthConfig) -> bool:
    """Make ``cfg.out`` ready; True when it resumes an unfinished (or finished) run of the same config.

    A folder holding a synthetic set made with the same n, size, seed and valid fraction is resumed: finished
    volumes are kept, the rest are made. Any other non-empty folder is refused unless ``overwrite``, which
    replaces only a synthetic set.
    """
    out = cfg.out
    refuse_non_folder(out, "a data set")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()):
        same = marker.is_file() and marker.read_text(encoding="utf-8") == _marker_text(cfg)
        if same and not cfg.overwrite:
            return True
        if not cfg.overwrite:
            raise SynthOutputError(
                f"{out}: folder is not empty (and not a synthetic set of this config, which would "
                "be resumed); pass --overwrite to replace a synthetic data set there, or choose "
                "another --out"
            )
        others = sorted(p.name for p in out.iterdir() if p.name not in OUR_ENTRIES)
        if others:
            raise SynthOutputError(
                f"{out}: --overwrite replaces only a synthetic data set, but the folder also holds "
                f"{others[:5]}; choose an empty --out"
            )
        for name in OUR_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    make_folder(out, out)
    atomic_write_text(marker, _marker_text(cfg))
    return False


def write_provenance(cfg: SynthConfig) -> None:
    from pipeline._version import __version__
    from schemas.provenance import Provenance, json_sha256

    prov = Provenance(
        stage="synth",
        software_version=__version__,
        config=json.loads(cfg.model_dump_json()),
        config_sha256=json_sha256(cfg.content_fields()),
    )
    atomic_write_text(cfg.out / "synth_provenance.json", prov.model_dump_json(indent=2) + "\n")


def synthesize(cfg: SynthConfig, progress: bool = True) -> list[VolumeRecord]:
    """Write the whole data set (or finish an interrupted run); returns the CSV records (one per volume).
    One run per folder at a time (``<out>.lock``); the log goes to ``<out>.log`` beside the folder."""
    start = time.perf_counter()
    refuse_non_folder(cfg.out, "a data set")  # before the lock file is made beside it
    with output_lock(cfg.out, "synth"), ExitStack() as log_file:
        recs = _synthesize(cfg, progress, log_file)
        splits = {s: sum(r.split == s for r in recs) for s in ("train", "valid")}
        log.info(
            "wrote %d volumes (%d train, %d valid) to %s in %.1f s",
            len(recs),
            splits["train"],
            splits["valid"],
            cfg.out,
            time.perf_counter() - start,
        )
        return recs


def _synthesize(cfg: SynthConfig, progress: bool, log_file: ExitStack) -> list[VolumeRecord]:
    from tqdm import tqdm

    resumed = prepare_output(cfg)
    log_file.enter_context(log_to_file(log_path(cfg.out)))  # the folder is accepted
    log.info("%s: %s %s", cfg.out, "resuming" if resumed else "writing", json.dumps(cfg.content_fields()))
    plan = build_plan(cfg)
    tasks = [(patient, scan, cfg.size, str(cfg.out)) for patient in plan for scan in patient.scans]
    n_volumes = sum(len(s.recons) for _, s, _, _ in tasks)
    bar = tqdm(total=n_volumes, desc="synth", unit="vol", disable=not progress)
    if cfg.workers > 1 and len(tasks) > 1:
        # fork: workers inherit the imported modules (no re-import of __main__, fast start)
        ctx = get_context("fork") if "fork" in __import__("multiprocessing").get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            for names in pool.map(_render_scan, tasks, chunksize=1):
                bar.update(len(names))
    else:
        for task in tasks:
            bar.update(len(_render_scan(task)))
    bar.close()
    recs = records(cfg, plan)
    write_tables(cfg.out, recs)
    write_provenance(cfg)
    return recs
