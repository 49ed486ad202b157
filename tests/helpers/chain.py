"""The chain: every data stage run once through the ``x2ct-pipeline`` command line, in this process.

synth -> manifest ct-rate (train, valid) -> simulate-drr -> embed-ct with a tiny random CT-CLIP.
The outputs are what a user's run would leave on disk, at toy sizes (32-voxel CTs, 64-pixel
DRRs, the 'tiny' CT-CLIP config), so later stages (train, evaluate, ...) test against real
stage outputs instead of hand-made ones. Built once per session by the ``chain`` fixture
(``tests/conftest.py``); treat its folders as read-only and write new outputs beside them.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.embed_data import write_checkpoint, write_vocab

SPLITS = ("train", "valid")
# 28 volumes at 35% valid patients: 19 train and 9 valid volumes (the synthetic set is a pure
# function of these numbers), enough for a trainer to take a few batches per split.
SYNTH_ARGS = ["--n", "28", "--size", "32", "--valid-fraction", "0.35", "--seed", "0", "--workers", "1"]
DRR_ARGS = ["--views", "pa,lateral", "--size", "64"]
EMBED_ARGS = ["--model", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--model-threads", "1"]


@dataclass(frozen=True)
class Chain:
    root: Path
    synth: Path  # synthetic CT-RATE folder (CT-RATE layout)
    manifests: dict[str, Path]  # split -> manifest (.jsonl)
    drr: dict[str, Path]  # split -> simulate-drr Zarr store
    embeddings: dict[str, Path]  # split -> embed-ct HDF5 cache
    checkpoint: Path  # tiny random CT-CLIP (both parts), as save_ctclip writes it
    tokenizer: Path  # folder holding vocab.txt


def invoke(args: list[str]) -> str:
    """Run ``x2ct-pipeline ARGS`` in this process; return its output, or fail the test showing it."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        detail = "".join(traceback.format_exception(result.exception)) if result.exception else ""
        raise AssertionError(
            f"x2ct-pipeline {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}\n{detail}"
        )
    return result.output


def build_chain(root: Path) -> Chain:
    """Run every data stage into ``root``. simulate-drr uses an in-process Dask cluster (via
    ``--scheduler``): a cluster of worker processes takes longer to start than the work takes."""
    from distributed import LocalCluster

    synth = root / "ct-rate"
    invoke(["synth", "--out", synth, *SYNTH_ARGS, "--no-progress"])
    manifests = {s: root / f"{s}.jsonl" for s in SPLITS}
    for split, path in manifests.items():
        invoke(["manifest", "ct-rate", "--root", synth, "--split", split, "--out", path])

    drr = {s: root / f"drr-{s}.zarr" for s in SPLITS}
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        for split, path in drr.items():
            invoke(
                [
                    "simulate-drr",
                    "--manifest",
                    manifests[split],
                    "--out",
                    path,
                    *DRR_ARGS,
                    "--scheduler",
                    cluster.scheduler_address,
                    "--device",
                    "cpu",
                ]
            )

    checkpoint = write_checkpoint(root / "ctclip-tiny.pt", seed=0)
    tokenizer = write_vocab(root / "tokenizer")
    embeddings = {s: root / f"emb-{s}.h5" for s in SPLITS}
    for split, path in embeddings.items():
        invoke(
            [
                "embed-ct",
                "--manifest",
                manifests[split],
                "--checkpoint",
                checkpoint,
                "--tokenizer",
                tokenizer,
                "--out",
                path,
                *EMBED_ARGS,
                "--no-progress",
            ]
        )
    return Chain(root, synth, manifests, drr, embeddings, checkpoint, tokenizer)
