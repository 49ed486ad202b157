"""The tri-modal loss ``a*L(C,R) + b*L(X,R) + c*L(X,C)`` (X radiograph, C CT, R report).

Each ``L(A,B)`` is the symmetric InfoNCE of CLIP: logits ``s * A @ B.T`` with the matching
row on the diagonal, the mean of the cross-entropies over rows (A->B) and over columns
(B->A). open_clip's ``ClipLoss`` computes exactly this; under torchrun it first gathers
both sides from every rank *with gradients* (``gather_with_grad=True``, ``local_loss=False``),
so every rank evaluates the same loss over the global batch and DDP's gradient averaging
then yields the gradient of that global loss.

C and R are cached latents of the frozen CT-CLIP: ``L(C,R)`` depends on no trainable
parameter, so it is computed for logging only (under ``no_grad``) whatever ``a`` is. A term
whose weight is 0 is likewise logged but contributes no gradient.

The logit scale ``s = exp(t)``: frozen at the CT-CLIP temperature ``t`` stored in the cache
(as the paper does), or learnable from that start (clamped at 100, as CLIP does).
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss
from torch import nn

MAX_LOGIT_SCALE = 100.0


class LogitScale(nn.Module):
    """Holds the log of the logit scale; ``forward()`` returns the scale."""

    def __init__(self, temperature: float, learnable: bool):
        super().__init__()
        t = torch.tensor(float(temperature), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(t)
        else:
            self.register_buffer("log_scale", t)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()


class TriModalLoss(nn.Module):
    def __init__(self, a: float, b: float, c: float, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.a, self.b, self.c = a, b, c
        self.clip = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)

    def forward(
        self, x: torch.Tensor, ct: torch.Tensor, report: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x, ct, report: this rank's (B, D) L2-normalised latents. Returns the weighted total
        (with gradient) and the three terms (detached) for logging."""
        x, ct, report = x.float(), ct.float(), report.float()
        with torch.no_grad():
            l_cr = self.clip(ct, report, scale)  # cached targets: never any gradient
        l_xr = self._term(x, report, scale, self.b)
        l_xc = self._term(x, ct, scale, self.c)
        total = self.b * l_xr + self.c * l_xc
        if self.b == 0 and self.c == 0:  # pragma: no cover - refused by the config
            raise ValueError("loss weights b and c are both 0")
        total = total + self.a * l_cr  # a constant: shifts the logged value, never the gradient
        return total, {"loss_cr": l_cr.detach(), "loss_xr": l_xr.detach(), "loss_xc": l_xc.detach()}

    def _term(self, x: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, weight: float) -> torch.Tensor:
        if weight == 0:
            with torch.no_grad():
                return self.clip(x, target, scale)
        return self.clip(x, target, scale)
