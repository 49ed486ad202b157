"""A stand-in for ``trainer.run.load_run``'s LoadedRun (the run contract), built in memory.

Tests of evaluate, fewshot and predict use it to exercise their command bodies without a
training run: a small seeded CNN encoder returning L2-normalised latents, the contract's
eval transform (resize the short side, centre crop, gray -> 3 channels, normalise), random
prompt latents for both prompt sets, and a temperature.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.embed import PROMPT_TEMPLATES
from schemas.labels import CT_RATE_LABELS


class TinyEncoder(nn.Module):
    def __init__(self, latent_dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, kernel_size=5, stride=2)
        self.proj = nn.Linear(8 * 4 * 4, latent_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        return F.normalize(self.proj(h), dim=-1)


class TinyEvalTransform:
    def __init__(self, size: int = 32):
        self.size = size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(
            x,
            size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
            mode="bilinear",
            antialias=True,
        )
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size][0].clamp(0, 1)
        return (x.expand(3, -1, -1) - 0.5) / 0.5


def tiny_run(latent_dim: int = 16, seed: int = 0, temperature: float = float(np.log(20.0))) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    prompts = {
        s: {k: rng.normal(size=(len(CT_RATE_LABELS), latent_dim)).astype(np.float32) for k in ("positive", "negative")}
        for s in PROMPT_TEMPLATES
    }
    return SimpleNamespace(
        encoder=TinyEncoder(latent_dim, seed).eval(),
        eval_transform=TinyEvalTransform(),
        prompts=prompts,
        temperature=temperature,
        label_names=list(CT_RATE_LABELS),
        config=None,
        provenance={"cache": {"checkpoint_sha256": "a" * 64}},
    )
