"""``x2ct-pipeline manifest ...``: build manifests (JSON Lines) from data folders and tables."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors

log = logging.getLogger(__name__)

manifest_app = typer.Typer(
    help="Build a manifest (JSON Lines, one volume a line) from a data folder.", no_args_is_help=True
)

CONFIG = typer.Option(None, "--config", help="YAML or JSON file with these options; flags override it.")


def _finish(result, out: Path, write=None) -> None:
    from pipeline.manifests.tables import write_problems
    from schemas.manifest import manifest_sha256, write_manifest

    (write or write_manifest)(result.rows, out)
    digest = manifest_sha256(out)
    problems_file = write_problems(result.problems, out)
    log.info("wrote %d rows to %s (sha256 %s)", len(result.rows), out, digest[:12])
    if problems_file:
        log.warning("%d problem(s), listed in %s:", len(result.problems), problems_file)
        for p in result.problems[:10]:
            log.warning("  %s", p.line())
        if len(result.problems) > 10:
            log.warning("  ... and %d more", len(result.problems) - 10)


@manifest_app.command("ct-rate")
@friendly_errors
def ct_rate(
    root: Path | None = typer.Option(None, help="CT-RATE dataset folder (volumes and CSVs below it)."),
    split: str | None = typer.Option(None, help="train or valid."),
    out: Path | None = typer.Option(None, help="Manifest file to write (.jsonl)."),
    reports_csv: Path | None = typer.Option(None, help="Reports CSV (default: found under --root)."),
    labels_csv: Path | None = typer.Option(None, help="Labels CSV (default: found under --root)."),
    metadata_csv: Path | None = typer.Option(None, help="Metadata CSV (default: found under --root; optional)."),
    config: Path | None = CONFIG,
) -> None:
    """Join CT-RATE volumes with their reports, labels and metadata; report what does not join."""
    from pipeline.config_file import build_config
    from pipeline.manifests.ct_rate import build_ct_rate
    from schemas.stages import CTRateManifestConfig

    cfg = build_config(
        CTRateManifestConfig,
        config,
        dict(
            root=root, split=split, out=out, reports_csv=reports_csv, labels_csv=labels_csv, metadata_csv=metadata_csv
        ),
    )
    _finish(build_ct_rate(cfg), cfg.out)


@manifest_app.command("radchest")
@friendly_errors
def radchest(
    volumes: Path | None = typer.Option(None, help="Folder of NumPy HU volumes (.npz/.npy)."),
    labels_csv: Path | None = typer.Option(None, help="RadChest-CT labels CSV (abnormality*location columns)."),
    spacing_csv: Path | None = typer.Option(None, help="CSV: VolumeName, XSpacing, YSpacing, ZSpacing (mm)."),
    orientation: str | None = typer.Option(None, help="Axcodes of the stored array axes (default: SPL)."),
    split: str | None = typer.Option(None, help="Split recorded in the rows (default: external)."),
    out: Path | None = typer.Option(None, help="Manifest file to write (.jsonl)."),
    config: Path | None = CONFIG,
) -> None:
    """RadChest-CT style set: labels mapped to the CT-RATE 18 where they overlap (others null)."""
    from pipeline.config_file import build_config
    from pipeline.manifests.others import build_radchest
    from schemas.stages import RadChestManifestConfig

    cfg = build_config(
        RadChestManifestConfig,
        config,
        dict(
            volumes=volumes,
            labels_csv=labels_csv,
            spacing_csv=spacing_csv,
            orientation=orientation,
            split=split,
            out=out,
        ),
    )
    _finish(build_radchest(cfg), cfg.out)


@manifest_app.command("generic")
@friendly_errors
def generic(
    volumes: Path | None = typer.Option(None, help="Folder of NIfTI volumes (searched recursively)."),
    table: Path | None = typer.Option(
        None, help="CSV: VolumeName, Findings_EN, Impressions_EN, label columns, optional CXRPath."
    ),
    split: str | None = typer.Option(None, help="Split recorded in the rows (default: external)."),
    out: Path | None = typer.Option(None, help="Manifest file to write (.jsonl)."),
    config: Path | None = CONFIG,
) -> None:
    """Any folder of NIfTI volumes plus one table; absent label columns become null labels."""
    from pipeline.config_file import build_config
    from pipeline.manifests.others import build_generic
    from schemas.stages import GenericManifestConfig

    cfg = build_config(GenericManifestConfig, config, dict(volumes=volumes, table=table, split=split, out=out))
    _finish(build_generic(cfg), cfg.out)


@manifest_app.command("cxr")
@friendly_errors
def cxr(
    images: Path | None = typer.Option(None, help="Folder the table's relative CXRPath values are under."),
    table: Path | None = typer.Option(
        None, help="CSV: CXRPath, PatientID, optional ImageID, StudyID, ViewPosition, any of the 18 label columns."
    ),
    split: str | None = typer.Option(None, help="Split recorded in the rows (default: external)."),
    out: Path | None = typer.Option(None, help="CXR manifest to write (.jsonl)."),
    config: Path | None = CONFIG,
) -> None:
    """Real-radiograph set (MIMIC-CT style): image files with CT-derived labels for some of the 18 (others null)."""
    from pipeline.config_file import build_config
    from pipeline.manifests.cxr import build_cxr
    from schemas.cxr import CXRManifestConfig, write_cxr_manifest

    cfg = build_config(CXRManifestConfig, config, dict(images=images, table=table, split=split, out=out))
    _finish(build_cxr(cfg), cfg.out, write_cxr_manifest)
