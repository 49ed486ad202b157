"""Reading the CSV tables that manifests are built from, recording problems instead of stopping."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from schemas.errors import PipelineError
from schemas.labels import CT_RATE_LABELS
from schemas.manifest import ManifestRow, shown, strip_volume_suffix


class TableError(PipelineError, ValueError):
    """A table cannot be used at all (missing file or columns); the message names the file and the fix."""


@dataclass(frozen=True)
class Problem:
    source: str
    row: int | None  # 1-based data row (the header is row 0); None for whole-item problems
    volume_id: str | None
    problem: str

    def line(self) -> str:
        where = self.source + (f" row {self.row}" if self.row is not None else "")
        return shown(f"{where}: {self.volume_id or '-'}: {self.problem}")  # one printable line


@dataclass(frozen=True)
class TableRow:
    index: int  # 1-based data row, for messages
    values: dict[str, str]


def read_table(path: Path, required: Iterable[str], problems: list[Problem]) -> dict[str, TableRow]:
    """Rows of a CSV keyed by VolumeName (suffix stripped).

    Bad rows (undecodable text, empty or duplicate VolumeName) are recorded in
    ``problems`` and left out; a missing file or column raises :class:`TableError`.
    """
    if not path.is_file():
        raise TableError(f"{path}: table not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        bad_bytes = False
    except UnicodeDecodeError as e:
        line_no = raw[: e.start].count(b"\n") + 1
        problems.append(
            Problem(
                str(path),
                None,
                None,
                f"not UTF-8 (first bad byte on line {line_no}); rows with undecodable text are skipped; re-save the file as UTF-8",
            )
        )
        text = raw.decode("utf-8-sig", errors="replace")
        bad_bytes = True
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in required if c not in columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {missing}; the table has {columns}")
    out: dict[str, TableRow] = {}
    for i, row in enumerate(reader, start=1):
        vid = strip_volume_suffix((row.get("VolumeName") or "").strip())
        if not vid:
            problems.append(Problem(str(path), i, None, "empty VolumeName"))
            continue
        if bad_bytes and any("\ufffd" in (v or "") for v in row.values()):
            problems.append(Problem(str(path), i, vid, "text is not UTF-8; row skipped"))
            continue
        if vid in out:
            problems.append(Problem(str(path), i, vid, "duplicate VolumeName; the first row is kept"))
            continue
        out[vid] = TableRow(i, row)
    return out


def parse_labels(
    row: TableRow, source: str, vid: str, problems: list[Problem], required: bool = True
) -> list[int | None] | None:
    """The 18 CT-RATE labels of a table row; None (and a recorded problem) if any value is not 0 or 1.

    With ``required=False`` a missing or empty column gives a null label instead.
    """
    index = row.index
    labels: list[int | None] = []
    for name in CT_RATE_LABELS:
        value = row.values.get(name)
        if value is None or value.strip() == "":
            if required:
                problems.append(Problem(source, index, vid, f"label {name!r} is empty; expected 0 or 1"))
                return None
            labels.append(None)
            continue
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number not in (0.0, 1.0):
            problems.append(Problem(source, index, vid, f"label {name!r} is {value!r}; expected 0 or 1"))
            return None
        labels.append(int(number))
    return labels


def make_row(problems: list[Problem], source: str, index: int | None, **fields) -> ManifestRow | None:
    """A manifest row, or None and a recorded problem if a value is not one a manifest can hold
    (control characters in an id, a non-finite slope, ...): a builder never stops on a bad row."""
    try:
        return ManifestRow(**fields)
    except ValidationError as e:
        why = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'row'}: {err['msg']}" for err in e.errors())
        problems.append(Problem(source, index, shown(str(fields.get("volume_id", ""))), f"row left out ({why})"))
        return None


def write_problems(problems: list[Problem], manifest_path: Path) -> Path | None:
    """Problems go next to the manifest as ``<manifest>.problems.jsonl``; none -> the file is removed."""
    path = manifest_path.with_name(manifest_path.name + ".problems.jsonl")
    if not problems:
        path.unlink(missing_ok=True)
        return None
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(asdict(p)) + "\n")
    return path
