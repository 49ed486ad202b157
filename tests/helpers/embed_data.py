"""Tiny inputs for the embed-ct tests: a random-weight tiny CT-CLIP, a 64-token vocabulary, NIfTI volumes, a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from schemas.labels import N_LABELS
from schemas.manifest import ManifestRow, write_manifest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "there",
    "is",
    "no",
    "present",
    "not",
    "lung",
    "nodule",
    "effusion",
    "normal",
    "heart",
    "size",
    "the",
    "and",
    "of",
    "with",
    "mild",
    ".",
]
VOCAB = (
    SPECIALS
    + WORDS
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [f"##{chr(c)}" for c in range(ord("a"), ord("p"))]
)
REPORTS = [
    "The heart size is normal.",
    "Mild effusion with a lung nodule.",
    'No nodule. (Lung) is "normal".',
    "There is mild effusion of the lung.",
]


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    assert len(VOCAB) <= 64  # the tiny config's vocab_size
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


def write_checkpoint(path: Path, seed: int, config: str = "tiny") -> Path:
    import torch

    from pipeline.ctclip.checkpoint import save_ctclip
    from pipeline.ctclip.model import CTCLIP

    torch.manual_seed(seed)
    model = CTCLIP(config)
    with torch.no_grad():
        model.temperature.fill_(float(np.log(1 / 0.07)))
    save_ctclip(model, path)
    return path


def write_volume(path: Path, seed: int, shape=(40, 40, 24), spacing=(5.0, 5.0, 8.0)) -> Path:
    """A chest-like phantom: air around a soft-tissue cylinder with darker lungs, int16 with HU scaling in the header."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    hu = np.full(shape, -1000.0)
    body = x**2 + (y / 0.8) ** 2 < 0.8
    hu[body] = 40.0
    for cx in (-0.35, 0.35):
        lung = (x - cx) ** 2 / 0.08 + y**2 / 0.3 < 1
        hu[lung] = -850.0
    hu += rng.normal(0, 20, shape) + rng.uniform(-100, 100) * (np.arange(shape[2]) / shape[2])[None, None, :]
    stored = np.round(hu + 1024).astype(np.int16)
    img = nib.Nifti1Image(stored, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]))  # LPS voxel axes
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(path))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@dataclass
class EmbedInputs:
    root: Path
    manifest: Path
    checkpoint: Path
    tokenizer: Path
    rows: list[ManifestRow]


def build_inputs(root: Path, n_scans: int = 4, recons: int = 2, bad: bool = False, seed: int = 0) -> EmbedInputs:
    """``n_scans`` scans of ``recons`` reconstructions each (sharing a report); with ``bad``, a scan with a
    truncated volume, a good one and one too small to preprocess (0.1 mm voxels), and a scan without report text."""
    vols = root / "volumes"
    vols.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(seed)
    for s in range(n_scans + (2 if bad else 0)):
        report = REPORTS[s % len(REPORTS)]
        if bad and s == n_scans + 1:
            report = ""
        for r in range(1, recons + (2 if bad and s == n_scans else 1)):
            vid = f"valid_{s}_a_{r}"
            tiny_voxels = bad and s == n_scans and r == recons + 1
            path = write_volume(
                vols / f"{vid}.nii.gz",
                seed=seed * 1000 + s * 10 + r,
                spacing=(0.1, 0.1, 0.1) if tiny_voxels else (5.0, 5.0, 8.0),
            )
            if bad and s == n_scans and r == 1:
                truncate(path)
            labels = [int(v) for v in rng.integers(0, 2, N_LABELS)]
            labels[3] = None if s == 0 else labels[3]
            rows.append(
                ManifestRow(
                    volume_id=vid,
                    patient_id=f"valid_{s}",
                    scan_id=f"valid_{s}_a",
                    reconstruction_id=vid,
                    split="valid",
                    ct_path=f"volumes/{vid}.nii.gz",
                    findings=report[: len(report) // 2],
                    impressions=report[len(report) // 2 :],
                    labels=labels,
                )
            )
    manifest = root / "manifest.jsonl"
    write_manifest(rows, manifest)
    return EmbedInputs(root, manifest, write_checkpoint(root / "tiny.pt", seed=seed), write_vocab(root / "tok"), rows)
