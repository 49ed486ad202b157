"""``x2ct-pipeline embed-ct``: the frozen CT-CLIP over a manifest into a resumable HDF5 embedding cache."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors


@friendly_errors
def embed_ct(
    manifest: Path | None = typer.Option(None, help="Manifest (.jsonl) of the volumes to embed."),
    checkpoint: Path | None = typer.Option(
        None, help="CT-CLIP checkpoint, e.g. CT-CLIP_v2.pt (loaded with weights_only)."
    ),
    tokenizer: Path | None = typer.Option(None, help="Folder with the CXR-BERT vocab.txt."),
    out: Path | None = typer.Option(None, help="Embedding cache to create or extend (.h5)."),
    model: str | None = typer.Option(None, help="CT-CLIP size: official, tiny or a JSON file (default: official)."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda; auto uses every visible GPU (default: auto)."),
    precision: str | None = typer.Option(
        None, help="fp32 or bf16 autocast; part of the cache identity (default: fp32)."
    ),
    batch_size: int | None = typer.Option(None, help="Volumes per forward pass (default: 2)."),
    workers: int | None = typer.Option(
        None, help="CPU decode workers; 0 runs in this process without Dask (default: 2)."
    ),
    scheduler: str | None = typer.Option(None, help="Address of a running Dask scheduler instead of a local cluster."),
    model_threads: int | None = typer.Option(
        None,
        help="torch threads of a CPU model worker (default: cores minus --workers, at least 1; all with --workers 0).",
    ),
    commit_every: int | None = typer.Option(
        None, help="Rows per commit; a kill loses at most the rows since (default: 64)."
    ),
    max_failures: int | None = typer.Option(None, help="Stop (exit status 1) once more items failed (default: 100)."),
    overwrite: bool | None = typer.Option(
        None, "--overwrite", help="Discard an existing cache and embed everything again."
    ),
    hu_policy: str | None = typer.Option(
        None, help="header, csv or auto: how stored values become HU (default: header)."
    ),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm progress bar (default: on)."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with these options; flags override it."
    ),
) -> None:
    """Embed every CT and report of MANIFEST with the frozen CT-CLIP into an HDF5 cache; reruns add only what is missing."""
    from pipeline.config_file import build_config
    from pipeline.embed.stage import run_embed
    from schemas.embed import EmbedConfig

    cfg = build_config(
        EmbedConfig,
        config,
        {
            "manifest": manifest,
            "checkpoint": checkpoint,
            "tokenizer": tokenizer,
            "out": out,
            "model": model,
            "device": device,
            "precision": precision,
            "batch_size": batch_size,
            "workers": workers,
            "scheduler": scheduler,
            "model_threads": model_threads,
            "commit_every": commit_every,
            "max_failures": max_failures,
            "overwrite": overwrite,
            "ct.hu_policy": hu_policy,
            "progress": progress,
        },
    )
    s = run_embed(cfg)  # logs its progress and results (also to <out>.log); too many failures: exit status 1
    if s.failures and not s.done:
        from schemas.errors import ItemsFailedError

        raise ItemsFailedError(f"every volume this run tried failed ({len(s.failures)}); nothing was embedded")
