"""simulate-drr's driver stays flat in the manifest's rows: per row it holds a few bytes (the
manifest index, the status byte), never the parsed rows, and reads only the status chunks that exist."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.drr.stage import run_stage
from pipeline.drr.store import read_status
from schemas.drr import ItemStatus, SimulateDRRConfig
from tests.helpers.phantoms import manifest_row

RENDER = {"views": ["pa"], "geometry": {"size": 16}}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        yield c


def _manifest(path: Path, n: int) -> Path:
    # A report of 600 characters a row, as CT-RATE's (held rows would cost their text too).
    text = "The lungs are clear. " * 30
    with path.open("w") as f:
        for i in range(n):
            row = manifest_row(f"valid_{i}_a_1", f"ct/valid_{i}_a_1.nii.gz")  # no such files: each task fails fast
            f.write(json.dumps({**row, "findings": text}) + "\n")
    return path


def _peak_growth(cfg: SimulateDRRConfig, client) -> int:
    """Peak of the memory allocated while ``run_stage`` runs (all threads), in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        summary = run_stage(cfg, client=client)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.failed == 2  # the two items of ``limit``: their CT files do not exist
    return peak - base


def test_driver_memory_does_not_grow_with_manifest_rows(tmp_path, client):
    """Two manifests of 200 and 2,000 rows, the same two items rendered (``limit``): the driver's
    peak may grow by at most 1 KB per added row (measured: about 0, within the noise of the in-process
    cluster's own allocations, a few hundred KB; the driver before, holding every parsed row and
    reading every status chunk at once, grew by 3.4 KB a row here)."""
    peaks = {}
    warm = _manifest(tmp_path / "warm.jsonl", 2)  # the first run imports modules: not the driver's own memory
    run_stage(
        SimulateDRRConfig.model_validate({"manifest": warm, "out": tmp_path / "warm.zarr", "render": RENDER}),
        client=client,
    )
    for n in (200, 2000):
        m = _manifest(tmp_path / f"m{n}.jsonl", n)
        cfg = SimulateDRRConfig.model_validate(
            {"manifest": m, "out": tmp_path / f"s{n}.zarr", "render": RENDER, "limit": 2, "max_failures": 5}
        )
        peaks[n] = _peak_growth(cfg, client)
    per_row = (peaks[2000] - peaks[200]) / 1800
    assert per_row < 1024, f"{per_row:.0f} bytes per manifest row ({peaks})"


def test_read_status_reads_only_written_chunks(tmp_path):
    """A fresh store's status chunks do not exist (pending); only written ones are read, and the
    result equals reading every chunk."""
    from pipeline.drr.store import written_items

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    n = 3000
    g.create_array("status", shape=(n,), dtype="uint8", chunks=(1,), fill_value=ItemStatus.PENDING)
    snap = g.create_array("status_snapshot", shape=(n,), dtype="uint8", chunks=(n,), fill_value=ItemStatus.PENDING)
    assert written_items(g["status"]).size == 0
    done, failed = [0, 7, 2999], [5, 2048]
    for i in done:
        g["status"][i] = ItemStatus.DONE
    for i in failed:
        g["status"][i] = ItemStatus.FAILED
    g["status"][9] = ItemStatus.DONE
    g["status"][9] = ItemStatus.PENDING  # a rewrite in progress: zarr deletes a chunk that holds the fill value
    np.testing.assert_array_equal(written_items(g["status"]), sorted(done + failed))
    expected = np.asarray(g["status"][:])
    np.testing.assert_array_equal(read_status(g), expected)
    snap[:] = expected  # the snapshot's done items are taken from it
    g["status"][0] = ItemStatus.PENDING  # (never happens: done stays done) shows the snapshot is used
    got = read_status(g)
    assert got[0] == ItemStatus.DONE and (got[1:] == expected[1:]).all()
