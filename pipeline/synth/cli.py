"""``x2ct-pipeline synth``: write a synthetic miniature CT-RATE."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors


@friendly_errors
def synth(
    out: Path | None = typer.Option(None, "--out", help="Folder to write the data set into (CT-RATE layout)."),
    n: int | None = typer.Option(None, "--n", help="Number of volumes (reconstructions) (default: 64)."),
    size: int | None = typer.Option(
        None,
        "--size",
        help="In-plane matrix size in voxels; the field of view is "
        "350-400 mm, slices 1.5-3x thicker than the in-plane spacing (default: 96).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed; same config, same bytes (default: 0)."),
    valid_fraction: float | None = typer.Option(
        None, "--valid-fraction", help="Share of patients in the valid split (default: 0.25)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Rendering processes (default: 2)."),
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Replace a synthetic data set already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with these options; flags override it."
    ),
) -> None:
    """Synthetic chest CTs with drawn abnormalities, reports and labels, in CT-RATE layout and CSV formats."""
    from pipeline.config_file import build_config
    from pipeline.synth.writer import synthesize
    from schemas.stages import SynthConfig

    cfg = build_config(
        SynthConfig,
        config,
        dict(out=out, n=n, size=size, seed=seed, valid_fraction=valid_fraction, workers=workers, overwrite=overwrite),
    )
    synthesize(cfg, progress=progress)  # logs its result (also to <out>.log)
