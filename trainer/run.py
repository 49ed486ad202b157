"""Read a finished (or running) training run: the trained encoder and what predicting needs.

``load_run(run_dir, checkpoint="best"|"latest"|path)`` needs the run directory alone (layout
in ``schemas.train``): the encoder is rebuilt from the spec stored in the checkpoint, the
prompt latents and the temperature come from ``prompts.npz`` (copied from the cache when the
run started).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.errors import PipelineError
from schemas.train import RunLayout, TrainConfig
from trainer.checkpoint import load_checkpoint
from trainer.encoder import CXREncoder, EncoderSpec, build_encoder
from trainer.transforms import EvalTransform

log = logging.getLogger(__name__)


class RunError(PipelineError):
    """Not a training run directory, or a checkpoint missing from it."""


@dataclass
class LoadedRun:
    encoder: CXREncoder  # eval mode; encoder(images (B, 3, S, S)) -> (B, D) L2-normalised
    eval_transform: EvalTransform  # (H, W) float32 in [0, 1] -> (3, S, S)
    prompts: dict[str, dict[str, np.ndarray]]  # set -> {"positive", "negative"}: (18, D)
    temperature: float  # logit scale = exp(temperature)
    label_names: list[str]
    config: TrainConfig
    provenance: dict[str, Any]
    checkpoint: Path
    step: int


def read_prompts(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], float, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        prompts: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            if "/" in key:
                s, kind = key.split("/", 1)
                prompts.setdefault(s, {})[kind] = z[key].astype(np.float32)
        return prompts, float(z["temperature"]), [str(x) for x in z["label_names"]]


def write_prompts(path: Path, prompts: dict[str, dict[str, np.ndarray]], temperature: float, label_names) -> None:
    from pipeline.runtime import atomic_path

    arrays: dict[str, np.ndarray] = {
        f"{s}/{k}": np.asarray(v, dtype=np.float32) for s, d in prompts.items() for k, v in d.items()
    }
    with atomic_path(path) as tmp:
        arrays.update(temperature=np.float32(temperature), label_names=np.array(label_names, dtype=str))
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs take ** as allow_pickle


def resolve_checkpoint(layout: RunLayout, checkpoint: str | Path) -> Path:
    if checkpoint == "best":
        if layout.best.is_file():
            return layout.best
        log.info("%s has no best.pt (no validation split); using latest.pt", layout.root)
        checkpoint = "latest"
    if checkpoint == "latest":
        if not layout.latest.is_file():
            raise RunError(f"{layout.root} has no checkpoints/latest.pt; the run has not saved a checkpoint yet")
        return layout.latest
    return Path(checkpoint)


def load_run(run_dir: str | Path, checkpoint: str | Path = "best", device: str | torch.device = "cpu") -> LoadedRun:
    layout = RunLayout(root=Path(run_dir))
    if not layout.config.is_file():
        raise RunError(f"{layout.root} is not a training run (no config.json); give the --out of `x2ct-pipeline train`")
    meta = json.loads(layout.config.read_text())
    path = resolve_checkpoint(layout, checkpoint)
    ckpt = load_checkpoint(path)
    spec = EncoderSpec.from_json(ckpt["encoder_spec"])
    encoder = build_encoder(spec)
    encoder.load_state_dict(ckpt["model"])
    encoder.to(device).eval()
    prompts, temperature, label_names = read_prompts(layout.prompts)
    temperature = float(ckpt["logit_scale"]) if "logit_scale" in ckpt else temperature
    return LoadedRun(
        encoder=encoder,
        eval_transform=EvalTransform(spec),
        prompts=prompts,
        temperature=temperature,
        label_names=label_names,
        config=TrainConfig.model_validate(meta["config"]),
        provenance=meta.get("provenance", {}),
        checkpoint=path,
        step=int(ckpt["step"]),
    )
