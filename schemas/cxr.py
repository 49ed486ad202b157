"""Real-radiograph sets for external validation: the CXR manifest (JSON Lines, one :class:`CXRRow` a line).

A MIMIC-CT style set pairs real chest radiographs with CT-derived labels for a subset of
the 18 (MIMIC-CT: 11 of them, ``data_manifests/mimic_ct_labels.json``). Labels the set does
not have are null; evaluation leaves them out. Relative image paths are resolved against
the manifest's folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.base import StageConfig
from schemas.errors import PipelineError
from schemas.labels import N_LABELS, check_label_values
from schemas.manifest import Split, check_storable_name, write_rows_jsonl


class CXRManifestError(PipelineError, ValueError):
    """A CXR manifest line failed validation; the message names the file, line and field."""


class CXRManifestConfig(StageConfig):
    """Options of ``x2ct-pipeline manifest cxr``."""

    images: Path = Field(description="Folder the table's relative CXRPath values are under.")
    table: Path = Field(
        description="CSV: CXRPath, PatientID, optional ImageID, StudyID, ViewPosition, and any of the 18 label columns."
    )
    out: Path = Field(description="CXR manifest to write (.jsonl).")
    split: Split = Field(default="external")


class CXRRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_id: str = Field(min_length=1, description="Unique id of the radiograph.")
    patient_id: str = Field(min_length=1, description="Patient (the bootstrap resamples patients).")
    study_id: str | None = Field(default=None, description="Study / admission the labels come from.")
    cxr_path: str = Field(min_length=1, description="DICOM, PNG or JPEG file of the radiograph.")
    view: str | None = Field(default=None, description="View position as the source gives it (PA, AP, LATERAL).")
    split: Split = "external"
    labels: list[int | None] = Field(description=f"{N_LABELS} values in CT-RATE order: 1, 0, or null (not annotated).")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: list[int | None]) -> list[int | None]:
        return check_label_values(v)

    @field_validator("image_id", "patient_id", "study_id", "cxr_path", "view")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return check_storable_name(v)

    def resolved_path(self, manifest_dir: Path) -> Path:
        p = Path(self.cxr_path)
        return p if p.is_absolute() else manifest_dir / p


def read_cxr_manifest(path: str | Path) -> list[CXRRow]:
    path = Path(path)
    if not path.is_file():
        raise CXRManifestError(f"CXR manifest {path} does not exist; build one with `x2ct-pipeline manifest cxr`")
    rows: list[CXRRow] = []
    seen: set[str] = set()
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = CXRRow.model_validate(json.loads(line))
            except json.JSONDecodeError as e:
                raise CXRManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except ValidationError as e:
                why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise CXRManifestError(f"{path}:{lineno}: {why}") from None
            if row.image_id in seen:
                raise CXRManifestError(f"{path}:{lineno}: duplicate image_id {row.image_id!r}")
            seen.add(row.image_id)
            rows.append(row)
    if not rows:
        raise CXRManifestError(f"CXR manifest {path} holds no rows")
    return rows


def write_cxr_manifest(rows: Iterable[CXRRow], path: str | Path) -> None:
    """Atomically, as a CT manifest; an existing file that is not a CXR manifest is refused."""
    write_rows_jsonl(rows, path, "image_id")
