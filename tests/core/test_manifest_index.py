"""pipeline.manifest_index: the rows of a manifest by position, read from the file when wanted."""

from __future__ import annotations

import json

import pytest

from pipeline.manifest_index import ManifestIndex
from schemas.manifest import ManifestError, read_manifest
from tests.helpers.phantoms import manifest_row


def _write(path, n, blank_after=()):
    lines = []
    for i in range(n):
        lines.append(
            json.dumps(
                {**manifest_row(f"valid_{i}_a_1", f"ct/{i}.nii.gz"), "findings": f"report é {i}"}, ensure_ascii=False
            )
        )
        if i in blank_after:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_index_gives_the_rows_of_read_manifest(tmp_path):
    path = _write(tmp_path / "m.jsonl", 7, blank_after=(0, 3))
    rows = read_manifest(path)
    index = ManifestIndex(path)
    assert len(index) == 7 and list(index) == rows
    assert [index.row(i) for i in (6, 0, 4)] == [rows[6], rows[0], rows[4]]
    assert index.offsets.nbytes + index.digests.nbytes == 16 * 7


def test_a_row_edited_after_indexing_is_refused(tmp_path):
    path = _write(tmp_path / "m.jsonl", 3)
    index = ManifestIndex(path)
    path.write_text(path.read_text().replace("report é 1", "report é 9"), encoding="utf-8")
    assert index.row(0).findings == "report é 0"  # untouched rows still read
    with pytest.raises(ManifestError, match="row 2 changed while this run was reading"):
        index.row(1)
    with pytest.raises(ManifestError, match="row 2 changed"):
        list(index)


def test_bad_and_empty_manifests_are_refused_as_by_read_manifest(tmp_path):
    path = _write(tmp_path / "m.jsonl", 2)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:3: not valid JSON"):
        ManifestIndex(path)
    path.write_bytes(b"\n\n")
    with pytest.raises(ManifestError, match="has no rows"):
        ManifestIndex(path)
    assert len(ManifestIndex(path, allow_empty=True)) == 0
    path.write_bytes(_write(tmp_path / "n.jsonl", 1).read_bytes() + b'{"volume_id": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not UTF-8 \(byte 0xff\)"):
        ManifestIndex(path)
