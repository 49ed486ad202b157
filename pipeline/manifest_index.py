"""A manifest that a stage driver walks without holding its rows in memory.

A driver needs every row once before any task (validation, the store's ids and labels, the
identity hashes) and then one row at a time as it submits tasks. Holding 50k validated rows
costs about 1.7 KB each without reports (86 MB at 50k rows; CT-RATE's reports add 1-2 KB a
row), so the index keeps of each row only the byte offset of its line and an 8-byte digest of
the line (16 bytes a row) and reads the row again when it is wanted. Each read checks the
line's digest: a manifest edited during the run is refused instead of rendered from rows the
store was not made from.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from schemas.manifest import EmptyManifestError, ManifestError, ManifestRow, iter_manifest, parse_manifest_line


def line_digest(line: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")


class ManifestIndex:
    """The rows of a validated manifest, by position, read from the file when wanted.

    ``len(index)`` is the row count; iterating streams the rows in order; ``index.row(i)`` reads
    one. Building it validates every line (the checks and messages of ``read_manifest``) and
    refuses an empty manifest unless ``allow_empty``.
    """

    def __init__(self, path: str | Path, allow_empty: bool = False):
        self.path = Path(path)
        offsets, digests = array("q"), array("Q")  # 8 bytes a row, not a Python int object each
        for offset, line, _row in iter_manifest(self.path):
            offsets.append(offset)
            digests.append(line_digest(line))
        if not offsets and not allow_empty:
            raise EmptyManifestError(self.path)
        self.offsets = np.frombuffer(offsets, dtype=np.int64)
        self.digests = np.frombuffer(digests, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> ManifestRow:
        with self.path.open("rb") as f:
            f.seek(int(self.offsets[i]))
            return self._parse(i, f.readline())

    def __iter__(self) -> Iterator[ManifestRow]:
        """Every row in order, one pass over the file."""
        with self.path.open("rb") as f:
            for i, offset in enumerate(self.offsets):
                f.seek(int(offset))  # blank lines between rows are skipped by position
                yield self._parse(i, f.readline())

    def _parse(self, i: int, line: bytes) -> ManifestRow:
        if line_digest(line) != int(self.digests[i]):
            raise ManifestError(
                f"{self.path}: row {i + 1} changed while this run was reading the manifest; "
                "do not edit a manifest that a stage is running on: rerun the stage"
            )
        row = parse_manifest_line(self.path, 0, line)
        assert row is not None  # the line is the one validated when the index was built
        return row
