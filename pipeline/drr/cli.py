"""``x2ct-pipeline simulate-drr`` and ``x2ct-pipeline preview``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors
from schemas.errors import ItemsFailedError

log = logging.getLogger(__name__)

CONFIG = typer.Option(
    None, "--config", help="YAML or JSON file with these options (nested as in schemas/drr.py); flags override it."
)


@friendly_errors
def simulate_drr(
    manifest: Path | None = typer.Option(None, help="Manifest (JSON Lines) of the CT volumes."),
    out: Path | None = typer.Option(None, help="Zarr v3 store (folder) to create or continue."),
    workers: int | None = typer.Option(
        None, help="Local Dask worker processes (default: one per core, at most one per 3 GB of memory)."
    ),
    scheduler: str | None = typer.Option(
        None, help="Address of a running Dask scheduler, e.g. tcp://host:8786 (default: local cluster)."
    ),
    views: str | None = typer.Option(None, help="Comma-separated views out of pa, ap, lateral (default: pa)."),
    size: int | None = typer.Option(None, help="Detector pixels per side (default: 512)."),
    mode: str | None = typer.Option(
        None, help="physics (Beer-Lambert) or mean-hu (the authors' mean of clipped HU) (default: physics)."
    ),
    projection: str | None = typer.Option(None, help="cone or parallel (default: cone; mean-hu is always parallel)."),
    detector_mm: float | None = typer.Option(None, help="Detector side in mm (default: 430)."),
    sid_mm: float | None = typer.Option(None, help="Source-to-detector distance in mm (default: 1800)."),
    sod_mm: float | None = typer.Option(None, help="Source-to-isocentre distance in mm (default: 1650)."),
    mu_water: float | None = typer.Option(None, help="Attenuation of water in 1/mm (default: 0.02)."),
    bone_scale: float | None = typer.Option(
        None, help="Multiplier of HU above 300 (bone contrast) (default: 1.0, off)."
    ),
    gamma: float | None = typer.Option(None, help="Display gamma after the percentile window (default: 1.0)."),
    clahe: bool | None = typer.Option(None, "--clahe/--no-clahe", help="CLAHE on the display image (default: off)."),
    noise_photons: float | None = typer.Option(None, help="Photons per pixel for Poisson noise (default: no noise)."),
    seed: int | None = typer.Option(None, help="Noise seed (default: 0)."),
    line_integrals: bool | None = typer.Option(
        None, "--line-integrals/--no-line-integrals", help="Also store raw line integrals as float16 (default: off)."
    ),
    hu_policy: str | None = typer.Option(
        None, help="header, csv or auto: how stored values become HU (default: header)."
    ),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: auto: CUDA when available)."),
    threads: int | None = typer.Option(None, help="Torch threads per task (default: cores / workers)."),
    max_failures: int | None = typer.Option(
        None, help="Stop and exit 1 once more volumes than this have failed (default: 100)."
    ),
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Delete the store and render everything again."),
    limit: int | None = typer.Option(None, help="Render only the first N manifest rows (default: all)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm progress bar (default: on)."),
    config: Path | None = CONFIG,
) -> None:
    """Render DRRs of every volume in the manifest into a resumable Zarr store (Dask, one task per volume)."""
    from pipeline.config_file import build_config
    from pipeline.drr.stage import run_stage
    from schemas.drr import SimulateDRRConfig

    overrides = {
        "manifest": manifest,
        "out": out,
        "workers": workers,
        "scheduler": scheduler,
        "device": device,
        "threads_per_worker": threads,
        "max_failures": max_failures,
        "overwrite": overwrite,
        "limit": limit,
        "progress": progress,
        "line_integrals": line_integrals,
        "ct.hu_policy": hu_policy,
        "render.views": [v.strip() for v in views.split(",")] if views else None,
        "render.mode": mode,
        "render.geometry.size": size,
        "render.geometry.projection": projection,
        "render.geometry.detector_mm": detector_mm,
        "render.geometry.sid_mm": sid_mm,
        "render.geometry.sod_mm": sod_mm,
        "render.physics.mu_water_per_mm": mu_water,
        "render.physics.bone_scale": bone_scale,
        "render.post.gamma": gamma,
        "render.post.clahe": clahe,
        "render.post.noise_photons": noise_photons,
        "render.post.seed": seed,
    }
    cfg = build_config(SimulateDRRConfig, config, overrides)
    summary = run_stage(cfg)  # logs its progress and results, and writes them to <out>.log
    if summary.stopped_early:
        raise ItemsFailedError(
            f"stopped: more than {cfg.max_failures} failures (--max-failures); finished items are kept in {cfg.out}"
        )
    if summary.failed and not summary.done:
        raise ItemsFailedError(f"every volume this run tried failed ({summary.failed}); nothing was rendered")
    if summary.failed and not summary.done:
        raise ItemsFailedError(f"every volume this run tried failed ({summary.failed}); nothing was rendered")


@friendly_errors
def preview(
    store: Path = typer.Argument(..., help="Zarr store written by simulate-drr."),
    out: Path | None = typer.Option(None, help="PNG contact sheet to write."),
    n: int | None = typer.Option(None, help="Items shown, the first finished ones (default: 16)."),
    columns: int | None = typer.Option(None, help="Items per row (default: 4)."),
    thumb: int | None = typer.Option(None, help="Thumbnail side in pixels (default: 256)."),
) -> None:
    """Contact sheet of DRRs with their volume ids and positive labels."""
    from pipeline.config_file import build_config
    from pipeline.drr.preview import contact_sheet
    from schemas.drr import PreviewConfig

    cfg = build_config(PreviewConfig, None, {"store": store, "out": out, "n": n, "columns": columns, "thumb": thumb})
    shown = contact_sheet(cfg)
    log.info("wrote %s (%d items)", cfg.out, shown)
