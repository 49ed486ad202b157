"""simulate-drr and preview given bad input: exit status, one line naming the item, finished work unchanged."""

from __future__ import annotations

import json
import os

import pytest
import zarr

from tests.faults.conftest import RENDER, cli, tree_digest, write_manifest


def drr(manifest, out, scheduler, *extra):
    return cli("simulate-drr", "--manifest", manifest, "--out", out, "--scheduler", scheduler, *RENDER, *extra)


def test_nan_volume_is_recorded_failed_not_blank(drr_set, scheduler, tmp_path):
    root, rows, nan_row = drr_set
    manifest = write_manifest(root, [*rows, nan_row])
    out = tmp_path / "d.zarr"
    res = drr(manifest, out, scheduler)
    assert res.exit_code == 0, res.stderr
    g = zarr.open_group(str(out), mode="r")
    assert list(g["status"][:]) == [1, 1, 2]
    assert f"non-finite voxels: {24 * 20 * 16}" in str(g["errors"][2]) and "valid_9_a_1" in res.stderr


def test_every_item_failed_or_too_many_failures_exit_1(drr_set, scheduler, tmp_path):
    root, rows, nan_row = drr_set
    only_bad = write_manifest(tmp_path, [dict(nan_row, ct_path=str(root / "ct/nan.nii.gz"))])
    res = drr(only_bad, tmp_path / "a.zarr", scheduler)
    assert res.exit_code == 1 and "every volume this run tried failed (1)" in res.error_line
    mixed = write_manifest(tmp_path, [dict(r, ct_path=str(root / r["ct_path"])) for r in (nan_row, *rows)])
    res = drr(mixed, tmp_path / "b.zarr", scheduler, "--max-failures", "0")
    assert res.exit_code == 1 and "more than 0 failures" in res.error_line


def test_cuda_without_a_gpu_is_refused_before_start(drr_set, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, rows, _ = drr_set
    res = cli(
        "simulate-drr", "--manifest", write_manifest(root, rows), "--out", tmp_path / "d.zarr", "--device", "cuda"
    )
    assert res.exit_code == 2 and "--device cuda" in res.error_line
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("kind", ["empty", "latin1", "nul-id"])
def test_bad_manifest_is_refused_before_work(drr_set, scheduler, tmp_path, kind):
    root, rows, _ = drr_set
    manifest = root / f"{kind}.jsonl"
    if kind == "empty":
        manifest.write_text("\n")
    elif kind == "latin1":
        manifest.write_bytes(json.dumps(dict(rows[0], findings="caf\u00e9"), ensure_ascii=False).encode("latin-1"))
    else:
        manifest.write_text(json.dumps(dict(rows[0], volume_id="valid_0\u0000_a_1")) + "\n")
    res = drr(manifest, tmp_path / "d.zarr", scheduler)
    assert res.exit_code == 2 and f"{kind}.jsonl" in res.error_line
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_out_naming_something_else_is_refused(drr_set, scheduler, tmp_path, kind):
    root, rows, _ = drr_set
    out = tmp_path / "target"
    if kind == "file":
        out.write_text("precious")
    else:
        os.mkfifo(out)
    for extra in ((), ("--overwrite",)):
        res = drr(write_manifest(root, rows), out, scheduler, *extra)
        assert res.exit_code == 2 and str(out) in res.error_line
    if kind == "file":
        assert out.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_preview_refuses_bad_out_and_non_stores(drr_set, scheduler, tmp_path):
    root, rows, _ = drr_set
    store = tmp_path / "d.zarr"
    assert drr(write_manifest(root, rows), store, scheduler).exit_code == 0
    before = tree_digest(store)
    res = cli("preview", store, "--out", tmp_path / "sheet.jpgx")
    assert res.exit_code == 2 and "sheet.jpgx" in res.error_line and ".png" in res.error_line
    (tmp_path / "notes.png").write_text("not a png")
    res = cli("preview", store, "--out", tmp_path / "notes.png")
    assert res.exit_code == 2 and "notes.png" in res.error_line and (tmp_path / "notes.png").read_text() == "not a png"
    res = cli("preview", tmp_path, "--out", tmp_path / "s.png")
    assert res.exit_code == 2 and "not a simulate-drr store" in res.error_line
    assert cli("preview", store, "--out", tmp_path / "ok.png").exit_code == 0
    assert cli("preview", store, "--out", tmp_path / "ok.png").exit_code == 0  # an earlier sheet is replaced
    assert tree_digest(store) == before


def test_unreachable_scheduler_is_one_line(drr_set, embed_inputs, tmp_path):
    import dask

    from tests.faults.conftest import embed_args

    root, rows, _ = drr_set
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        for args in (
            ["simulate-drr", "--manifest", write_manifest(root, rows), "--out", tmp_path / "d.zarr", *RENDER],
            embed_args(embed_inputs, tmp_path / "e.h5"),
        ):
            res = cli(*args, "--scheduler", "tcp://127.0.0.1:1")
            assert res.exit_code == 2 and "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'" in res.error_line
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "d.zarr.lock").exists()  # nothing written
