"""CTViT, the CT-CLIP image encoder: patches -> spatial transformer -> temporal transformer -> quantiser.

Only the encoder path of the official VQ-VAE is computed. The decoder heads
``to_pixels*`` and the first-frame patch embedding are never used but are in
the checkpoint, so they are kept (small) for strict loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.ctclip.attention import ContinuousPositionBias, Transformer
from pipeline.ctclip.quantizer import VectorQuantizer
from schemas.ctclip import CTCLIPVisualConfig


class PatchEmbedding(nn.Module):
    """Cut (b, c, D, H, W) into (pt, p1, p2) patches, features ordered (c, pt, p1, p2);
    LayerNorm -> Linear -> LayerNorm under the official names ``1``, ``2``, ``3``
    (``norm=False``: no first LayerNorm, so a patch's mean density reaches the projection)."""

    def __init__(self, channels: int, pt: int, p: int, dim: int, norm: bool = True):
        super().__init__()
        self.pt, self.p = pt, p
        features = channels * pt * p * p
        self.add_module("1", nn.LayerNorm(features) if norm else nn.Identity())
        self.add_module("2", nn.Linear(features, dim))
        self.add_module("3", nn.LayerNorm(dim))

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        for name in ("1", "2", "3"):
            patches = getattr(self, name)(patches)
        return patches

    def forward(self, video: torch.Tensor, slabs_per_step: int = 4) -> torch.Tensor:
        """(b, c, D, H, W) -> (b, t, h, w, dim), a few depth slabs at a time: the patch matrix of
        the whole volume (13,824 x 4,000 floats) is never held at once, yet each matmul stays large."""
        b, c, depth, height, width = video.shape
        pt, p = self.pt, self.p
        t, h, w = depth // pt, height // p, width // p
        out = []
        for i in range(0, t, slabs_per_step):
            n = min(slabs_per_step, t - i)
            part = video[:, :, i * pt : (i + n) * pt].reshape(b, c, n, pt, h, p, w, p)
            part = part.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, n, h, w, c * pt * p * p)
            out.append(self.embed_patches(part))
        return torch.cat(out, dim=1)


@dataclass
class VisualOutput:
    """What the encoder computed, for checks against the official code."""

    tokens: torch.Tensor  # (b, t, h, w, dim) before quantisation, float32
    indices: torch.Tensor | None  # (b, t, h, w) chosen codebook rows; None without the quantiser
    quantized: torch.Tensor  # (b, t, h, w, dim) the stored rows (the tokens themselves without the quantiser)


class CTViT(nn.Module):
    def __init__(self, cfg: CTCLIPVisualConfig):
        super().__init__()
        self.cfg = cfg
        p, pt, c, dim = cfg.patch_size, cfg.temporal_patch_size, cfg.channels, cfg.dim
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=cfg.heads)
        # Unused (first-frame path of the official VQ-VAE); kept for the state dict.
        self.to_patch_emb_first_frame = PatchEmbedding(c, 1, p, dim, cfg.patch_norm)
        self.to_patch_emb = PatchEmbedding(c, pt, p, dim, cfg.patch_norm)
        self.enc_spatial_transformer = Transformer(dim, cfg.spatial_depth, cfg.dim_head, cfg.heads)
        self.enc_temporal_transformer = Transformer(dim, cfg.temporal_depth, cfg.dim_head, cfg.heads)
        self.vq = VectorQuantizer(dim, cfg.codebook_size) if cfg.quantize else None
        # Unused decoder heads; kept for the state dict.
        self.to_pixels_first_frame = nn.Sequential()
        self.to_pixels_first_frame.add_module("0", nn.Linear(dim, c * p * p))
        self.to_pixels = nn.Sequential()
        self.to_pixels.add_module("0", nn.Linear(dim, c * pt * p * p))

    def check_input(self, video: torch.Tensor) -> None:
        cfg = self.cfg
        expected = (cfg.channels, cfg.num_slices, cfg.image_size, cfg.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"CT-CLIP ({cfg.image_size}x{cfg.image_size}x{cfg.num_slices} config) expects a volume tensor of "
                f"shape (B, {', '.join(map(str, expected))}) = (batch, channel, depth, height, width), got "
                f"{tuple(video.shape)}; run pipeline.ctclip.preprocess.preprocess_ct first"
            )

    def encode_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(b, c, D, H, W) -> tokens (b, t, h, w, dim) before quantisation."""
        tokens = self.to_patch_emb(video)
        b, t, h, w, d = tokens.shape
        shape = (b, t, h, w)
        bias = self.spatial_rel_pos_bias(h, w, device=tokens.device)
        x = self.enc_spatial_transformer(tokens.reshape(b * t, h * w, d), shape, attn_bias=bias)
        # Temporal attention runs over the depth axis of each (h, w) column. The
        # PEG inside reshapes these (b*h*w, t) tokens as if they were (b, t, h, w):
        # that is the official behaviour and the checkpoint was trained with it.
        x = x.reshape(b, t, h * w, d).transpose(1, 2).reshape(b * h * w, t, d)
        x = self.enc_temporal_transformer(x, shape)
        return x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def forward(self, video: torch.Tensor, bf16: bool = False) -> VisualOutput:
        self.check_input(video)
        if bf16:
            with torch.autocast(device_type=video.device.type, dtype=torch.bfloat16):
                tokens = self.encode_tokens(video)
        else:
            tokens = self.encode_tokens(video)
        tokens = tokens.float()
        if self.vq is None:  # a config without the quantiser: the tokens themselves are pooled
            return VisualOutput(tokens=tokens, indices=None, quantized=tokens)
        quantized, indices = self.vq(tokens, fast_bf16=bf16)
        return VisualOutput(tokens=tokens, indices=indices, quantized=quantized)
