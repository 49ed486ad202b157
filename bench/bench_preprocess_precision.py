"""CT-CLIP preprocessing: float32 against float64 trilinear resampling, as ``preprocess_array`` does it.

The official inference loader interpolates in float64, ours in float32. Sharp edges (random blocks of
-1000, -850, 40 and 1000 HU plus noise, clipped to [-1000, 1000]: every voxel boundary an edge) at three
CT-RATE-like spacings; the difference is reported after the division by 1000, as the model sees it.

    python bench/bench_preprocess_precision.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.ctclip.preprocess import resampled_shape

CASES = [((160, 160, 120), (0.7, 0.7, 1.25)), ((128, 128, 96), (0.92, 0.92, 2.0)), ((150, 150, 200), (0.6, 0.6, 0.6))]


def main() -> None:
    rng = np.random.default_rng(0)
    for shape, spacing in CASES:
        hu = rng.choice([-1000.0, -850.0, 40.0, 1000.0], size=shape) + rng.normal(0, 30, shape)
        hu = np.clip(hu, -1000, 1000)
        size = resampled_shape(shape, spacing, (0.75, 0.75, 1.5))
        out = {}
        for dtype in (torch.float32, torch.float64):
            x = torch.from_numpy(hu).to(dtype).permute(2, 0, 1)[None, None]
            y = F.interpolate(x, size=(size[2], size[0], size[1]), mode="trilinear", align_corners=False)
            out[dtype] = y[0, 0] / 1000
        d = (out[torch.float32].double() - out[torch.float64]).abs()
        print(
            f"{shape} at {spacing} mm -> {size}: max |f32 - f64| = {float(d.max()):.2e} "
            f"({1000 * float(d.max()):.3f} HU), mean {float(d.mean()):.1e}"
        )


if __name__ == "__main__":
    main()
