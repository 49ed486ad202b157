"""Whether a cache's CT-CLIP latents are comparable with a run's encoder (evaluate, predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.errors import PipelineError


class TeacherMismatchError(PipelineError):
    """The cache was made by another CT-CLIP (or another latent width) than the run was trained against."""


def find_key(d: Any, key: str) -> str | None:
    """The first string value of ``key`` anywhere in a nested dict (provenance layouts vary by stage)."""
    if isinstance(d, dict):
        if isinstance(d.get(key), str):
            return d[key]
        for v in d.values():
            found = find_key(v, key)
            if found:
                return found
    return None


def check_teacher(run, cache_width: int, cache_checkpoint: str | None, cache_path: Path) -> None:
    """Refuse a cache of another latent width, or of another CT-CLIP checkpoint when both are recorded."""
    run_width = int(next(iter(run.prompts.values()))["positive"].shape[1])
    if run_width != cache_width:
        raise TeacherMismatchError(
            f"cache {cache_path} holds {cache_width}-d latents but the run's encoder gives {run_width}-d; "
            "give a cache made by the CT-CLIP the run was trained against"
        )
    trained = find_key(run.provenance, "checkpoint_sha256")
    if trained and cache_checkpoint and trained != cache_checkpoint:
        raise TeacherMismatchError(
            f"cache {cache_path} was made with CT-CLIP checkpoint {cache_checkpoint[:12]} but the run was trained "
            f"against {trained[:12]}; latents of different CT-CLIPs are not comparable"
        )
