"""Options of ``x2ct-pipeline evaluate``, ``fewshot`` and ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import StageConfig
from schemas.drr import View

Device = Literal["auto", "cpu", "cuda"]
Checkpoint = str  # "best", "latest" or a path


class EvaluateConfig(StageConfig):
    run: Path = Field(description="Training run directory (train's --out).")
    drr: Path | None = Field(default=None, description="simulate-drr store of the split to evaluate.")
    embeddings: Path | None = Field(
        default=None, description="embed-ct cache of the same split (CT and report latents, prompts)."
    )
    cxr_manifest: Path | None = Field(
        default=None,
        description="Instead of drr + embeddings: a CXR manifest of real radiographs (manifest cxr); zero-shot only.",
    )
    out: Path = Field(description="Folder for metrics.json, CSV tables, figures and report.html.")
    checkpoint: Checkpoint = Field(default="best", description="'best', 'latest' or a checkpoint file of the run.")
    views: list[View] = Field(
        default_factory=lambda: list[View](["pa"]), min_length=1, description="Views evaluated, each apart."
    )
    labels: list[str] | None = Field(
        default=None, description="Restrict the metrics to these labels (default: the 18, or those the split has)."
    )
    threshold: float = Field(default=0.5, gt=0, lt=1, description="P(positive) >= threshold counts as positive.")
    n_resamples: int = Field(default=1000, ge=0, description="Bootstrap resamples over patients (0: no intervals).")
    seed: int = Field(default=0, description="Bootstrap seed.")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 50, 100], description="K of Recall@K and MAP@K.")
    batch_size: int = Field(default=64, ge=1, description="Radiographs per encoder forward pass.")
    device: Device = "auto"
    overwrite: bool = Field(default=False, description="Replace the files of an existing --out.")
    progress: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        simulated = self.drr is not None or self.embeddings is not None
        if self.cxr_manifest is not None and simulated:
            raise ValueError("give either drr and embeddings (simulated radiographs) or cxr_manifest, not both")
        if self.cxr_manifest is None and (self.drr is None or self.embeddings is None):
            raise ValueError("give drr and embeddings together (or cxr_manifest for real radiographs)")
        return self


class FewshotConfig(StageConfig):
    run: Path = Field(description="Training run directory; its encoder is probed.")
    train_drr: Path = Field(description="simulate-drr store whose items train the probes (CT-RATE train).")
    train_embeddings: Path = Field(description="embed-ct cache of the training split (labels, join).")
    test_drr: Path = Field(description="simulate-drr store the probes are scored on (CT-RATE valid).")
    test_embeddings: Path = Field(description="embed-ct cache of the test split.")
    out: Path = Field(description="Folder for fewshot.csv, fewshot_summary.csv and fewshot.png.")
    checkpoint: Checkpoint = Field(default="best", description="'best', 'latest' or a checkpoint file of the run.")
    baseline_init: Path | None = Field(
        default=None,
        description="Weights of the baseline (the same architecture before alignment), e.g. ImageNet weights; "
        "default: the run's own --init, else a random initialisation (seeded).",
    )
    view: View = Field(default="pa", description="View whose radiographs are encoded.")
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.025, 0.05, 0.10, 1.0])
    seeds: list[int] = Field(default_factory=lambda: [1024, 1234, 4321, 5678, 8765])
    lr: float = Field(default=5e-2, gt=0)
    probe_batch_size: int = Field(default=4096, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=1, description="Radiographs per encoder forward pass.")
    device: Device = "auto"
    overwrite: bool = Field(default=False, description="Replace the files of an existing --out.")
    progress: bool = True

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or not all(0 < f <= 1 for f in v):
            raise ValueError(f"fractions must lie in (0, 1], got {v}")
        return sorted(set(v))


class PredictConfig(StageConfig):
    run: Path = Field(description="Training run directory (needs only it: encoder, transform, prompt latents).")
    inputs: list[Path] = Field(min_length=1, description="Radiograph files (DICOM, PNG, JPEG) or folders of them.")
    out: Path = Field(description="Output table: .csv or .json.")
    checkpoint: Checkpoint = Field(default="best", description="'best', 'latest' or a checkpoint file of the run.")
    prompt_set: str = Field(default="x2ct_clip", description="Prompt set of the run's prompts.npz.")
    embeddings: Path | None = Field(default=None, description="embed-ct cache to retrieve the most similar CTs from.")
    top_k: int = Field(default=5, ge=1, description="CT volumes listed per radiograph when --embeddings is given.")
    keep_identifiers: bool = Field(
        default=False, description="Copy patient name, id, birth date, accession number from DICOM headers."
    )
    batch_size: int = Field(default=16, ge=1)
    device: Device = "auto"

    @field_validator("out")
    @classmethod
    def _suffix(cls, v: Path):
        if v.suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"--out must end in .csv or .json, got {v.name}")
        return v
