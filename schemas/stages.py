"""Configs of the foundation commands: manifest builders and the synthetic data set."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.base import StageConfig


class CTRateManifestConfig(StageConfig):
    root: Path = Field(description="CT-RATE dataset folder (holds train/ or valid/ and the CSVs below it).")
    split: Literal["train", "valid"]
    out: Path = Field(description="Manifest to write (JSON Lines).")
    reports_csv: Path | None = Field(default=None, description="Reports CSV; found under root when omitted.")
    labels_csv: Path | None = Field(default=None, description="Labels CSV; found under root when omitted.")
    metadata_csv: Path | None = Field(default=None, description="Metadata CSV; found under root when omitted.")


class RadChestManifestConfig(StageConfig):
    volumes: Path = Field(description="Folder of RadChest-CT NumPy volumes (.npz/.npy, HU).")
    labels_csv: Path = Field(description="RadChest-CT labels CSV ('abnormality*location' columns).")
    spacing_csv: Path = Field(description="CSV with VolumeName, XSpacing, YSpacing, ZSpacing (mm per array axis).")
    orientation: str = Field(default="SPL", description="Axcodes of the stored array axes.")
    split: Literal["train", "valid", "test", "external"] = "external"
    out: Path


class GenericManifestConfig(StageConfig):
    volumes: Path = Field(description="Folder of NIfTI volumes (searched recursively).")
    table: Path = Field(description="CSV with VolumeName, Findings_EN, Impressions_EN and any of the 18 label columns.")
    split: Literal["train", "valid", "test", "external"] = "external"
    out: Path


class SynthConfig(StageConfig):
    out: Path = Field(description="Folder to write the synthetic CT-RATE into.")
    n: int = Field(default=64, ge=2, description="Number of volumes.")
    size: int = Field(default=96, ge=32, le=512, description="In-plane matrix size (voxels); slices scale with it.")
    seed: int = Field(default=0, description="Random seed; the output is a pure function of the config.")
    valid_fraction: float = Field(default=0.25, ge=0.0, lt=1.0, description="Share of patients in the valid split.")
    workers: int = Field(
        default=2, ge=1, le=64, description="Processes rendering volumes (does not change the output)."
    )
    overwrite: bool = Field(default=False, description="Replace the data set in a non-empty output folder.")

    def content_fields(self) -> dict:
        """The fields that decide the output's bytes (not where it goes or how fast it is made)."""
        return {k: getattr(self, k) for k in ("n", "size", "seed", "valid_fraction")}
