"""Fixtures of the fault suite: tiny inputs for every stage, and a way to drive the CLI in-process."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers.embed_data import EmbedInputs, build_inputs
from tests.helpers.phantoms import chest_like, manifest_row, save_nifti


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The one ``error: ...`` line the command printed (asserting there is exactly one, and no traceback)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, f"expected one error line, got stderr:\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        return lines[0]


def cli(*args: str) -> Outcome:
    """Run ``x2ct-pipeline ARGS`` in this process, as a user would from a shell."""
    from pipeline.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a traceback where a one-line error belongs: the test fails with it
    return Outcome(res.exit_code, res.stdout, res.stderr)


def tree_digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (or of the file itself): 'nothing already finished changed'."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def embed_inputs(tmp_path_factory) -> EmbedInputs:
    """Two scans of one reconstruction each, a tiny random-weight CT-CLIP and its vocabulary."""
    return build_inputs(tmp_path_factory.mktemp("faults-embed"), n_scans=2, recons=1)


def embed_args(inp: EmbedInputs, out: Path, *extra, manifest: Path | None = None) -> list:
    return [
        "embed-ct",
        "--manifest",
        manifest or inp.manifest,
        "--checkpoint",
        inp.checkpoint,
        "--tokenizer",
        inp.tokenizer,
        "--out",
        out,
        "--model",
        "tiny",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="session")
def finished_cache(embed_inputs, tmp_path_factory) -> Path:
    """A complete embed-ct cache of ``embed_inputs`` (copy it before a test that may change it)."""
    out = tmp_path_factory.mktemp("faults-cache") / "emb.h5"
    res = cli(*embed_args(embed_inputs, out))
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture
def cache_copy(finished_cache, tmp_path) -> Path:
    out = tmp_path / "emb.h5"
    shutil.copyfile(finished_cache, out)
    return out


@pytest.fixture(scope="session")
def scheduler():
    """An in-process Dask cluster, given to simulate-drr as --scheduler (no worker processes to start)."""
    from distributed import LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        yield c.scheduler_address


RENDER = ["--size", "32", "--detector-mm", "140", "--sid-mm", "500", "--sod-mm", "400", "--no-progress"]


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def drr_set(tmp_path_factory):
    """Two good volumes and one of NaN voxels."""
    root = tmp_path_factory.mktemp("faults-drr")
    rows = []
    for n in range(2):
        save_nifti(root / f"ct/valid_{n}_a_1.nii.gz", chest_like(shape=(24, 20, 16), seed=n), (3.0, 3.0, 4.0))
        rows.append(manifest_row(f"valid_{n}_a_1", f"ct/valid_{n}_a_1.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.full((24, 20, 16), np.nan, np.float32), np.diag([-3.0, -3.0, 4.0, 1.0])),
        str(root / "ct/nan.nii.gz"),
    )
    return root, rows, manifest_row("valid_9_a_1", "ct/nan.nii.gz")
