"""Transformer parts of the CTViT image encoder, with the official module names.

State-dict names must equal the official ones (``layers.N.0`` = position
generator, ``layers.N.1`` = attention, ``layers.N.3`` = feed-forward; index 2
was an unused cross-attention slot), so some submodules are registered under
digit names and reached through properties. The arithmetic follows the
official ``transformer_maskgit/attention.py`` (the quirks reproduced are listed in
docs/ctclip-compatibility.md);
comments mark where we compute the same thing a cheaper way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias (a persistent buffer named ``beta``)."""

    beta: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


def _named(parent: nn.Module, children: dict[str, nn.Module]) -> None:
    for name, module in children.items():
        parent.add_module(name, module)


class FeedForward(nn.Module):
    """LayerNorm -> Linear(dim, 2*inner) -> GEGLU -> Linear(inner, dim); names ``0``, ``1``, ``4``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(mult * (2 / 3) * dim)  # 1365 at dim 512, as in the official code
        _named(
            self,
            {
                "0": nn.LayerNorm(dim),
                "1": nn.Linear(dim, inner * 2, bias=False),
                "4": nn.Linear(inner, dim, bias=False),
            },
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, "1")(getattr(self, "0")(x))
        value, gate = h.chunk(2, dim=-1)
        if h.requires_grad:
            return getattr(self, "4")(F.gelu(gate) * value)
        # Without autograd, GEGLU runs in place in the hidden buffer: two fewer (tokens x 1365) tensors.
        return getattr(self, "4")(value.mul_(torch.ops.aten.gelu_(gate)))


class PEG(nn.Module):
    """Position generator: depthwise 3x3x3 conv over the token grid, causal along its first axis.

    ``shape`` is the (b, A, B, C) grid the flat tokens are *reshaped* to. The
    official temporal transformer passes (b, t, h, w) for tokens laid out as
    (b*h*w, t): the plain reshape scrambles axes, and we reproduce it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        d = x.shape[-1]
        grid = x.reshape(*shape, d).permute(0, 4, 1, 2, 3)  # (b, d, A, B, C), channels-last in memory
        grid = F.pad(grid, (1, 1, 1, 1, 2, 0))  # zero padding, 2 before / 0 after on A (causal)
        out = self.dsconv(grid)
        return out.permute(0, 2, 3, 4, 1).reshape(x.shape)


class Attention(nn.Module):
    """Cosine-sim attention: q from the normed input, k and v from the raw input (official quirk).

    q and k are L2-normalised per head, multiplied by learned per-dim scales and
    by a fixed scale of 8. ``null_kv`` holds zero null keys (shape (heads, 0,
    dim_head)) and ``context_norm`` is unused; both exist for the state dict.
    """

    def __init__(self, dim: int, dim_head: int, heads: int, scale: float = 8.0):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, scale
        inner = heads * dim_head
        self.norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.empty(heads, 0, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q = self._heads(self.to_q(self.norm(x)))
        k, v = (self._heads(t) for t in self.to_kv(x).chunk(2, dim=-1))
        # Under bf16 autocast only the projections are bf16: the attention core runs in fp32,
        # which halves the bf16 path's token error for a small share of its time.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            # The fixed scale is folded into q's learned scale: the same product, one multiply fewer.
            q = F.normalize(q, dim=-1) * (self.q_scale * self.scale)
            k = F.normalize(k, dim=-1) * self.k_scale
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        n, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, length, self.heads * self.dim_head).to(x.dtype))


class Block(nn.Module):
    """One transformer layer: ``0`` PEG, ``1`` attention, ``3`` feed-forward, each residual."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        _named(self, {"0": PEG(dim), "1": Attention(dim, dim_head, heads), "3": FeedForward(dim)})

    def forward(self, x, shape, attn_bias=None):
        x = getattr(self, "0")(x, shape) + x
        x = getattr(self, "1")(x, attn_bias) + x
        return getattr(self, "3")(x) + x


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList([Block(dim, dim_head, heads) for _ in range(depth)])
        self.norm_out = LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, shape: tuple[int, int, int, int], attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.layers:
            x = block(x, shape, attn_bias)
        return self.norm_out(x)


class ContinuousPositionBias(nn.Module):
    """Per-head attention bias from the 2-D offset between tokens of one slab (MLP 2 -> dim -> dim -> heads).

    Offsets are transformed as sign(x) * log(1 + |x|). The official code runs the
    MLP on all (h*w)^2 token pairs on every forward; there are only
    (2h-1)(2w-1) distinct offsets, so we run it on those and gather, and keep
    the result until a weight changes (``_version`` counters of the parameters).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.net = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)),
                nn.Linear(dim, heads),
            ]
        )
        self._cache: tuple = (None, None)

    def _key(self, h: int, w: int, device: torch.device) -> tuple:
        params = tuple((p.data_ptr(), p._version) for p in self.parameters())
        return (h, w, str(device), params)

    def forward(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Bias of shape (1, heads, h*w, h*w), float32 (4-D: SDPA's CPU flash kernel takes only 4-D masks)."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        key = self._key(h, w, device)
        if not grad and self._cache[0] == key:
            return self._cache[1]
        bias = self._compute(h, w, device)
        if not grad:
            self._cache = (key, bias)
        return bias

    def _compute(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        di = torch.arange(-(h - 1), h, device=device)
        dj = torch.arange(-(w - 1), w, device=device)
        offsets = torch.stack(torch.meshgrid(di, dj, indexing="ij"), dim=-1).float()
        x = torch.sign(offsets) * torch.log(offsets.abs() + 1)
        with torch.autocast(device_type=device.type, enabled=False):
            for layer in self.net:
                x = layer(x)  # (2h-1, 2w-1, heads)
        pos = torch.arange(h * w, device=device)
        pi, pj = pos // w, pos % w  # token n sits at row n // w, column n % w ('ij' order)
        table = x.permute(2, 0, 1)  # (heads, 2h-1, 2w-1)
        bias = table[:, (pi[:, None] - pi[None, :]) + h - 1, (pj[:, None] - pj[None, :]) + w - 1]
        return bias.unsqueeze(0).contiguous()
