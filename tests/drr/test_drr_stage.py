"""The simulate-drr stage: store contents, failures, attributes, resume, config guard, a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.ct_io import load_ct
from pipeline.drr.render import render_volume
from pipeline.drr.stage import run_stage
from pipeline.drr.store import StoreMismatchError
from schemas.drr import ItemStatus, SimulateDRRConfig
from schemas.manifest import manifest_sha256
from tests.helpers.phantoms import chest_like, manifest_row, save_nifti


class _Killed(BaseException):
    """Stands for SIGKILL at a chosen point: not an Exception, so no handler of ours catches it."""


RENDER = {"views": ["pa", "lateral"], "geometry": {"size": 48, "detector_mm": 140.0, "sid_mm": 500.0, "sod_mm": 400.0}}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def _cfg(manifest: Path, out: Path, **kw) -> SimulateDRRConfig:
    data = {"manifest": manifest, "out": out, "render": RENDER, "line_integrals": True}
    data.update(kw)
    return SimulateDRRConfig.model_validate(data)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][:]) for name in ("images", "line_integrals", "status", "errors", "ids", "labels")}


def test_stage_writes_images_failures_and_provenance(tiny_set, client):
    cfg = _cfg(tiny_set, tiny_set.parent / "drr.zarr")
    summary = run_stage(cfg, client=client)
    assert (summary.done, summary.failed, summary.stopped_early) == (3, 2, False)
    got = _arrays(cfg.out)
    np.testing.assert_array_equal(got["status"], [1, 1, 1, 2, 2])
    np.testing.assert_array_equal(zarr.open_group(str(cfg.out), mode="r")["status_snapshot"][:], got["status"])
    assert dict(summary.failures) == {"valid_3_a_1": got["errors"][3], "valid_4_a_1": got["errors"][4]}
    assert got["errors"][3].startswith("CTLoadError") and "valid_3_a_1.nii.gz" in got["errors"][3]
    assert got["errors"][4].startswith("AirCheckError")
    assert list(got["ids"]) == [f"valid_{n}_a_1" for n in range(5)]
    assert got["labels"][1, 1] == 1 and got["labels"][1, 12] == 1 and got["labels"][1].sum() == 2
    # the stored images are what the renderer makes from the loaded volume
    ct = load_ct(tiny_set.parent / "ct/valid_1_a_1.nii.gz")
    direct = render_volume(ct.hu, ct.affine, cfg.render, volume_id="valid_1_a_1")
    np.testing.assert_array_equal(got["images"][1], direct.images)
    np.testing.assert_allclose(got["line_integrals"][1], direct.line_integrals, rtol=1e-3, atol=1e-3)
    assert not got["images"][3].any()

    g = zarr.open_group(str(cfg.out), mode="r")
    prov = g.attrs["provenance"]
    assert prov["stage"] == "simulate-drr" and prov["software_version"]
    assert prov["config_sha256"] == cfg.content_sha256()
    assert prov["manifest_sha256"] == manifest_sha256(tiny_set)
    assert prov["config"]["render"]["geometry"]["size"] == 48
    assert g.attrs["layout"]["views"] == ["pa", "lateral"] and "uint16_mapping" in g.attrs
    assert g.attrs["summary"]["done"] == 3 and g.attrs["summary"]["failed"] == 2
    assert g["images"].chunks == (1, 1, 48, 48) and g["images"].shards == (1, 2, 48, 48)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_set, client):
    in_process = dict(client=client)
    whole = _cfg(tiny_set, tiny_set.parent / "whole.zarr")
    run_stage(whole, **in_process)

    crashed = _cfg(tiny_set, tiny_set.parent / "crashed.zarr")
    run_stage(crashed.model_copy(update={"limit": 2}), **in_process)  # items 0, 1 done
    g = zarr.open_group(str(crashed.out), mode="r+")
    # item 2 was killed after its images were written but before its status was
    g["images"][2] = np.full((2, 48, 48), 7, np.uint16)
    # item 1 was killed while writing its shard: status pending, shard garbage (and the
    # driver, killed too, never wrote its end-of-run snapshot)
    g["status"][1] = ItemStatus.PENDING
    g["status_snapshot"][:] = [1, 0, 0, 0, 0]
    shard = crashed.out / "images" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(b"\x00garbage")
    item0 = crashed.out / "images" / "c" / "0" / "0" / "0" / "0"
    before = item0.stat().st_mtime_ns

    summary = run_stage(crashed, **in_process)
    assert summary.done_before == 1 and summary.done == 2 and summary.failed == 2
    assert item0.stat().st_mtime_ns == before, "finished items are not redone"
    a, b = _arrays(whole.out), _arrays(crashed.out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    # a rerun of a complete store renders nothing; --overwrite renders everything again
    assert run_stage(crashed, **in_process).done == 0
    redo = run_stage(crashed.model_copy(update={"overwrite": True}), **in_process)
    assert redo.done_before == 0 and redo.done == 3


def test_a_different_config_or_manifest_is_refused(tiny_set, client):
    in_process = dict(client=client)
    cfg = _cfg(tiny_set, tiny_set.parent / "guard.zarr", limit=1)
    run_stage(cfg, **in_process)
    other = cfg.model_copy(
        update={
            "render": cfg.render.model_copy(update={"geometry": cfg.render.geometry.model_copy(update={"size": 64})})
        }
    )
    with pytest.raises(StoreMismatchError, match=r"render\.geometry\.size: store 48, now 64.*--overwrite"):
        run_stage(other, **in_process)
    tiny_set.write_text(tiny_set.read_text().splitlines()[0] + "\n")
    with pytest.raises(StoreMismatchError, match="manifest differs"):
        run_stage(cfg, **in_process)


def test_max_failures_stops_the_run(tiny_set, client):
    rows = tiny_set.read_text().splitlines()
    tiny_set.write_text("\n".join([rows[3], rows[4]] + rows[:3]) + "\n")  # the two bad ones first
    summary = run_stage(_cfg(tiny_set, tiny_set.parent / "fail.zarr", max_failures=1), client=client)
    assert summary.stopped_early and summary.failed == 2
    assert summary.done < 3


def _done_count(out: Path) -> int:
    try:
        return int((np.asarray(zarr.open_group(str(out), mode="r")["status"][:]) == ItemStatus.DONE).sum())
    except Exception:  # the store is not created yet
        return 0


def test_sigkill_loses_only_items_in_flight(tmp_path, client):
    """A real multi-process run through the CLI, killed with SIGKILL mid-way, then resumed."""
    ct = save_nifti(tmp_path / "ct/a.nii.gz", chest_like(shape=(64, 56, 48)), (2.0, 2.5, 3.0))
    rows = [manifest_row(f"valid_{n}_a_1", str(ct)) for n in range(40)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "killed.zarr"
    render = {
        "views": ["pa", "lateral", "ap"],
        "geometry": {"size": 384, "detector_mm": 260.0, "sid_mm": 600.0, "sod_mm": 450.0},
    }
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"render": render}))
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "simulate-drr",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--workers",
        "2",
        "--threads",
        "1",
        "--config",
        str(cfg_file),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        # Kill once items are done (status chunk files alone can still say pending: written first).
        if _done_count(out) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    assert "Dask dashboard" in output
    assert " - INFO - " not in output, "Dask's own INFO lines stay off the terminal"
    done = _done_count(out)
    assert 0 < done < 40, f"kill came too late or too early ({done} done)"

    cfg = SimulateDRRConfig(manifest=manifest, out=out, render=render)
    summary = run_stage(cfg, client=client)
    assert summary.done_before == done and summary.done == 40 - done
    images = np.asarray(zarr.open_group(str(out), mode="r")["images"][:])
    expected = render_volume(*(lambda c: (c.hu, c.affine))(load_ct(ct)), cfg.render).images
    assert all(np.array_equal(images[n], expected) for n in range(40))


def test_runs_on_an_existing_scheduler(tiny_set):
    from distributed import LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        cfg = _cfg(tiny_set, tiny_set.parent / "remote.zarr", scheduler=cluster.scheduler_address, limit=2)
        summary = run_stage(cfg)
    assert summary.done == 2
    log = cfg.out.with_name("remote.zarr.log").read_text()  # the run's full log, beside the store
    assert "Dask dashboard" in log and "2 done, 0 failed in this run" in log


def test_cli_refuses_a_changed_config_with_a_clear_message(tiny_set, client):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tiny_set.parent / "cli.zarr"
    run_stage(_cfg(tiny_set, out, limit=1), client=client)
    cfg_file = tiny_set.parent / "cfg.yaml"
    cfg_file.write_text(
        "render:\n  views: [pa, lateral]\n  geometry: {size: 48, detector_mm: 140.0, sid_mm: 500.0, sod_mm: 400.0}\n"
        "line_integrals: true\n"
    )
    result = CliRunner().invoke(
        app, ["simulate-drr", "--manifest", str(tiny_set), "--out", str(out), "--config", str(cfg_file), "--size", "32"]
    )
    assert result.exit_code == 2
    assert "render.geometry.size: store 48, now 32" in result.output and "--overwrite" in result.output


def test_bad_affine_is_recorded_as_a_failure(tmp_path, client):
    import nibabel as nib

    hu = chest_like()
    img = nib.Nifti1Image(np.round(hu + 1024).astype(np.int16), np.diag([2.0, 2.5, 3.0, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    img.set_qform(None, code=0)
    img.set_sform(np.diag([2.0, 0.0, 3.0, 1.0]), code=1)  # the second axis has no extent
    (tmp_path / "ct").mkdir()
    nib.save(img, str(tmp_path / "ct/flat.nii.gz"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(manifest_row("valid_7_a_1", "ct/flat.nii.gz")) + "\n")
    summary = run_stage(_cfg(manifest, tmp_path / "bad.zarr"), client=client)
    assert summary.failed == 1
    ((vid, reason),) = summary.failures.items()
    assert vid == "valid_7_a_1" and "affine" in reason and "flat.nii.gz" in reason


def test_overwrite_killed_while_deleting_never_leaves_done_items_without_images(tiny_set, client, monkeypatch):
    """--overwrite deletes the old store; a kill half-way through that deletion must not leave
    a store that a plain rerun takes as finished (status 'done', images gone)."""
    import shutil

    import pipeline.drr.store as store_mod

    in_process = dict(client=client)
    cfg = _cfg(tiny_set, tiny_set.parent / "ow.zarr")
    run_stage(cfg, **in_process)
    expected = _arrays(cfg.out)

    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):  # the images go first, then the process dies
        real_rmtree(Path(path) / "images")
        raise _Killed

    monkeypatch.setattr(store_mod.shutil, "rmtree", killed_rmtree)
    with pytest.raises(_Killed):
        run_stage(cfg.model_copy(update={"overwrite": True}), **in_process)
    monkeypatch.undo()

    run_stage(cfg, **in_process)  # the user reruns without --overwrite
    got = _arrays(cfg.out)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert not list(tiny_set.parent.glob(".ow.zarr.deleting-*")), "leftovers of the killed deletion are removed"


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_drr_store(tiny_set, client):
    out = tiny_set.parent / "precious"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreMismatchError, match="not a simulate-drr store"):
        run_stage(_cfg(tiny_set, out, overwrite=True), client=client)
    assert (out / "sub" / "thesis.tex").read_text() == "years of work"


def test_a_finished_item_written_again_never_reads_done_without_its_images(tiny_set, client, monkeypatch):
    """Dask recomputes a task whose worker died holding its result, so an item can be written
    again after it is done. Neither the task nor the write may leave 'done' with the shard gone
    when the process is killed between deleting the old shard and writing the new one."""
    from pipeline.drr.stage import render_item
    from pipeline.drr.store import write_item

    cfg = _cfg(tiny_set, tiny_set.parent / "again.zarr", limit=2)
    run_stage(cfg, client=client)
    before = _arrays(cfg.out)
    real_setitem = zarr.Array.__setitem__

    def killed_after_delete(self, key, value):
        if self.path == "images":
            raise _Killed
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", killed_after_delete)
    row = json.loads(tiny_set.read_text().splitlines()[1])
    result = render_item(str(cfg.out), 1, json.dumps(row), str(tiny_set.parent), cfg.model_dump_json(), 1)
    assert result.ok
    np.testing.assert_array_equal(_arrays(cfg.out)["images"][1], before["images"][1])

    with pytest.raises(_Killed):
        write_item(str(cfg.out), 1, before["images"][1], None)
    monkeypatch.undo()
    after = _arrays(cfg.out)
    assert after["status"][1] != ItemStatus.DONE or np.array_equal(after["images"][1], before["images"][1])
    assert after["status"][0] == ItemStatus.DONE


def test_a_task_lost_after_finishing_its_item_leaves_it_done(tiny_set, client, monkeypatch):
    """The driver records 'worker lost' only for items the task did not finish."""
    import pipeline.drr.stage as stage_mod

    real = stage_mod.render_item

    def finishes_then_dies(*args):
        real(*args)
        raise RuntimeError("worker connection lost")

    monkeypatch.setattr(stage_mod, "render_item", finishes_then_dies)
    summary = run_stage(_cfg(tiny_set, tiny_set.parent / "lost.zarr", limit=2), client=client)
    assert (summary.done, summary.failed) == (2, 0)
    got = _arrays(tiny_set.parent / "lost.zarr")
    np.testing.assert_array_equal(got["status"][:2], [ItemStatus.DONE] * 2)
    assert got["images"][:2].any(axis=(1, 2, 3)).all()


def test_a_manifest_grown_at_the_end_continues_the_store(tiny_set, client, monkeypatch):
    """Rows appended to the manifest are rendered into the same store (finished items kept,
    also after a growth killed half-way); removed, reordered or edited rows are refused."""
    from zarr.core.attributes import Attributes

    in_process = dict(client=client)
    rows = tiny_set.read_text().splitlines(keepends=True)
    whole = _cfg(tiny_set, tiny_set.parent / "whole5.zarr")
    run_stage(whole, **in_process)
    short = tiny_set.parent / "short.jsonl"
    short.write_text("".join(rows[:2]))
    grown = _cfg(short, tiny_set.parent / "grown.zarr")
    run_stage(grown, **in_process)
    item0 = grown.out / "images" / "c" / "0" / "0" / "0" / "0"
    before = item0.stat().st_mtime_ns

    short.write_text("".join(rows[:4]))  # growth killed after resizing, before the attributes
    monkeypatch.setattr(Attributes, "update", lambda *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        run_stage(grown, **in_process)
    monkeypatch.undo()
    short.write_text("".join(rows))
    summary = run_stage(grown, **in_process)
    assert (summary.done_before, summary.done, summary.failed) == (2, 1, 2)
    assert item0.stat().st_mtime_ns == before, "finished items are not redone"
    a, b = _arrays(whole.out), _arrays(grown.out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    g = zarr.open_group(str(grown.out), mode="r")
    assert g.attrs["provenance"]["manifest_sha256"] == manifest_sha256(short) and g.attrs["layout"]["n_items"] == 5

    edited = rows[1].replace('"ct/valid_1_a_1.nii.gz"', '"ct/valid_2_a_1.nii.gz"')
    assert edited != rows[1]
    for changed in ([rows[1], rows[0]] + rows[2:], rows[:4], [rows[0], edited] + rows[2:]):
        short.write_text("".join(changed))
        with pytest.raises(StoreMismatchError, match="manifest differs"):
            run_stage(grown, **in_process)


def test_two_runs_on_one_cluster_do_not_share_tasks(tiny_set, client, monkeypatch):
    """A second store rendered on the same scheduler while the first run's tasks are still
    known to it (a shared --scheduler, or keys not yet forgotten) gets its own renders."""
    kept = []
    real_submit = client.submit

    def submit_and_keep(*args, **kwargs):
        kept.append(real_submit(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(client, "submit", submit_and_keep)
    in_process = dict(client=client)
    run_stage(_cfg(tiny_set, tiny_set.parent / "first.zarr", limit=3), **in_process)
    summary = run_stage(_cfg(tiny_set, tiny_set.parent / "second.zarr", limit=3), **in_process)
    assert summary.done == 3
    a, b = _arrays(tiny_set.parent / "first.zarr"), _arrays(tiny_set.parent / "second.zarr")
    np.testing.assert_array_equal(b["status"][:3], [ItemStatus.DONE] * 3)
    np.testing.assert_array_equal(a["images"], b["images"])


def test_a_second_run_into_a_store_being_written_is_refused(tiny_set, client):
    """Two drivers on one store would render the same pending items and write the same chunks."""
    from pipeline.runtime import OutputBusyError, output_lock

    out = tiny_set.parent / "busy.zarr"
    with output_lock(out, "simulate-drr"):  # another run holds the store
        with pytest.raises(OutputBusyError, match="another simulate-drr run"):
            run_stage(_cfg(tiny_set, out), client=client)
    assert not out.exists()
    assert run_stage(_cfg(tiny_set, out, limit=1), client=client).done == 1  # released


def test_an_existing_folder_that_is_not_a_store_is_refused_clearly(tiny_set, client):
    out = tiny_set.parent / "plain_folder"
    out.mkdir()
    with pytest.raises(
        StoreMismatchError, match="plain_folder exists and is not a simulate-drr store; choose another --out"
    ):
        run_stage(_cfg(tiny_set, out), client=client)
    assert list(out.iterdir()) == []
