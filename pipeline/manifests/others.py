"""Manifests for sets that are not laid out like CT-RATE.

* RadChest-CT style: NumPy HU arrays without a header, spacing from a CSV,
  labels given per abnormality and location and mapped to the 18 CT-RATE labels
  where they overlap (``data_manifests/radchest_ct_mapping.json``).
* Generic: a folder of NIfTI files and one CSV of reports and labels.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.manifests.ct_rate import BuildResult
from pipeline.manifests.tables import Problem, TableError, TableRow, make_row, parse_labels, read_table
from schemas.labels import CT_RATE_LABELS, radchest_mapping
from schemas.manifest import CT_RATE_NAME, parse_ct_rate_name, strip_volume_suffix
from schemas.stages import GenericManifestConfig, RadChestManifestConfig


def _index_files(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise TableError(f"{folder}: not a folder of volumes")
    out: dict[str, Path] = {}
    for pattern in patterns:
        for path in sorted(folder.rglob(pattern)):
            out.setdefault(strip_volume_suffix(path.name), path)
    return out


def _group_ids(vid: str) -> tuple[str, str, str]:
    """Patient, scan and reconstruction ids: parsed from CT-RATE style names, else the id itself."""
    if CT_RATE_NAME.match(vid):
        _, patient, scan, recon = parse_ct_rate_name(vid)
        return patient, scan, recon
    return vid, vid, vid


def map_radchest_labels(row: TableRow, source: str, vid: str, problems: list[Problem]) -> list[int | None] | None:
    """CT-RATE labels from RadChest ``abnormality*location`` columns (or bare ``abnormality`` columns)."""
    by_abnormality: dict[str, list[str]] = {}
    for column, value in row.values.items():
        if column == "VolumeName" or column is None:
            continue
        by_abnormality.setdefault(column.split("*", 1)[0].strip().lower(), []).append(value)
    labels: list[int | None] = []
    for name in CT_RATE_LABELS:
        values = [v for abn in radchest_mapping().get(name, ()) for v in by_abnormality.get(abn, [])]
        if not values:
            labels.append(None)
            continue
        try:
            numbers = {float(v) for v in values}
        except (TypeError, ValueError):
            numbers = {-1.0}
        if not numbers <= {0.0, 1.0}:
            problems.append(
                Problem(source, row.index, vid, f"values for {name!r} are not all 0 or 1: {sorted(set(values))[:5]}")
            )
            return None
        labels.append(int(1.0 in numbers))
    return labels


def build_radchest(cfg: RadChestManifestConfig) -> BuildResult:
    problems: list[Problem] = []
    volumes = _index_files(cfg.volumes, ("*.npz", "*.npy"))
    labels = read_table(cfg.labels_csv, ("VolumeName",), problems)
    spacing = read_table(cfg.spacing_csv, ("VolumeName", "XSpacing", "YSpacing", "ZSpacing"), problems)
    for vid, row in labels.items():
        if vid not in volumes:
            problems.append(Problem(str(cfg.labels_csv), row.index, vid, "no volume file for this row"))
    rows = []
    for vid, path in volumes.items():
        if vid not in labels:
            problems.append(Problem(str(path), None, vid, f"volume has no labels in {cfg.labels_csv}"))
            continue
        if vid not in spacing:
            problems.append(Problem(str(path), None, vid, f"volume has no spacing in {cfg.spacing_csv}"))
            continue
        try:
            sp = tuple(float(spacing[vid].values[k]) for k in ("XSpacing", "YSpacing", "ZSpacing"))
        except ValueError:
            problems.append(Problem(str(cfg.spacing_csv), spacing[vid].index, vid, "spacing is not numeric"))
            continue
        mapped = map_radchest_labels(labels[vid], str(cfg.labels_csv), vid, problems)
        if mapped is None:
            continue
        patient, scan, recon = _group_ids(vid)
        manifest_row = make_row(
            problems,
            str(path),
            None,
            volume_id=vid,
            patient_id=patient,
            scan_id=scan,
            reconstruction_id=recon,
            split=cfg.split,
            ct_path=str(path.resolve()),
            labels=mapped,
            spacing=sp,
            orientation=cfg.orientation,
        )
        if manifest_row is not None:
            rows.append(manifest_row)
    return BuildResult(rows, problems)


def build_generic(cfg: GenericManifestConfig) -> BuildResult:
    problems: list[Problem] = []
    volumes = _index_files(cfg.volumes, ("*.nii.gz", "*.nii"))
    table = read_table(cfg.table, ("VolumeName",), problems)
    rows = []
    for vid, row in table.items():
        if vid not in volumes:
            problems.append(Problem(str(cfg.table), row.index, vid, "no volume file for this row"))
    for vid, path in volumes.items():
        if vid not in table:
            problems.append(Problem(str(path), None, vid, f"volume has no row in {cfg.table}"))
            continue
        row = table[vid]
        labels = parse_labels(row, str(cfg.table), vid, problems, required=False)
        if labels is None:
            continue
        patient, scan, recon = _group_ids(vid)
        manifest_row = make_row(
            problems,
            str(path),
            None,
            volume_id=vid,
            patient_id=patient,
            scan_id=scan,
            reconstruction_id=recon,
            split=cfg.split,
            ct_path=str(path.resolve()),
            findings=(row.values.get("Findings_EN") or "").strip(),
            impressions=(row.values.get("Impressions_EN") or "").strip(),
            labels=labels,
            cxr_path=(row.values.get("CXRPath") or None),
        )
        if manifest_row is not None:
            rows.append(manifest_row)
    return BuildResult(rows, problems)
