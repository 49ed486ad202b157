"""train: the config of ``x2ct-pipeline train`` and the layout of a training run directory.

A run directory holds everything a later stage needs, so that ``evaluate`` and ``predict``
read the run alone (``trainer.run.load_run``)::

    RUN/
      config.json        the resolved TrainConfig plus provenance (software version, the DRR
                         store's and the cache's identities, creation time)
      out.log            the full log
      metrics.jsonl      one JSON object per line: {"step", "epoch", "split": "train"|"valid", ...}
      tensorboard/       event files
      loss.png           loss curves
      prompts.npz        the cache's prompt latents: "temperature", "label_names" (18,),
                         "<set>/positive", "<set>/negative" (18, D) float32 for each prompt set
      checkpoints/
        step_<N>.pt      every ``checkpoint_every`` steps; torch.load(weights_only=True)
        latest.pt        the newest
        best.pt          the best by ``best_metric`` on the validation split
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.base import StageConfig
from schemas.drr import View, unique_views

Precision = Literal["fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]
Schedule = Literal["constant", "cosine"]
LogitScaleMode = Literal["frozen", "learnable"]
BestMetric = Literal["auroc", "x2c_recall@5", "x2c_recall@10", "x2r_recall@5", "x2r_recall@10", "loss"]


class AugmentConfig(StageConfig):
    """Training augmentation of a [0, 1] radiograph (evaluation: resize + centre crop only)."""

    crop_scale: tuple[float, float] = Field(
        default=(0.8, 1.1),
        description="RandomResizedCrop area fraction range; draws above 1 that do not fit are redrawn (torchvision).",
    )
    clahe_p: float = Field(default=0.5, ge=0.0, le=1.0, description="Probability of CLAHE per training image.")
    clahe_clip: float = Field(default=4.0, gt=0, description="CLAHE clip limit (multiples of the mean bin count).")
    clahe_tiles: int = Field(default=8, ge=1, le=64, description="CLAHE tiles per side.")
    brightness: float = Field(default=0.1, ge=0.0, description="Brightness jitter: factor drawn in [1-b, 1+b].")
    contrast: float = Field(default=0.2, ge=0.0, description="Contrast jitter: factor drawn in [1-c, 1+c].")

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, v):
        if not 0.0 < v[0] <= v[1]:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high, got {v}")
        return v


class TrainConfig(StageConfig):
    """Options of ``x2ct-pipeline train`` (defaults: the X2CT-CLIP paper's settings)."""

    drr: Path = Field(description="simulate-drr store (Zarr) of the training split.")
    embeddings: Path = Field(description="embed-ct cache (HDF5) of the training split.")
    valid_drr: Path | None = Field(default=None, description="simulate-drr store of the validation split.")
    valid_embeddings: Path | None = Field(default=None, description="embed-ct cache of the validation split.")
    out: Path = Field(description="Run directory to create (or continue with resume).")

    encoder: str = Field(
        default="swin-t",
        description="CXR encoder: a preset (tiny, resnet-mini, swin-t, vit-b-16, resnet-50), an open_clip model name, "
        "'timm:<name>' for any timm backbone, or an open_clip model config JSON file.",
    )
    init: Path | None = Field(
        default=None, description="Initial weights (local file): open_clip or timm state dict, or one of our runs."
    )
    image_size: int | None = Field(default=None, ge=16, le=1024, description="Input side (default: the encoder's).")
    norm_mean: tuple[float, float, float] | None = Field(
        default=None, description="Override the encoder config's normalisation mean (e.g. to match init weights)."
    )
    norm_std: tuple[float, float, float] | None = Field(default=None, description="Override of the std.")
    latent_dim: int | None = Field(
        default=None, ge=1, description="Expected teacher latent width (default: the cache's); checked before training."
    )
    views: list[View] = Field(
        default_factory=lambda: list[View](["pa"]), min_length=1, description="Views used as samples."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    loss_a: float = Field(default=0.0, ge=0.0, description="Weight of L(C,R): logged only (cached, no gradient).")
    loss_b: float = Field(default=1.0, ge=0.0, description="Weight of L(X,R).")
    loss_c: float = Field(default=1.0, ge=0.0, description="Weight of L(X,C).")
    logit_scale: LogitScaleMode = Field(
        default="frozen", description="'frozen' at exp(the cache's CT-CLIP temperature) (the paper) or 'learnable'."
    )

    epochs: int = Field(default=50, ge=1, description="Passes over the scans (one reconstruction of each per epoch).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimiser steps.")
    batch_size: int = Field(default=360, ge=2, description="Global batch (samples per optimiser step).")
    grad_accum: int = Field(
        default=1, ge=1, description="Micro-batches per step; each contrasts within its own micro-batch."
    )
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    betas: tuple[float, float] = Field(default=(0.9, 0.99))
    grad_clip: float | None = Field(default=0.5, gt=0, description="Max gradient norm; None: no clipping.")
    schedule: Schedule = Field(default="constant", description="'constant' (the paper) or 'cosine' decay to 0.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup steps.")
    precision: Precision = Field(default="fp32", description="'bf16': autocast on CUDA or on a CPU with bf16.")
    compile: bool = Field(default=False, description="torch.compile the encoder.")
    device: Device = Field(default="auto")
    seed: int = Field(default=0)
    workers: int = Field(default=4, ge=0, description="DataLoader worker processes per rank.")

    checkpoint_every: int = Field(default=500, ge=1, description="Steps between checkpoints (and one at the end).")
    keep_checkpoints: int = Field(default=3, ge=1, description="step_<N>.pt files kept (newest).")
    log_every: int = Field(default=10, ge=1, description="Steps between train metrics lines.")
    best_metric: BestMetric = Field(default="auroc", description="Validation metric that selects best.pt.")
    recall_k: list[int] = Field(default_factory=lambda: [5, 10, 50, 100], description="K of Recall@K.")
    prompt_set: str = Field(default="x2ct_clip", description="Cache prompt set used for zero-shot AUROC.")
    resume: bool = Field(default=False, description="Continue the run in out from checkpoints/latest.pt.")
    progress: bool = Field(default=True, description="tqdm bar.")

    _unique = field_validator("views")(unique_views)

    @model_validator(mode="after")
    def _pairs(self):
        if (self.valid_drr is None) != (self.valid_embeddings is None):
            raise ValueError("give valid_drr and valid_embeddings together (or neither)")
        if self.loss_b == 0 and self.loss_c == 0:
            raise ValueError("loss_b and loss_c are both 0: nothing would be trained")
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that decide the trained weights; a resumed run must match them."""
        return self.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)


# Fields that may change between a run and its resumption (they do not change the result). The
# paths may change too (a moved run or data set): the inputs are compared by their identities
# (store config and manifest hashes, cache identity), not by where they lie.
OPERATIONAL_FIELDS = {
    "resume",
    "progress",
    "workers",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "device",
    "out",
    "drr",
    "embeddings",
    "valid_drr",
    "valid_embeddings",
}


class RunLayout(BaseModel):
    """File names inside a run directory."""

    model_config = ConfigDict(frozen=True)

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def log(self) -> Path:
        return self.root / "out.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.npz"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def step(self, n: int) -> Path:
        return self.checkpoints / f"step_{n}.pt"
