"""Radiograph -> encoder input. One intensity convention everywhere: a float32 (H, W) array of
display intensities in [0, 1], bright = dense (a DRR store's uint16 / 65535).

Training (the X2CT-CLIP augmentation): torchvision ``RandomResizedCrop`` to the encoder's
size at area scale ``crop_scale`` (0.8-1.1; torchvision redraws crops that do not fit the
image, so the upper end mostly yields the whole image), CLAHE with probability ``clahe_p``
(neither torchvision nor MONAI has CLAHE: the project's own, tested
``pipeline.drr.postprocess.clahe``; clip limit in OpenCV's units), torchvision brightness and
contrast jitter, clamp to [0, 1]. Evaluation: ``Resize`` + ``CenterCrop``, deterministic.
Both end by repeating the gray channel three times and normalising with the encoder config's
mean and std.

Randomness comes from torch's global generator; the dataset seeds it per sample (see
``trainer.data``), so augmentation does not depend on worker scheduling and resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from pipeline.drr.postprocess import clahe
from schemas.train import AugmentConfig
from trainer.encoder import EncoderSpec


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"a radiograph must be a 2-D (H, W) array, got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image))[None]


class EvalTransform:
    """Deterministic: resize the short side to S, centre crop S x S, gray -> 3 channels, normalise."""

    def __init__(self, spec: EncoderSpec):
        self.size = spec.image_size
        self.geometry = v2.Compose([v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)])
        self.normalize = v2.Normalize(mean=list(spec.mean), std=list(spec.std))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = self.geometry(_to_tensor(image)).clamp_(0.0, 1.0)
        return self.normalize(x.expand(3, -1, -1))


class TrainTransform:
    """Random resized crop, CLAHE (probability p), brightness/contrast jitter, normalise."""

    def __init__(self, spec: EncoderSpec, cfg: AugmentConfig):
        self.cfg = cfg
        self.crop = v2.RandomResizedCrop(spec.image_size, scale=tuple(cfg.crop_scale), antialias=True)
        self.jitter = v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None)
        self.normalize = v2.Normalize(mean=list(spec.mean), std=list(spec.std))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = self.crop(_to_tensor(image)).clamp_(0.0, 1.0)
        if self.cfg.clahe_p > 0 and float(torch.rand(())) < self.cfg.clahe_p:
            x = clahe(x[0], self.cfg.clahe_clip, self.cfg.clahe_tiles)[None]
        x = self.jitter(x).clamp_(0.0, 1.0)
        return self.normalize(x.expand(3, -1, -1))
