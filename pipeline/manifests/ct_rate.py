"""Build a manifest from a CT-RATE folder: volumes joined with the reports, labels and metadata CSVs."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.manifests.tables import Problem, TableError, TableRow, make_row, parse_labels, read_table
from schemas.labels import CT_RATE_LABELS
from schemas.manifest import CT_RATE_NAME, ManifestRow, parse_ct_rate_name, strip_volume_suffix
from schemas.stages import CTRateManifestConfig

REPORT_COLUMNS = ("VolumeName", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
LABEL_COLUMNS = ("VolumeName", *CT_RATE_LABELS)
_TABLE_FLAG = {"report": "--reports-csv", "label": "--labels-csv", "metadata": "--metadata-csv"}


@dataclass
class BuildResult:
    rows: list[ManifestRow]
    problems: list[Problem] = field(default_factory=list)


def find_volumes(root: Path, split: str) -> dict[str, Path]:
    """Every ``{split}_*.nii.gz`` under ``root`` whose name is a CT-RATE volume name."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob(f"{split}_*.nii*")):
        vid = strip_volume_suffix(path.name)
        if CT_RATE_NAME.match(vid) and vid not in found:
            found[vid] = path
    return found


def find_table(root: Path, split: str, kind: str) -> Path:
    """The one CSV under ``root`` whose name mentions ``kind`` and the split (train / valid[ation])."""
    candidates = [p for p in sorted(root.rglob("*.csv")) if kind in p.name.lower() and split in p.name.lower()]
    if len(candidates) != 1:
        found = [str(c) for c in candidates]
        raise TableError(
            f"{root}: expected one {kind} CSV for split {split!r}, found {len(found)} {found}; "
            f"pass {_TABLE_FLAG[kind]} explicitly"
        )
    return candidates[0]


def _metadata(meta: TableRow | None, source: str, vid: str, problems: list[Problem]) -> dict:
    """Spacing, slope and intercept of a metadata row; a value that is unusable (zero or negative
    spacing, a non-finite number) is recorded as a problem and left out, so the NIfTI header's is used."""
    if meta is None:
        return {"spacing": None, "slope": None, "intercept": None}
    out: dict[str, Any] = {
        "spacing": None,
        "slope": _float(meta, "RescaleSlope"),
        "intercept": _float(meta, "RescaleIntercept"),
    }
    try:
        xy = ast.literal_eval(meta.values["XYSpacing"])
        spacing = (float(xy[0]), float(xy[1]), float(meta.values["ZSpacing"]))
    except (ValueError, SyntaxError, TypeError, IndexError, KeyError, MemoryError, RecursionError):
        spacing = None  # absent or unparseable: the header's spacing is used
    if spacing is not None and not all(0.0 < s < 50.0 for s in spacing):
        problems.append(Problem(source, meta.index, vid, f"spacing {spacing} mm is not usable; the header's is used"))
        spacing = None
    out["spacing"] = spacing
    for key in ("slope", "intercept"):
        if out[key] is not None and not math.isfinite(out[key]):
            problems.append(Problem(source, meta.index, vid, f"{key} {out[key]} is not finite; left out"))
            out[key] = None
    return out


def _float(meta: TableRow, key: str) -> float | None:
    try:
        return float(meta.values[key])
    except (ValueError, KeyError, TypeError):
        return None


def build_ct_rate(cfg: CTRateManifestConfig) -> BuildResult:
    root = cfg.root
    if not root.is_dir():
        raise TableError(f"{root}: not a folder; --root must be the CT-RATE dataset folder")
    problems: list[Problem] = []
    reports_csv = cfg.reports_csv or find_table(root, cfg.split, "report")
    labels_csv = cfg.labels_csv or find_table(root, cfg.split, "label")
    metadata_csv = cfg.metadata_csv
    if metadata_csv is None:
        try:
            metadata_csv = find_table(root, cfg.split, "metadata")
        except TableError as e:  # metadata is optional: NIfTI headers carry spacing and scaling
            problems.append(Problem(str(root), None, None, f"no metadata table used ({e})"))
    reports = read_table(reports_csv, REPORT_COLUMNS, problems)
    labels = read_table(labels_csv, LABEL_COLUMNS, problems)
    metadata = read_table(metadata_csv, METADATA_COLUMNS, problems) if metadata_csv else {}
    volumes = find_volumes(root, cfg.split)

    for source, table in ((reports_csv, reports), (labels_csv, labels), (metadata_csv, metadata)):
        for vid, row in table.items():
            if not CT_RATE_NAME.match(vid) or not vid.startswith(cfg.split + "_"):
                problems.append(Problem(str(source), row.index, vid, f"not a CT-RATE {cfg.split} volume name"))
            elif vid not in volumes:
                problems.append(Problem(str(source), row.index, vid, "no volume file for this row"))

    rows: list[ManifestRow] = []
    for vid, path in volumes.items():
        report, label_row = reports.get(vid), labels.get(vid)
        if report is None:
            problems.append(Problem(str(path), None, vid, f"volume has no report in {reports_csv}"))
            continue
        if label_row is None:
            problems.append(Problem(str(path), None, vid, f"volume has no labels in {labels_csv}"))
            continue
        label_values = parse_labels(label_row, str(labels_csv), vid, problems)
        if label_values is None:
            continue
        split, patient, scan, recon = parse_ct_rate_name(vid)
        meta = metadata.get(vid)
        manifest_row = make_row(
            problems,
            str(path),
            None,
            volume_id=vid,
            patient_id=patient,
            scan_id=scan,
            reconstruction_id=recon,
            split=split,
            ct_path=str(path.resolve()),
            findings=(report.values.get("Findings_EN") or "").strip(),
            impressions=(report.values.get("Impressions_EN") or "").strip(),
            labels=label_values,
            **_metadata(meta, str(metadata_csv), vid, problems),
        )
        if manifest_row is not None:
            rows.append(manifest_row)
    return BuildResult(rows, problems)
