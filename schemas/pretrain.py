"""pretrain-ctclip: the options of a CT-CLIP pretraining run (CT and report pairs, symmetric InfoNCE).

The run folder follows the layout of ``train`` runs (config.json, out.log,
metrics.jsonl, checkpoints/{step_N,latest,best}.pt) and adds ``volumes/`` (the
preprocessed CT inputs, made once) and ``export/`` (the model as embed-ct loads it:
``ctclip.pt`` state dict, ``model_config.json``, ``vocab.txt``, ``provenance.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas.base import StageConfig
from schemas.ct import CTLoadConfig


class PretrainConfig(StageConfig):
    """Options of ``x2ct-pipeline pretrain-ctclip``."""

    manifest: Path = Field(description="Manifest (JSON Lines) of the training CT and report pairs.")
    valid_manifest: Path | None = Field(
        default=None, description="Manifest of held-out patients: validation loss and zero-shot AUROC each epoch."
    )
    tokenizer: Path = Field(description="Folder with vocab.txt (x2ct-pipeline ctclip vocab).")
    out: Path = Field(description="Run folder; rerunning the same command resumes it.")
    model: str = Field(
        default="small", description="CT-CLIP config (name or JSON); text.vocab_size is set to the vocabulary's."
    )
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=2, description="CT and report pairs per step (InfoNCE negatives).")
    lr: float = Field(default=1e-3, gt=0, description="AdamW peak learning rate (linear warm-up, cosine decay).")
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    text_init_std: float = Field(
        default=0.1,
        gt=0,
        description="Std of the text encoder's initial weights (BERT's own is 0.02): larger weights make the "
        "untrained encoder's output depend on the words, so contrastive training does not start collapsed.",
    )
    anchor_epochs: int = Field(
        default=4,
        ge=0,
        description="Epochs at the start where each tower is trained (InfoNCE) towards fixed anchors instead of "
        "the other tower: per report, the IDF-weighted sum of fixed random vectors of its sentences. Both towers "
        "start nearly constant and joint training stays at that saddle; anchors are distinct from the first step.",
    )
    anchor_units: Literal["sentence", "word"] = Field(
        default="sentence",
        description="What the anchors are built from: whole sentences (each distinct sentence its own random "
        "vector), or the token unigrams and bigrams of the sentences, so that phrasings of one finding share "
        "the vectors of its words.",
    )
    temperature_init: float = Field(default=2.659, description="Initial log logit scale (CLIP's log(1/0.07)).")
    max_logit_scale: float = Field(default=100.0, gt=0, description="The logit scale is clamped to this.")
    report_subset_prob: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Chance that a step's text is a random subset of the report's sentences (kept in order) "
        "instead of the whole report, so single sentences and prompts land near the CTs they describe.",
    )
    vq_decay: float = Field(default=0.8, ge=0, lt=1, description="EMA decay of the quantiser's codebook.")
    vq_commitment: float = Field(default=0.25, ge=0, description="Weight of the quantiser's commitment loss.")
    vq_dead_code_threshold: float = Field(default=0.05, ge=0, description="Restart codes used less (EMA tokens/step).")
    checkpoint_every: int = Field(default=200, ge=1, description="Steps between checkpoints (and at each epoch end).")
    keep_checkpoints: int = Field(default=3, ge=1, description="step_N.pt files kept (latest and best always).")
    seed: int = 0
    threads: int | None = Field(default=None, ge=1, description="torch threads (default: torch's).")
    max_failures: int = Field(default=100, ge=0, description="Stop once more volumes failed to load.")
    ct: CTLoadConfig = CTLoadConfig()
    progress: bool = True

    def identity(self) -> dict:
        """What a resumed run must share with the checkpoint (everything but paths and cosmetics)."""
        return self.model_dump(
            mode="json", exclude={"out", "progress", "threads", "checkpoint_every", "keep_checkpoints"}
        )
