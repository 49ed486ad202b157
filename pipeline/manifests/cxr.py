"""``manifest cxr``: a real-radiograph set (MIMIC-CT style) from a folder of images and one CSV.

Table columns: ``CXRPath`` (relative to ``--images`` or absolute), ``PatientID``, optional
``ImageID`` (default: CXRPath without its suffix), ``StudyID``, ``ViewPosition``, and any of
the 18 CT-RATE label columns with 0/1 values; a label column the table lacks, or an empty
cell, is null (not annotated). As the other builders, bad rows are recorded as problems
(``<out>.problems.jsonl``) and left out: a missing image file, a label that is not 0 or 1,
a duplicate ImageID, an empty PatientID, a table without any of the 18 label columns.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pipeline.manifests.tables import Problem, TableError, TableRow, parse_labels
from schemas.cxr import CXRManifestConfig, CXRRow
from schemas.labels import CT_RATE_LABELS

REQUIRED = ("CXRPath", "PatientID")


@dataclass
class CXRBuildResult:
    rows: list[CXRRow]
    problems: list[Problem]


def build_cxr(cfg: CXRManifestConfig) -> CXRBuildResult:
    if not cfg.table.is_file():
        raise TableError(f"{cfg.table}: table not found")
    if not cfg.images.is_dir():
        raise TableError(f"{cfg.images}: image folder not found")
    try:
        text = cfg.table.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TableError(f"{cfg.table}: not UTF-8; re-save the table as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise TableError(f"{cfg.table}: missing column(s) {missing}; the table has {columns}")
    label_columns = [c for c in columns if c in CT_RATE_LABELS]
    if not label_columns:
        raise TableError(
            f"{cfg.table}: none of the 18 CT-RATE label columns (e.g. {CT_RATE_LABELS[1]!r}); nothing to evaluate"
        )
    problems: list[Problem] = []
    rows: list[CXRRow] = []
    seen: set[str] = set()
    source = str(cfg.table)
    for i, values in enumerate(reader, start=1):
        rel = (values.get("CXRPath") or "").strip()
        image_id = (values.get("ImageID") or "").strip() or Path(rel).stem
        if not rel:
            problems.append(Problem(source, i, None, "empty CXRPath"))
            continue
        path = Path(rel) if Path(rel).is_absolute() else cfg.images / rel
        if not path.is_file():
            problems.append(Problem(source, i, image_id, f"image {path} not found"))
            continue
        if image_id in seen:
            problems.append(Problem(source, i, image_id, "duplicate ImageID; the first row is kept"))
            continue
        labels = parse_labels(TableRow(i, values), source, image_id, problems, required=False)
        if labels is None:
            continue
        try:
            row = CXRRow(
                image_id=image_id,
                patient_id=(values.get("PatientID") or "").strip(),
                study_id=(values.get("StudyID") or "").strip() or None,
                cxr_path=str(path.resolve()),
                view=(values.get("ViewPosition") or "").strip() or None,
                split=cfg.split,
                labels=labels,
            )
        except ValidationError as e:
            why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            problems.append(Problem(source, i, image_id, f"row left out ({why})"))
            continue
        seen.add(image_id)
        rows.append(row)
    return CXRBuildResult(rows, problems)
