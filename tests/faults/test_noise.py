"""What a user sees: the progress bar (when asked), the result and the errors, not Dask's logs."""

from __future__ import annotations

import pytest

from tests.faults.conftest import RENDER, cli, write_manifest


def _boom():
    raise ValueError("a task that fails")


def test_embed_ct_workers_log_nothing(capfd):
    """The workers of embed-ct's local cluster used to print ~36 INFO lines per run and a traceback
    ("Compute Failed") for every failed task; the runner reports failures itself."""
    from distributed import Client

    from pipeline.embed.backends import local_cluster

    with local_cluster(n_decode=1, n_gpus=0, model_threads=1) as cluster, Client(cluster) as client:
        fut = client.submit(_boom, resources={"decode": 1}, pure=False)
        with pytest.raises(ValueError, match="a task that fails"):
            fut.result()
    err = capfd.readouterr().err
    assert "distributed" not in err and "Compute Failed" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag, shown", [("--progress", True), ("--no-progress", False)])
def test_simulate_drr_progress_switch(drr_set, scheduler, tmp_path, flag, shown):
    root, rows, _ = drr_set
    args = ["simulate-drr", "--manifest", write_manifest(root, rows[:1]), "--out", tmp_path / "d.zarr"]
    res = cli(*args, "--scheduler", scheduler, *[a for a in RENDER if a != "--no-progress"], flag)
    assert res.exit_code == 0, res.stderr
    assert ("simulate-drr: 100%" in res.stderr) == shown, res.stderr
