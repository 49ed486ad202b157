"""``x2ct-pipeline pretrain-ctclip``: train a CT-CLIP of our own on CT and report pairs.

The options live here (``--help`` must not import the trainer); the work is
``trainer.teacher.pretrain``, imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path

import typer


def pretrain_ctclip(
    manifest: Path | None = typer.Option(None, help="Manifest (.jsonl) of the training CT and report pairs."),
    tokenizer: Path | None = typer.Option(None, help="Folder with vocab.txt (x2ct-pipeline ctclip vocab)."),
    out: Path | None = typer.Option(None, help="Run folder; the same command again resumes it."),
    valid_manifest: Path | None = typer.Option(
        None, help="Held-out patients: validation loss and zero-shot AUROC per epoch, best checkpoint."
    ),
    model: str | None = typer.Option(None, help="CT-CLIP config, name or JSON (default: small)."),
    epochs: int | None = typer.Option(None, help="Passes over the training scans (default: 8)."),
    batch_size: int | None = typer.Option(None, help="Pairs per step (default: 32)."),
    lr: float | None = typer.Option(None, help="AdamW peak learning rate (default: 1e-3)."),
    report_subset_prob: float | None = typer.Option(
        None, help="Chance a step's text is a random subset of the report's sentences (default: 0.5)."
    ),
    anchor_epochs: int | None = typer.Option(
        None, help="Epochs each tower first learns towards fixed per-report anchors (default: 4)."
    ),
    anchor_units: str | None = typer.Option(
        None, help="Anchors from whole 'sentence's or from 'word' unigrams and bigrams (default: sentence)."
    ),
    checkpoint_every: int | None = typer.Option(None, help="Steps between checkpoints (default: 200)."),
    seed: int | None = typer.Option(None, help="Random seed (default: 0)."),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm progress bar (default: on)."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with these options; flags override it."
    ),
) -> None:
    """Train a CT-CLIP (a small config by default) with symmetric InfoNCE; export/ loads into embed-ct."""
    from pipeline.cli_errors import friendly_errors

    friendly_errors(_run)(
        config,
        {
            "manifest": manifest,
            "tokenizer": tokenizer,
            "out": out,
            "valid_manifest": valid_manifest,
            "model": model,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "report_subset_prob": report_subset_prob,
            "anchor_epochs": anchor_epochs,
            "anchor_units": anchor_units,
            "checkpoint_every": checkpoint_every,
            "seed": seed,
            "threads": threads,
            "progress": progress,
        },
    )


def _run(config: Path | None, overrides: dict) -> None:
    from pipeline.config_file import build_config
    from schemas.pretrain import PretrainConfig
    from trainer.teacher.pretrain import run_pretrain

    cfg = build_config(PretrainConfig, config, overrides)
    r = run_pretrain(cfg)
    best = r.best or {}
    value = best.get("value")
    typer.echo(
        f"{r.out}: {r.steps} steps, {r.epochs} epochs in {r.wall_s:.0f} s; best {best.get('metric')} "
        f"{'' if value is None else f'{value:.3f} '}at step {best.get('step')}; exported to {r.export}"
    )
