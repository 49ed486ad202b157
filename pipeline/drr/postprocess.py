"""Line integrals -> a display image with the look of a clinical chest film.

1. Optional Poisson noise on the transmitted intensity: counts ~ Poisson(I0 exp(-L)), then
   L' = -log(max(counts, 0.5) / I0) (half a photon keeps fully absorbed pixels finite).
2. ``-log(I/I0)`` is the line integral itself: air is dark, bone bright, as on a film.
3. Window: the ``window_percentiles`` of the image map to 0 and 1 (clipped).
4. Gamma: x ** gamma.
5. Optional CLAHE (contrast-limited adaptive histogram equalisation, own implementation:
   per-tile clipped histograms, bilinear interpolation of the tile mappings).
6. uint16: round(x * 65535).

The mean-HU mode (the authors' image) is min-max scaled instead of 2-5.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from schemas.drr import UINT16_MAX, PostConfig


def noise_generator(seed: int, volume_id: str, view: str) -> torch.Generator:
    """A CPU generator seeded by (seed, volume id, view): noise does not depend on scheduling."""
    digest = hashlib.sha256(f"{seed}/{volume_id}/{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def poisson_noise(line_integral: torch.Tensor, photons: float, gen: torch.Generator) -> torch.Tensor:
    expected = (photons * torch.exp(-line_integral.float())).cpu()
    counts = torch.poisson(expected, generator=gen).clamp_(min=0.5)
    return (-torch.log(counts / photons)).to(line_integral.device)


def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    flat = x.reshape(-1)
    k = int(round(q / 100.0 * (flat.numel() - 1))) + 1
    return flat.kthvalue(min(max(k, 1), flat.numel())).values


def window(x: torch.Tensor, low_pct: float, high_pct: float) -> torch.Tensor:
    lo, hi = _percentile(x, low_pct), _percentile(x, high_pct)
    return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp_(0.0, 1.0)


def min_max(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp_(0.0, 1.0)


def clahe(x: torch.Tensor, clip_limit: float, tiles: int, bins: int = 256) -> torch.Tensor:
    """CLAHE of an image in [0, 1] (H, W); returns values in [0, 1]."""
    h, w = x.shape
    th, tw = -(-h // tiles), -(-w // tiles)
    padded = torch.nn.functional.pad(x[None, None], (0, tw * tiles - w, 0, th * tiles - h), mode="replicate")[0, 0]
    binned = (padded * (bins - 1)).round_().long().clamp_(0, bins - 1)
    # (tiles, tiles, th*tw) bin indices -> one histogram per tile via bincount on offset indices.
    per_tile = binned.view(tiles, th, tiles, tw).permute(0, 2, 1, 3).reshape(tiles * tiles, th * tw)
    offset = torch.arange(tiles * tiles, device=x.device)[:, None] * bins
    hist = (
        torch.bincount((per_tile + offset).reshape(-1), minlength=tiles * tiles * bins)
        .view(tiles * tiles, bins)
        .float()
    )
    limit = clip_limit * th * tw / bins
    excess = (hist - limit).clamp_(min=0).sum(dim=1, keepdim=True)
    hist = hist.clamp_(max=limit) + excess / bins
    cdf = hist.cumsum(dim=1)
    mapping = ((cdf - cdf[:, :1]) / (cdf[:, -1:] - cdf[:, :1]).clamp(min=1e-6)).view(tiles, tiles, bins)

    def neighbours(n_pix: int, tile: int, device):
        centre = (torch.arange(n_pix, device=device, dtype=torch.float32) + 0.5) / tile - 0.5
        lo = centre.floor().clamp(0, tiles - 1)
        frac = (centre - lo).clamp(0, 1)
        return lo.long(), (lo.long() + 1).clamp(max=tiles - 1), frac

    y0, y1, fy = neighbours(h, th, x.device)
    x0, x1, fx = neighbours(w, tw, x.device)
    b = binned[:h, :w]
    m = lambda ty, tx: mapping[ty[:, None], tx[None, :], b]  # noqa: E731 (gather of one tile mapping per pixel)
    top = m(y0, x0) * (1 - fx) + m(y0, x1) * fx
    bottom = m(y1, x0) * (1 - fx) + m(y1, x1) * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def display_image(line_integral: torch.Tensor, post: PostConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Physics mode: line integrals (H, W) -> display values in [0, 1]."""
    x = line_integral
    if post.noise_photons is not None:
        x = poisson_noise(x, post.noise_photons, gen if gen is not None else torch.Generator().manual_seed(post.seed))
    x = window(x, *post.window_percentiles)
    if post.gamma != 1.0:
        x = x.pow_(post.gamma)
    if post.clahe:
        x = clahe(x, post.clahe_clip, post.clahe_tiles)
    return x


def to_uint16(x: torch.Tensor) -> np.ndarray:
    """[0, 1] -> uint16 0..65535 (round to nearest)."""
    return (x.clamp(0.0, 1.0) * UINT16_MAX).round_().to(torch.int32).cpu().numpy().astype(np.uint16)
