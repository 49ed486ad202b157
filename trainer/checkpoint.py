"""Training checkpoints: one dict of tensors and plain values, readable with
``torch.load(weights_only=True)``, written atomically (temporary file + rename).

Keys: ``format``; ``model`` (the encoder's state dict); ``encoder_spec`` (how to rebuild it);
``logit_scale`` (log of the logit scale); ``optimizer``, ``scheduler``; ``step`` (optimiser
steps done), ``epoch`` and ``epoch_step`` (the sampler position: the next step is step
``epoch_step`` of ``epoch``; ``epoch_step == steps_per_epoch`` means the epoch's validation is
still to do); ``rng`` (torch CPU and CUDA generator states); ``config`` (TrainConfig
identity); ``inputs`` (store and cache identities); ``best`` (metric, value, step);
``metrics_lines`` (lines of metrics.jsonl at save time: a resumed run cuts the file there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.ctclip.checkpoint import check_finite_weights, first_line
from pipeline.runtime import atomic_path
from schemas.errors import PipelineError

CHECKPOINT_FORMAT = 1


class CheckpointMismatchError(PipelineError):
    """A checkpoint from another config or other inputs (resume refused)."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointMismatchError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first_line(e)}); it is not a train checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not a train checkpoint (format {CHECKPOINT_FORMAT})")
    # NaN or infinite weights (a damaged file, a diverged run) would score every image NaN: refuse them here,
    # for evaluate, fewshot, predict and a resume alike.
    weights = dict(ckpt["model"])
    if "logit_scale" in ckpt:
        weights["logit_scale"] = torch.as_tensor(ckpt["logit_scale"], dtype=torch.float32)
    check_finite_weights(
        path, weights, fix="use another checkpoint of the run (--checkpoint latest or a step_*.pt) or train again"
    )
    return ckpt


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the values that differ between two JSON-like trees, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: checkpoint {str(old)[:60]!s}, now {str(new)[:60]!s}"]
    return []
