"""gzip inflate into one buffer, with the fastest well-kept zlib-compatible library installed.

``gunzip`` inflates a whole gzip file held in memory in one call; ``gunzip_pieces`` yields it
piece by piece, so a reader can use each piece while it is in cache. ISA-L (``isal``: Intel's
hand-vectorised inflate) and zlib-ng (``zlib-ng``) read the same format as zlib about 1.3-2x
faster; when neither is installed, the standard library's zlib does the same work. A file of
several gzip members (concatenated streams) is valid gzip as well and goes through
``gzip.decompress``, which reads them all.
"""

from __future__ import annotations

import gzip
import importlib
import zlib
from collections.abc import Iterator
from types import ModuleType

_GZIP_WBITS = 31  # zlib's code for "a gzip header and trailer around the deflate stream"


def _pick_backend() -> tuple[str, ModuleType]:
    for name, module in (("isal", "isal.isal_zlib"), ("zlib-ng", "zlib_ng.zlib_ng")):
        try:
            return name, importlib.import_module(module)
        except ImportError:
            continue
    return "zlib", zlib


BACKEND, _ZLIB = _pick_backend()


class GzipError(ValueError):
    """The data is not a complete gzip stream (truncated or corrupt)."""


_PIECE_IN = 1 << 18  # compressed bytes per piece: a few MB inflated, converted while in cache


def gunzip_pieces(data: bytes) -> Iterator[bytes]:
    """The inflated content of the gzip file ``data``, piece by piece (a few MB each).

    Raises GzipError when the stream ends early or is corrupt; further gzip members (a
    concatenated file) follow the first."""
    view = memoryview(data)
    while True:
        inflater = _ZLIB.decompressobj(_GZIP_WBITS)
        i = 0
        try:
            for i in range(0, len(view), _PIECE_IN):
                piece = inflater.decompress(view[i : i + _PIECE_IN])
                if piece:
                    yield piece
                if inflater.eof:
                    break
            tail = inflater.flush()
        except _ZLIB.error as e:
            raise GzipError(str(e)) from e
        if tail:
            yield tail
        if not inflater.eof:
            raise GzipError("the gzip stream ends early (truncated file)")
        rest = inflater.unused_data + view[i + _PIECE_IN :]  # this member ended inside piece i
        if not rest.strip(b"\x00"):
            return
        view = memoryview(rest)


def gunzip(data: bytes, size_hint: int = 0) -> bytes:
    """The inflated content of the gzip file ``data``.

    ``size_hint`` (the expected size, e.g. from the NIfTI header) sizes the output buffer at
    once, so it is neither grown nor copied. A truncated or corrupt stream raises GzipError.
    """
    try:
        out = _ZLIB.decompress(data, _GZIP_WBITS, max(size_hint, 1 << 16))
        if len(out) < size_hint:  # the first member ended short: more members follow, or the file is cut
            return gzip.decompress(data)
    except (_ZLIB.error, zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise GzipError(str(e) or type(e).__name__) from e
    return out
