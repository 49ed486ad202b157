"""x2ct-pipeline demo: the whole method on fresh synthetic patients, with the bundled teacher."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from schemas.base import StageConfig

# The bundled teacher was pretrained on synth seed 1000; the demo's patients come from another seed.
DEMO_SEED = 20260


class DemoConfig(StageConfig):
    """Options of ``x2ct-pipeline demo`` (defaults: about 10 minutes on 2 CPU cores)."""

    out: Path = Field(default=Path("out/demo"), description="Folder of the whole demo; a rerun resumes it.")
    n: int = Field(default=1400, ge=8, description="Synthetic volumes (reconstructions) to make.")
    size: int = Field(default=64, ge=32, description="In-plane CT matrix (voxels).")
    test_fraction: float = Field(default=0.35, gt=0, lt=1, description="Share of patients held out for the figures.")
    seed: int = Field(default=DEMO_SEED, description="Synthetic patients' seed (keep it off the teacher's, 1000).")
    drr_size: int = Field(default=128, ge=32, description="Simulated radiograph side (pixels).")
    encoder: str = Field(
        default="resnet-mini", description="CXR encoder of `train` (a preset, open_clip model name or config .json)."
    )
    epochs: int = Field(default=60, ge=1, description="Student training epochs (one radiograph per scan each).")
    batch_size: int = Field(default=32, ge=2, description="Student batch size.")
    lr: float = Field(default=1e-3, gt=0, description="Student learning rate.")
    pretrain_teacher: bool = Field(
        default=False, description="Pretrain the teacher inside the run (pretrain-ctclip) instead of the bundled one."
    )
    teacher_epochs: int = Field(
        default=8,
        ge=1,
        description="Epochs of the in-run teacher (--pretrain-teacher; the first half towards anchors).",
    )
    teacher: Path | None = Field(
        default=None,
        description="A teacher folder (ctclip.pt, model_config.json, vocab.txt); default: the bundled one.",
    )
    workers: int = Field(default=2, ge=1, description="Processes for synth and simulate-drr.")
    progress: bool = False
