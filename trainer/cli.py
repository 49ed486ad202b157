"""``x2ct-pipeline train``: the typer command. ``pipeline.cli`` reaches it through a lazy wrapper
(``pipeline`` never imports ``trainer`` at module level), which hands it the raw arguments."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors
from schemas.errors import PipelineError

train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@train_app.command()
@friendly_errors
def train(
    drr: Path | None = typer.Option(None, help="simulate-drr store (Zarr folder) of the training split."),
    embeddings: Path | None = typer.Option(None, help="embed-ct cache (.h5) of the training split."),
    valid_drr: Path | None = typer.Option(None, help="simulate-drr store of the validation split."),
    valid_embeddings: Path | None = typer.Option(None, help="embed-ct cache of the validation split."),
    out: Path | None = typer.Option(None, help="Run directory to create (or continue with --resume)."),
    encoder: str | None = typer.Option(
        None,
        help="tiny, resnet-mini, swin-t, vit-b-16, resnet-50, an open_clip model name, timm:<name>, or an open_clip "
        "model config .json (default: swin-t).",
    ),
    init: Path | None = typer.Option(None, help="Initial weights: open_clip or timm state dict, or one of our runs."),
    views: str | None = typer.Option(
        None, help="Comma-separated views used as samples: pa, ap, lateral (default: pa)."
    ),
    image_size: int | None = typer.Option(None, help="Input side in pixels (default: the encoder config's)."),
    loss_a: float | None = typer.Option(None, help="Weight of L(C,R): logged only, no gradient (default: 0)."),
    loss_b: float | None = typer.Option(None, help="Weight of L(X,R) (default: 1)."),
    loss_c: float | None = typer.Option(None, help="Weight of L(X,C) (default: 1)."),
    logit_scale: str | None = typer.Option(
        None, help="frozen (at exp of the cache's CT-CLIP temperature) or learnable (default: frozen)."
    ),
    epochs: int | None = typer.Option(None, help="Epochs; one reconstruction of each scan per epoch (default: 50)."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimiser steps (default: no limit)."),
    batch_size: int | None = typer.Option(None, help="Global batch, samples per optimiser step (default: 360)."),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per step (default: 1)."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (default: 5e-5)."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay (default: 1e-4)."),
    grad_clip: float | None = typer.Option(None, help="Max gradient norm (default: 0.5)."),
    schedule: str | None = typer.Option(None, help="constant or cosine (default: constant)."),
    warmup_steps: int | None = typer.Option(None, help="Linear warmup steps (default: 0)."),
    precision: str | None = typer.Option(
        None, help="fp32 or bf16 autocast (CUDA, or a CPU with bf16) (default: fp32)."
    ),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the encoder (default: off)."
    ),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: auto)."),
    seed: int | None = typer.Option(None, help="Seed of the initialisation, sampling and augmentation (default: 0)."),
    workers: int | None = typer.Option(None, help="DataLoader worker processes per process (default: 4)."),
    checkpoint_every: int | None = typer.Option(None, help="Steps between checkpoints (default: 500)."),
    keep_checkpoints: int | None = typer.Option(None, help="step_<N>.pt files kept, newest first (default: 3)."),
    latent_dim: int | None = typer.Option(
        None, help="Expected teacher latent width; refused before training if the cache differs (default: the cache's)."
    ),
    prompt_set: str | None = typer.Option(
        None, help="Cache prompt set for the zero-shot AUROC: x2ct_clip or ct_clip (default: x2ct_clip)."
    ),
    log_every: int | None = typer.Option(None, help="Steps between train lines of metrics.jsonl (default: 10)."),
    best_metric: str | None = typer.Option(
        None, help="auroc, x2c_recall@5/10, x2r_recall@5/10 or loss: selects best.pt (default: auroc)."
    ),
    resume: bool | None = typer.Option(None, "--resume", help="Continue the run in --out from its latest checkpoint."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="tqdm bar (default: on)."),
    nproc: int | None = typer.Option(
        None, help="Launch this many processes with torchrun (DDP) on this machine (default: this process only)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with these options; flags override it."
    ),
) -> None:
    """Train the CXR encoder on DRRs against the cached CT-CLIP latents (resumable; torchrun for several GPUs)."""
    if nproc is not None and nproc > 1:  # main() launches torchrun before this body runs
        raise PipelineError("--nproc is handled by `x2ct-pipeline train`; under torchrun leave it out")
    from pipeline.config_file import build_config
    from pipeline.runtime import setup_logging
    from schemas.train import TrainConfig
    from trainer.train import train as run_train

    cfg = build_config(
        TrainConfig,
        config,
        {
            "drr": drr,
            "embeddings": embeddings,
            "valid_drr": valid_drr,
            "valid_embeddings": valid_embeddings,
            "out": out,
            "encoder": encoder,
            "init": init,
            "views": [v.strip() for v in views.split(",") if v.strip()] if views else None,
            "image_size": image_size,
            "loss_a": loss_a,
            "loss_b": loss_b,
            "loss_c": loss_c,
            "logit_scale": logit_scale,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": lr,
            "weight_decay": weight_decay,
            "grad_clip": grad_clip,
            "schedule": schedule,
            "warmup_steps": warmup_steps,
            "precision": precision,
            "compile": compile,
            "device": device,
            "seed": seed,
            "workers": workers,
            "checkpoint_every": checkpoint_every,
            "log_every": log_every,
            "keep_checkpoints": keep_checkpoints,
            "latent_dim": latent_dim,
            "prompt_set": prompt_set,
            "best_metric": best_metric,
            "resume": resume,
            "progress": progress,
        },
    )
    setup_logging()
    run_train(cfg)


def main(args: list[str]) -> None:
    """Run the command with ``args`` (what follows ``train`` on the command line). With
    ``--nproc K`` (K > 1) it reruns itself under torchrun, K processes on this machine."""
    from trainer.distributed import parse_nproc, strip_nproc, torchrun_command

    nproc = parse_nproc(args)
    if nproc is not None and nproc > 1:
        import subprocess

        raise SystemExit(subprocess.call(torchrun_command(nproc, strip_nproc(args))))
    typer.main.get_command(train_app)(args=args, prog_name="x2ct-pipeline train")
