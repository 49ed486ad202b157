"""``x2ct-pipeline evaluate``, ``fewshot`` and ``predict``: the command line of ``trainer``'s evaluation.

The bodies import ``trainer`` (and torch) only when they run: ``pipeline`` never imports
``trainer`` at module level, and ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors

_CONFIG = typer.Option(None, "--config", help="YAML or JSON file with these options; flags override it.")
_DEVICE = typer.Option(None, help="auto, cpu or cuda (default: auto: CUDA when available).")
_CHECKPOINT = typer.Option(None, help="Checkpoint of the run: best, latest or a file (default: best).")


def _views(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@friendly_errors
def evaluate(
    run: Path | None = typer.Option(None, help="Training run directory (train's --out)."),
    drr: Path | None = typer.Option(None, help="simulate-drr store of the split to evaluate."),
    emb: Path | None = typer.Option(None, "--emb", help="embed-ct cache of the same split."),
    cxr_manifest: Path | None = typer.Option(
        None, help="Instead of --drr/--emb: a CXR manifest of real radiographs (manifest cxr); zero-shot only."
    ),
    out: Path | None = typer.Option(None, help="Folder for metrics.json, CSV tables, figures and report.html."),
    checkpoint: str | None = _CHECKPOINT,
    views: str | None = typer.Option(None, help="Comma-separated views, each evaluated apart (default: pa)."),
    labels: str | None = typer.Option(None, help="Comma-separated label names to restrict to (default: all present)."),
    threshold: float | None = typer.Option(
        None, help="P(positive) at or above which a label is called (default: 0.5)."
    ),
    n_resamples: int | None = typer.Option(None, help="Bootstrap resamples over patients; 0: none (default: 1000)."),
    seed: int | None = typer.Option(None, help="Bootstrap seed (default: 0)."),
    batch_size: int | None = typer.Option(None, help="Radiographs per forward pass (default: 64)."),
    device: str | None = _DEVICE,
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Replace an existing evaluation in --out."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm bars (default: on)."),
    config: Path | None = _CONFIG,
) -> None:
    """Zero-shot classification (both prompt sets, CT upper bound beside) and retrieval of a run on one split."""
    from pipeline.config_file import build_config
    from schemas.evaluate import EvaluateConfig
    from trainer.evaluation.stage import run_evaluate

    cfg = build_config(
        EvaluateConfig,
        config,
        {
            "run": run, "drr": drr, "embeddings": emb, "cxr_manifest": cxr_manifest, "out": out,
            "checkpoint": checkpoint, "views": _views(views),
            "labels": _views(labels), "threshold": threshold, "n_resamples": n_resamples, "seed": seed,
            "batch_size": batch_size, "device": device, "overwrite": overwrite, "progress": progress,
        },
    )  # fmt: skip
    results = run_evaluate(cfg)
    for src, by_set in results["zero_shot"].items():
        for pset, table in by_set.items():
            v = table["macro"]["auroc"]
            value = "undefined" if v["value"] is None else f"{v['value']:.3f}"
            ci = f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" if v["ci_low"] is not None else ""
            typer.echo(f"{src:>24} / {pset:<9} macro AUROC {value}{ci}")
    typer.echo(f"{cfg.out}: metrics.json, zero_shot.csv, retrieval.csv, figures and report.html")


@friendly_errors
def fewshot(
    run: Path | None = typer.Option(None, help="Training run directory; its encoder is probed."),
    train_drr: Path | None = typer.Option(None, help="simulate-drr store of the training split (probes learn here)."),
    train_emb: Path | None = typer.Option(None, help="embed-ct cache of the training split."),
    test_drr: Path | None = typer.Option(None, help="simulate-drr store of the test split (probes are scored here)."),
    test_emb: Path | None = typer.Option(None, help="embed-ct cache of the test split."),
    out: Path | None = typer.Option(
        None, help="Folder for fewshot.csv, fewshot_summary.csv, fewshot.json, fewshot.png."
    ),
    checkpoint: str | None = _CHECKPOINT,
    baseline_init: Path | None = typer.Option(
        None,
        help="Baseline weights (the same architecture before alignment, e.g. ImageNet); default: the run's --init.",
    ),
    view: str | None = typer.Option(None, help="View encoded (default: pa)."),
    fractions: str | None = typer.Option(None, help="Comma-separated fractions (default: 0.01,0.025,0.05,0.1,1)."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default: 1024,1234,4321,5678,8765)."),
    max_epochs: int | None = typer.Option(None, help="Probe epochs at most (default: 100)."),
    patience: int | None = typer.Option(
        None, help="Epochs without a better validation loss before stopping (default: 20)."
    ),
    batch_size: int | None = typer.Option(None, help="Radiographs per encoder forward pass (default: 64)."),
    device: str | None = _DEVICE,
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Replace existing results in --out."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm bars (default: on)."),
    config: Path | None = _CONFIG,
) -> None:
    """Linear probes on frozen latents at 1-100% of the training labels, 5 seeds: trained encoder vs baseline."""
    from pipeline.config_file import build_config
    from schemas.evaluate import FewshotConfig
    from trainer.fewshot.stage import run_fewshot

    def numbers(s, kind):
        return [kind(v) for v in s.split(",") if v.strip()] if s else None

    cfg = build_config(
        FewshotConfig,
        config,
        {
            "run": run, "train_drr": train_drr, "train_embeddings": train_emb, "test_drr": test_drr,
            "test_embeddings": test_emb, "out": out, "checkpoint": checkpoint, "baseline_init": baseline_init,
            "view": view, "fractions": numbers(fractions, float), "seeds": numbers(seeds, int),
            "max_epochs": max_epochs, "patience": patience, "batch_size": batch_size, "device": device,
            "overwrite": overwrite, "progress": progress,
        },
    )  # fmt: skip
    result = run_fewshot(cfg)
    for r in result["summary"]:
        mean, sd = r["auroc_macro_mean"], r["auroc_macro_std"]
        shown = "undefined" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" (sd {sd:.3f})")
        typer.echo(f"{r['encoder']:<48} {100 * r['fraction']:>6g}%  macro AUROC {shown}")
    typer.echo(f"{cfg.out}: fewshot.csv, fewshot_summary.csv, fewshot.json, fewshot.png")


@friendly_errors
def predict(
    inputs: list[Path] = typer.Argument(..., help="Radiograph files (DICOM, PNG, JPEG) or folders of them."),
    run: Path | None = typer.Option(None, help="Training run directory (all predict needs)."),
    out: Path | None = typer.Option(None, help="Output table, .csv or .json."),
    checkpoint: str | None = _CHECKPOINT,
    prompt_set: str | None = typer.Option(None, help="x2ct_clip or ct_clip (default: x2ct_clip)."),
    emb: Path | None = typer.Option(None, "--emb", help="embed-ct cache: also list the most similar CT volumes."),
    top_k: int | None = typer.Option(None, help="CT volumes listed per radiograph with --emb (default: 5)."),
    keep_identifiers: bool | None = typer.Option(
        None, "--keep-identifiers", help="Copy patient name, id, birth date, accession number from DICOM headers."
    ),
    batch_size: int | None = typer.Option(None, help="Radiographs per forward pass (default: 16)."),
    device: str | None = _DEVICE,
    config: Path | None = _CONFIG,
) -> None:
    """Zero-shot scores of the 18 CT-level labels for real radiographs (not calibrated, not a diagnosis)."""
    from pipeline.config_file import build_config
    from schemas.evaluate import PredictConfig
    from trainer.predict.stage import NOTE, run_predict

    cfg = build_config(
        PredictConfig,
        config,
        {
            "run": run, "inputs": inputs, "out": out, "checkpoint": checkpoint, "prompt_set": prompt_set,
            "embeddings": emb, "top_k": top_k, "keep_identifiers": keep_identifiers, "batch_size": batch_size,
            "device": device,
        },
    )  # fmt: skip
    rows = run_predict(cfg)
    bad = [r for r in rows if r["status"] != "ok"]
    typer.echo(f"{cfg.out}: {len(rows) - len(bad)} radiograph(s) scored, {len(bad)} failed. Note: {NOTE}.")
    for r in bad[:10]:
        typer.secho(f"  {r['error']}", fg=typer.colors.YELLOW, err=True)
