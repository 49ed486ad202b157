"""A tiny training config on the chain's stores and caches, for tests of train and of what reads runs."""

from __future__ import annotations

from pathlib import Path

from schemas.train import TrainConfig

# No augmentation: 60 steps at lr 2e-3 then memorise the 19 training volumes (the learning test).
NO_AUGMENT = {"clahe_p": 0.0, "crop_scale": (1.0, 1.0), "brightness": 0.0, "contrast": 0.0}


def tiny_train_config(chain, out: Path, **over) -> TrainConfig:
    """The tiny encoder on the chain's training split; 14 scans, so batch 7 is 2 steps per epoch."""
    base = dict(
        drr=chain.drr["train"],
        embeddings=chain.embeddings["train"],
        out=out,
        encoder="tiny",
        batch_size=7,
        epochs=100,
        workers=0,
        progress=False,
        log_every=2,
    )
    return TrainConfig.model_validate(base | over)
