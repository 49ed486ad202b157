"""Manifest rows and the manifest file (JSON Lines, one :class:`ManifestRow` a line).

A manifest is the only thing every stage reads. Its identity is the sha256 of
the file's bytes (:func:`manifest_sha256`), recorded by every store made from it.
Relative paths in a row are resolved against the manifest file's folder.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import InputMissingError, PipelineError
from schemas.labels import N_LABELS, check_label_values
from schemas.provenance import file_sha256

Split = Literal["train", "valid", "test", "external"]

# split_patientID_scanID_reconstructionID, e.g. valid_53_a_1 (CT-RATE naming).
CT_RATE_NAME = re.compile(r"^(?P<split>train|valid)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)$")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")


def strip_volume_suffix(name: str) -> str:
    """``valid_53_a_1.nii.gz`` -> ``valid_53_a_1``."""
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_ct_rate_name(volume_id: str) -> tuple[str, str, str, str]:
    """Split a CT-RATE volume name into (split, patient_id, scan_id, reconstruction_id).

    The ids are cumulative so that they are unique across the data set:
    ``valid_53_a_1`` -> ``("valid", "valid_53", "valid_53_a", "valid_53_a_1")``.
    """
    match = CT_RATE_NAME.match(strip_volume_suffix(volume_id))
    if match is None:
        raise ValueError(
            f"{volume_id!r} is not a CT-RATE volume name; expected split_patient_scan_reconstruction "
            "such as 'valid_53_a_1'"
        )
    patient = f"{match['split']}_{match['patient']}"
    scan = f"{patient}_{match['scan']}"
    return match["split"], patient, scan, f"{scan}_{match['recon']}"


class ManifestRow(BaseModel):
    """One CT volume with its report, labels and, for external sets, a real CXR."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volume_id: str = Field(min_length=1, description="Unique id, e.g. 'valid_53_a_1'.")
    patient_id: str = Field(min_length=1, description="Patient group, e.g. 'valid_53'.")
    scan_id: str = Field(min_length=1, description="Scan group (shares one report), e.g. 'valid_53_a'.")
    reconstruction_id: str = Field(min_length=1, description="Reconstruction, e.g. 'valid_53_a_1'.")
    split: Split
    ct_path: str = Field(min_length=1, description="NIfTI (.nii/.nii.gz) or NumPy (.npy/.npz) volume.")
    findings: str = ""
    impressions: str = ""
    labels: list[int | None] = Field(
        description=f"{N_LABELS} values in CT-RATE order: 1, 0, or null where the source has no such label."
    )
    spacing: tuple[float, float, float] | None = Field(
        default=None, description="Voxel spacing (mm) along the array's three axes; required for NumPy volumes."
    )
    orientation: str | None = Field(
        default=None,
        description="Anatomical direction each array axis points to (nibabel axcodes, e.g. 'LPS'); NumPy volumes only.",
    )
    slope: float | None = Field(default=None, description="Rescale slope from a CSV (see HU policy).")
    intercept: float | None = Field(default=None, description="Rescale intercept from a CSV (see HU policy).")
    cxr_path: str | None = Field(default=None, description="A real chest radiograph, for external sets.")

    @field_validator("volume_id", "patient_id", "scan_id", "reconstruction_id", "ct_path", "cxr_path")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return check_storable_name(v)

    @field_validator("findings", "impressions")
    @classmethod
    def _check_text(cls, v: str) -> str:
        bad = unstorable_characters(v, allow_control=True)
        if bad:
            raise ValueError(f"holds characters that are not valid text ({bad}); fix the source table")
        return v

    @field_validator("slope", "intercept")
    @classmethod
    def _check_finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: list[int | None]) -> list[int | None]:
        return check_label_values(v)

    @field_validator("spacing")
    @classmethod
    def _check_spacing(cls, v):
        if v is not None and not all(0.0 < s < 50.0 for s in v):
            raise ValueError(f"spacing must be three positive millimetre values below 50, got {v}")
        return v

    @field_validator("orientation")
    @classmethod
    def _check_orientation(cls, v):
        if v is None:
            return v
        v = v.upper()
        axis_of = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(v) != 3 or sorted(axis_of.get(c, -1) for c in v) != [0, 1, 2]:
            raise ValueError(f"orientation must name one of L/R, A/P and S/I per axis, e.g. 'LPS'; got {v!r}")
        return v

    @model_validator(mode="after")
    def _check_numpy_needs_spacing(self):
        if self.ct_path.endswith((".npy", ".npz")) and self.spacing is None:
            raise ValueError("a NumPy volume has no header: give 'spacing' (mm per array axis)")
        return self

    @property
    def report(self) -> str:
        """Findings and impressions as one text (raw; cleaning is the text encoder's business)."""
        return " ".join(t for t in (self.findings.strip(), self.impressions.strip()) if t)

    def resolved_ct_path(self, manifest_dir: Path) -> Path:
        p = Path(self.ct_path)
        return p if p.is_absolute() else manifest_dir / p


def check_storable_name(v: str | None) -> str | None:
    """Validator of ids and paths. They become HDF5/Zarr strings and file names; a control character
    (NUL above all) or a lone surrogate cannot be stored there, and one such row would make a whole
    store unusable."""
    bad = unstorable_characters(v or "", allow_control=False)
    if bad:
        raise ValueError(f"holds characters a store or file name cannot hold ({bad}); fix the source table")
    return v


def unstorable_characters(text: str, allow_control: bool) -> str:
    """The characters of ``text`` that UTF-8 cannot encode (lone surrogates) or, unless
    ``allow_control``, that are control characters (NUL, newline, ESC, ...), as escapes; '' if none.
    Tabs and newlines are allowed in free text, never NUL."""
    bad = {
        c
        for c in text
        if unicodedata.category(c) == "Cs" or c == "\x00" or (not allow_control and unicodedata.category(c) == "Cc")
    }
    return ", ".join(sorted(repr(c)[1:-1] for c in bad))


class ManifestError(PipelineError, ValueError):
    """A manifest line failed validation; the message names the file, line, volume and field."""


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "(row)"
        parts.append(f"field '{field}': {e['msg']}")
    return "; ".join(parts)


def read_manifest(path: str | Path, allow_empty: bool = False) -> list[ManifestRow]:
    """Read and validate a manifest; raises :class:`ManifestError` naming the first bad line.

    A manifest without rows is refused unless ``allow_empty``: a stage given one would
    do nothing and report success (or, with --overwrite, empty a full store).
    """
    rows = [row for _, _, row in iter_manifest(path)]
    if not rows and not allow_empty:
        raise EmptyManifestError(path)
    return rows


def iter_manifest(path: str | Path) -> Iterator[tuple[int, bytes, ManifestRow]]:
    """The validated rows of a manifest one at a time, each with the byte offset where its line
    starts and the line's bytes; the checks and messages of :func:`read_manifest`, without holding
    the rows (a driver of 50k rows keeps only what it needs of each, see ``pipeline.manifest_index``)."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise InputMissingError(f"manifest {path} {what}; build one with `x2ct-pipeline manifest ...`")
    seen: dict[str, int] = {}  # volume id -> line, for the duplicate check
    offset = 0
    with path.open("rb") as f:
        # Lines end at b"\n" only (binary iteration; not splitlines: U+2028 may sit in a string). UTF-8
        # never holds the byte 0x0A inside a character, so these are the text's lines.
        for lineno, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            row = parse_manifest_line(path, lineno, line)
            if row is None:
                continue
            if row.volume_id in seen:
                raise ManifestError(
                    f"{path}:{lineno}: duplicate volume_id {row.volume_id!r} (first on line {seen[row.volume_id]})"
                )
            seen[row.volume_id] = lineno
            yield start, line, row


def parse_manifest_line(path: Path, lineno: int, line: bytes) -> ManifestRow | None:
    """One manifest line as a validated row (``None`` for a blank line); :class:`ManifestError` names the line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{path}:{lineno}: not UTF-8 (byte 0x{line[e.start]:02x}); manifests are UTF-8 JSON Lines: "
            "rebuild it with `x2ct-pipeline manifest ...` or re-save it as UTF-8"
        ) from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    vid = shown(str(data.get("volume_id", "?"))) if isinstance(data, dict) else "?"
    try:
        return ManifestRow.model_validate(data)
    except ValidationError as e:
        raise ManifestError(f"{path}:{lineno} (volume {vid}): {_describe(e)}") from None


class EmptyManifestError(ManifestError):
    def __init__(self, path: str | Path):
        super().__init__(f"{path}: the manifest has no rows; nothing to do (was it built from the right folder?)")


def shown(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped, so a message stays one printable line."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def storable_line(text: str) -> str:
    """A failure reason as a store can hold it: one line, whitespace runs as one space, other control
    characters and lone surrogates escaped (a NUL in an HDF5 string would make the merge fail)."""
    return shown(" ".join(text.split()))


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> str:
    """Write rows atomically (temporary file, then rename); returns the manifest sha256."""
    write_rows_jsonl(rows, path, "volume_id")
    return manifest_sha256(path)


def write_rows_jsonl(rows: Iterable[BaseModel], path: str | Path, id_field: str) -> None:
    """One JSON object a line, atomically; an existing file is replaced only if it holds such rows
    (its first line has ``id_field``)."""
    path = Path(path)
    refuse_foreign_output(path, id_field)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a part of the path is a file, no permission
        raise ManifestError(f"cannot create the folder of {path} ({e.strerror}); choose another --out") from None
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(row.model_dump_json(exclude_none=True) + "\n")
    tmp.replace(path)


def refuse_foreign_output(path: Path, id_field: str = "volume_id") -> None:
    """A manifest replaces only a manifest: an existing ``path`` that is a folder, a device, or a
    file whose first line is not a manifest row (a CT, a CSV, a cache) is refused, never overwritten."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise ManifestError(f"{path} exists and is not a regular file; give a .jsonl file name for the manifest")
    with path.open("rb") as f:
        head = f.read(1 << 16)
    first = next((line for line in head.split(b"\n") if line.strip()), b"")
    ok = not head.strip() or (first.lstrip().startswith(b"{") and f'"{id_field}"'.encode() in first)
    if not ok:
        raise ManifestError(f"{path} exists and is not a manifest; it is left as it is: choose another --out")


def manifest_sha256(path: str | Path) -> str:
    return file_sha256(path)
