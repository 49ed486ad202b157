"""Shared helpers of the CT-CLIP tests: a tiny vocabulary and tiny random-weight models."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["there", "is", "no", "present", "not", "lung", "nodule", "effusion", "normal", "heart", "size", "the", "."]
VOCAB = SPECIALS + WORDS + [chr(c) for c in range(ord("a"), ord("z") + 1)]  # 44 tokens, below tiny's 64
OFFICIAL_KEYS = Path(__file__).parent / "data" / "ctclip_official_keys.txt"


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


def official_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        out[key] = tuple(int(s) for s in shape.split(",") if s)
    return out


def tiny_model(seed: int = 0):
    """The tiny config with every float weight perturbed, so gains, biases and scales all matter."""
    from pipeline.ctclip.model import CTCLIP

    torch.manual_seed(seed)
    model = CTCLIP("tiny")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.numel() and "initted" not in name and "_codebook.embed" not in name:
                t.add_(torch.randn_like(t) * 0.1)
    return model


def tiny_volume(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    v = model.cfg.visual
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, v.num_slices, v.image_size, v.image_size, generator=g) * 2 - 1
