"""``x2ct-pipeline train``: the CXR encoder against the cached CT-CLIP targets, in one loop.

Order of work: join the DRR store and the cache of each split (``trainer.data``; every
refusal happens here, before any step), build the encoder (``trainer.encoder``) with a
projection to the cache's latent width, restore a checkpoint with ``resume`` (refused when
its config or inputs differ), then per epoch: the scan sampler's batches (one reconstruction
per scan), AdamW steps with gradient clipping and accumulation, a train metrics line every
``log_every`` steps, a checkpoint every ``checkpoint_every`` steps, validation at the end of
the epoch (``trainer.metrics``) and ``best.pt`` when the chosen metric improves.

Exactly resumable: the sampler's order is a function of (seed, epoch), each sample's
augmentation of (seed, epoch, position), and a checkpoint holds the model, optimiser,
scheduler, logit scale, step, sampler position and torch RNG states; a resumed run cuts
metrics.jsonl and the TensorBoard events back to the checkpoint and redoes the rest.

A non-finite loss or gradient stops the run before the optimiser step, naming the step and
the batch's volume ids; the last checkpoint written stays the newest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline._version import __version__
from pipeline.devices import refuse_missing_gpu
from pipeline.runtime import log_to_file, output_lock, refuse_foreign_folder, refuse_non_folder
from schemas.errors import PipelineError
from schemas.provenance import Provenance, json_sha256
from schemas.train import RunLayout, TrainConfig
from trainer.checkpoint import (
    CheckpointMismatchError,
    differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.data import DataError, JoinedSplit, ScanBatchSampler, TrainDataset, join_split
from trainer.distributed import DistEnv, all_gather_objects, barrier, init_process_group
from trainer.encoder import EncoderSpec, build_encoder, count_parameters, resolve_encoder
from trainer.loss import LogitScale, TriModalLoss
from trainer.metrics import validation_metrics
from trainer.run import RunError, write_prompts
from trainer.transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)

PLOT_EVERY_S = (
    60.0  # loss.png is redrawn after a validation at most this often (matplotlib takes ~0.5 s), and at the end
)


class NonFiniteLossError(PipelineError):
    """The loss or the gradient became NaN or infinite; the run stopped (last checkpoint kept)."""

    exit_code = 1


def pick_device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    """This process's device; ``train`` has already refused --device cuda without a GPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def _input_identity(split: JoinedSplit | None) -> dict[str, Any] | None:
    if split is None:
        return None
    return {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in split.identity.items()}


def load_splits(cfg: TrainConfig) -> tuple[JoinedSplit, JoinedSplit | None]:
    train = join_split(cfg.drr, cfg.embeddings, cfg.views, cfg.prompt_set)
    valid = None
    if cfg.valid_drr is not None and cfg.valid_embeddings is not None:
        valid = join_split(cfg.valid_drr, cfg.valid_embeddings, cfg.views, cfg.prompt_set)
        if valid.latent_dim != train.latent_dim:
            raise DataError(
                f"latent width differs: train cache {cfg.embeddings} has {train.latent_dim}, "
                f"valid cache {cfg.valid_embeddings} has {valid.latent_dim}; embed both with the same CT-CLIP"
            )
    if cfg.latent_dim is not None and cfg.latent_dim != train.latent_dim:
        raise DataError(
            f"latent width: the encoder projects to {cfg.latent_dim} but cache {cfg.embeddings} holds "
            f"{train.latent_dim}-d latents; drop --latent-dim or use the cache of the intended teacher"
        )
    n_scans = len(train.scan_groups())
    if n_scans < cfg.batch_size:
        raise DataError(
            f"batch size {cfg.batch_size} exceeds the {n_scans} scans of the training split ({cfg.drr}, "
            f"{cfg.embeddings}): an epoch would have no step; lower --batch-size"
        )
    return train, valid


@torch.no_grad()
def encode_split(encoder, split: JoinedSplit, transform, device, batch_size: int, workers: int, autocast) -> np.ndarray:
    """Latents of each item's first view (one radiograph per volume), in item order."""

    class _Eval(torch.utils.data.Dataset):
        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            return transform(split.read_image(i, 0))

    loader = torch.utils.data.DataLoader(_Eval(), batch_size=batch_size, num_workers=workers)
    was_training = encoder.training
    encoder.eval()
    out = []
    for images in loader:
        with autocast():
            out.append(encoder(images.to(device)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy()


def validate(
    encoder, split: JoinedSplit, cfg: TrainConfig, transform, device, autocast, scale: float
) -> dict[str, float]:
    x = encode_split(encoder, split, transform, device, min(cfg.batch_size, 256), cfg.workers, autocast)
    metrics = validation_metrics(
        x,
        split.ct,
        split.report,
        split.scan_ids,
        split.labels,
        split.prompts[cfg.prompt_set],
        float(math.log(scale)),
        cfg.recall_k,
    )
    reps = split.scan_representatives()  # one radiograph per scan: no two share a report
    loss_fn = TriModalLoss(cfg.loss_a, cfg.loss_b, cfg.loss_c)
    total, parts = loss_fn(
        torch.from_numpy(x[reps]),
        torch.from_numpy(split.ct[reps]),
        torch.from_numpy(split.report[reps]),
        torch.tensor(scale),
    )
    metrics["loss"] = float(total)
    metrics.update({k: float(v) for k, v in parts.items()})
    return metrics


def better(metric: str, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def plot_losses(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_path.exists():
        return
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        sel = [r for r in rows if r.get("split") == split]
        if not sel:
            continue
        steps = [r["step"] for r in sel]
        for key in ("loss", "loss_xr", "loss_xc", "loss_cr"):
            axes[0].plot(steps, [r[key] for r in sel], style, label=f"{split} {key}", markersize=3)
        if split == "valid":
            for key in ("x2c_recall@5", "x2r_recall@5", "auroc"):
                if key in sel[0]:
                    axes[1].plot(steps, [r[key] for r in sel], style, label=key, markersize=3)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    from pipeline.runtime import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class MetricsLog:
    """metrics.jsonl (appended, one object a line) and TensorBoard, rank 0 only."""

    def __init__(self, layout: RunLayout, keep_lines: int | None, purge_step: int | None):
        self.path = layout.metrics
        if keep_lines is not None and self.path.exists():  # resumed: drop what came after the checkpoint
            lines = self.path.read_text().splitlines(keepends=True)[:keep_lines]
            from pipeline.runtime import atomic_write_text

            atomic_write_text(self.path, "".join(lines))
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(layout.tensorboard), purge_step=purge_step)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.lines += 1
        for key, value in row.items():
            if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                self.tb.add_scalar(f"{row['split']}/{key}", value, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def prune_step_checkpoints(layout: RunLayout, keep: int) -> None:
    found = sorted(layout.checkpoints.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for p in found[:-keep]:
        p.unlink(missing_ok=True)


def link_latest(layout: RunLayout, step_path: Path) -> None:
    """latest.pt = the step checkpoint just written (hard link renamed into place: atomic, no copy)."""
    from pipeline.runtime import fsync_dir, temporary_name

    tmp = temporary_name(layout.latest)
    try:
        os.link(step_path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(step_path, tmp)
    os.replace(tmp, layout.latest)
    fsync_dir(layout.checkpoints)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run in ``cfg.out``; returns the run directory. Every refusal
    happens before the run directory is created or touched."""
    env = DistEnv.from_env()
    layout = RunLayout(root=cfg.out)
    refuse_missing_gpu(cfg.device)  # before the lock file is made
    refuse_non_folder(cfg.out, "a training run")
    # out.log: a run killed before it wrote config.json has only its log there
    refuse_foreign_folder(cfg.out, (layout.config.name, layout.checkpoints.name, layout.log.name), "a training run")
    with contextlib.ExitStack() as stack:
        if env.is_main:
            stack.enter_context(output_lock(cfg.out, "train"))
        prepared = _prepare(cfg, env, layout)
        if env.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(log_to_file(layout.log))
        return _train(cfg, env, layout, *prepared)


def _prepare(cfg: TrainConfig, env: DistEnv, layout: RunLayout):
    """Join the inputs, resolve the encoder, check a checkpoint to resume, pick the device."""
    log.info("train %s: reading %s and %s", cfg.out, cfg.drr, cfg.embeddings)
    train_split, valid_split = load_splits(cfg)
    spec = resolve_encoder(cfg.encoder, train_split.latent_dim, cfg.image_size, cfg.norm_mean, cfg.norm_std)
    inputs = {"train": _input_identity(train_split), "valid": _input_identity(valid_split)}

    ckpt = None
    if cfg.resume:
        if not layout.latest.is_file():
            raise RunError(f"{layout.root} has no checkpoints/latest.pt to resume; run without --resume")
        ckpt = load_checkpoint(layout.latest)
        diffs = differences(ckpt["config"], cfg.identity()) + differences(ckpt["inputs"], inputs, "inputs.")
        if diffs:
            raise CheckpointMismatchError(
                f"{layout.latest} was made with another config: {'; '.join(diffs)}; "
                "resume with the same options and inputs, or train into a new --out"
            )
    elif layout.latest.exists() or layout.config.exists():
        raise RunError(f"{layout.root} already holds a run; pass --resume to continue it or choose another --out")

    device = pick_device(cfg, env)
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise PipelineError("--precision bf16: this CPU has neither avx512_bf16 nor AMX; use --precision fp32")
    return train_split, valid_split, spec, inputs, ckpt, device


def _train(
    cfg: TrainConfig,
    env: DistEnv,
    layout: RunLayout,
    train_split: JoinedSplit,
    valid_split: JoinedSplit | None,
    spec: EncoderSpec,
    inputs: dict[str, Any],
    ckpt: dict[str, Any] | None,
    device: torch.device,
) -> Path:
    init_process_group(env, device)

    torch.manual_seed(cfg.seed)
    encoder = build_encoder(spec, cfg.init if ckpt is None else None).to(device)
    scale = LogitScale(train_split.temperature, cfg.logit_scale == "learnable").to(device)
    decay = [{"params": list(encoder.parameters()), "weight_decay": cfg.weight_decay}]
    if cfg.logit_scale == "learnable":
        decay.append({"params": [scale.log_scale], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(decay, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sampler = ScanBatchSampler(
        train_split.scan_groups(), cfg.batch_size, cfg.grad_accum, env.rank, env.world_size, cfg.seed
    )
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))

    step, epoch, epoch_step = 0, 0, 0
    best: dict[str, Any] = {"metric": cfg.best_metric, "value": None, "step": None}
    if ckpt is not None:
        encoder.load_state_dict(ckpt["model"])
        scale.log_scale.data.copy_(ckpt["logit_scale"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, epoch, epoch_step = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["epoch_step"])
        best = dict(ckpt["best"])
        set_rng_state(ckpt["rng"])
        log.info(
            "resumed %s at step %d (epoch %d, step %d of %d)", layout.latest, step, epoch, epoch_step, steps_per_epoch
        )

    model: Any = encoder  # the encoder, maybe wrapped by DDP and torch.compile
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    loss_fn = TriModalLoss(cfg.loss_a, cfg.loss_b, cfg.loss_c, env.rank, env.world_size)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    metrics_log: MetricsLog | None = None
    if env.is_main:
        for leftover in layout.checkpoints.glob(".*.tmp-*"):  # what a killed checkpoint write left
            leftover.unlink(missing_ok=True)
        if ckpt is None:
            meta = {
                "config": cfg.model_dump(mode="json"),
                "encoder_spec": spec.to_json(),
                "provenance": Provenance(
                    stage="train",
                    software_version=__version__,
                    config=cfg.model_dump(mode="json"),
                    config_sha256=json_sha256(cfg.identity()),
                    manifest_sha256=train_split.identity["store"]["manifest_sha256"],
                    checkpoint_sha256=train_split.identity["cache"]["checkpoint_sha256"] or None,
                ).model_dump(mode="json"),
                "inputs": {"train": train_split.identity, "valid": valid_split.identity if valid_split else None},
                "world_size": env.world_size,
                "parameters": count_parameters(encoder),
            }
            from pipeline.runtime import atomic_write_text

            atomic_write_text(layout.config, json.dumps(meta, indent=2))
            write_prompts(layout.prompts, train_split.prompts, train_split.temperature, train_split.label_names)
        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        metrics_log = MetricsLog(
            layout,
            keep_lines=None if ckpt is None else int(ckpt["metrics_lines"]),
            purge_step=None if ckpt is None else step + 1,
        )
    log.info(
        "encoder %s (%s, %d parameters, input %d px, mean %s, std %s) -> %d-d; %d train items (%d scans, %d "
        "samples), %s valid items; %d steps per epoch, %d steps in all, %d process(es) on %s",
        spec.name,
        spec.source,
        count_parameters(encoder),
        spec.image_size,
        spec.mean,
        spec.std,
        spec.latent_dim,
        len(train_split),
        len(sampler.groups),
        len(train_split) * len(cfg.views),
        len(valid_split) if valid_split else "no",
        steps_per_epoch,
        total_steps,
        env.world_size,
        device,
    )

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "model": encoder.state_dict(),
            "encoder_spec": spec.to_json(),
            "logit_scale": scale.log_scale.detach().cpu().clone(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch,
            "epoch_step": epoch_step,
            "rng": rng_state(),
            "config": cfg.identity(),
            "inputs": inputs,
            "best": best,
            "metrics_lines": metrics_log.lines if metrics_log else 0,
        }

    def save_step() -> None:
        if env.is_main:
            path = layout.step(step)
            save_checkpoint(path, checkpoint_payload())
            link_latest(layout, path)
            prune_step_checkpoints(layout, cfg.keep_checkpoints)
            log.debug("checkpoint %s", path)
        barrier(env)

    def run_validation() -> None:
        if metrics_log is not None and valid_split is not None:
            t0 = time.perf_counter()
            values = validate(encoder, valid_split, cfg, EvalTransform(spec), device, autocast, float(scale()))
            metrics_log.write({"step": step, "epoch": epoch, "split": "valid", **values})
            value = values[cfg.best_metric]
            if better(cfg.best_metric, value, best["value"]):
                best.update(value=value, step=step)
                save_checkpoint(layout.best, checkpoint_payload())
            log.info(
                "valid step %d: loss %.4f, X->C R@5 %.3f, X->R R@5 %.3f, AUROC %.3f (%.1f s)%s",
                step,
                values["loss"],
                values.get("x2c_recall@5", float("nan")),
                values.get("x2r_recall@5", float("nan")),
                values["auroc"],
                time.perf_counter() - t0,
                " best" if best["step"] == step else "",
            )
        if env.is_main and time.monotonic() - last_plot[0] > PLOT_EVERY_S:
            plot_losses(layout.metrics, layout.loss_png)
            last_plot[0] = time.monotonic()
        barrier(env)

    last_plot = [time.monotonic()]
    dataset = TrainDataset(train_split, TrainTransform(spec, cfg.augment))
    bar = None
    if env.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    last_saved = step if ckpt is not None else -1
    model.train()
    while step < total_steps:
        sampler.set_epoch(epoch, epoch_step)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if cfg.workers else None,
        )
        batches = iter(loader)
        while epoch_step < steps_per_epoch and step < total_steps:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            terms: dict[str, float] = {}
            for m in range(cfg.grad_accum):
                batch = next(batches)
                images = batch["image"].to(device, non_blocking=True)
                sync = model.no_sync() if env.enabled and m < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        z = model(images)
                    loss, parts = loss_fn(z, batch["ct"].to(device), batch["report"].to(device), scale())
                    if not torch.isfinite(loss):
                        _stop_non_finite(env, train_split, batch, step, "loss", float(loss.detach()))
                    (loss / cfg.grad_accum).backward()
                for k, v in {"loss": loss.detach(), **parts}.items():
                    terms[k] = terms.get(k, 0.0) + float(v) / cfg.grad_accum
            params = list(encoder.parameters()) + ([scale.log_scale] if cfg.logit_scale == "learnable" else [])
            if cfg.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            else:
                grad_norm = float(
                    torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
                )
            if not math.isfinite(grad_norm):
                _stop_non_finite(env, train_split, batch, step, "gradient norm", grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_step += 1
            dt = time.perf_counter() - t0
            ips = cfg.batch_size / dt
            for k, v in {**terms, "images_per_s": ips, "grad_norm": grad_norm}.items():
                window.setdefault(k, []).append(v)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", img_s=f"{ips:.1f}")
            if metrics_log is not None and (step % cfg.log_every == 0 or step == total_steps):
                row = {"step": step, "epoch": epoch, "split": "train"}
                row.update({k: float(np.mean(v)) for k, v in window.items()})
                row.update(lr=scheduler.get_last_lr()[0], logit_scale=float(scale()))
                metrics_log.write(row)
                window.clear()
            if step % cfg.checkpoint_every == 0:
                save_step()
                last_saved = step
        if epoch_step >= steps_per_epoch:  # the epoch is complete: validate, then move on
            run_validation()
            epoch, epoch_step = epoch + 1, 0
        elif step >= total_steps:  # max_steps stopped the run inside an epoch
            run_validation()
        del batches, loader
    if last_saved != step or not layout.latest.exists():
        save_step()
    if bar is not None:
        bar.close()
    if metrics_log is not None:
        plot_losses(layout.metrics, layout.loss_png)
        metrics_log.close()
        best_text = (
            f"best {best['metric']} = {best['value']:.4g} at step {best['step']}"
            if best["value"] is not None
            else "no validation result, so no best.pt"
        )
        log.info("done: %d steps; run directory %s (%s)", step, layout.root, best_text)
    return layout.root


def _stop_non_finite(env: DistEnv, split: JoinedSplit, batch, step: int, what: str, value: float) -> None:
    ids = [split.volume_ids[int(i)] for i in batch["item"]]
    everyone = [v for part in all_gather_objects(env, ids) for v in part]
    shown = ", ".join(everyone[:20]) + (f" (+{len(everyone) - 20} more)" if len(everyone) > 20 else "")
    raise NonFiniteLossError(
        f"{what} is {value} at step {step + 1}; batch volumes: {shown}. Stopped; the last checkpoint is kept. "
        "Lower --lr, check these volumes' DRRs and latents, or resume with --resume after fixing the data"
    )
