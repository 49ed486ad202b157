"""One CT volume -> its DRRs (all configured views): the function the stage runs per item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.drr.geometry import axis_aligned, plan_projection, unflipped
from pipeline.drr.physics import voxel_transform
from pipeline.drr.postprocess import display_image, min_max, noise_generator, to_uint16
from pipeline.drr.projector import project
from schemas.drr import DRRRenderConfig


@dataclass
class Rendered:
    images: np.ndarray  # (V, H, W) uint16 display images
    line_integrals: np.ndarray  # (V, H, W) float32: mu line integrals, or mean HU in 'mean-hu' mode


def line_integrals(hu: torch.Tensor, affine: np.ndarray, cfg: DRRRenderConfig) -> list[torch.Tensor]:
    """Per view: the line integral image (physics) or the mean clipped HU image (mean-hu)."""
    hu, affine = axis_aligned(hu, affine)
    transform = voxel_transform(cfg)
    out = []
    for view in cfg.views:
        plan = plan_projection(hu.shape, affine, view, cfg.geometry)
        img = project(hu, plan, transform, slab=cfg.slab)
        if cfg.mode == "mean-hu":
            img = img / plan.beam_extent_mm + cfg.mean_hu_clip[0]
        out.append(img)
    return out


def render_volume(
    hu: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    cfg: DRRRenderConfig,
    device: torch.device | str = "cpu",
    volume_id: str = "",
    projections: list[torch.Tensor] | None = None,
) -> Rendered:
    """Render every view of ``cfg`` from HU (LPS voxel order, ``affine`` voxel -> RAS+ mm)."""
    if projections is None:
        if isinstance(hu, np.ndarray):
            hu, affine = unflipped(hu, affine)
        vol = torch.as_tensor(hu, dtype=torch.float32).to(device)
        projections = line_integrals(vol, affine, cfg)
    images = []
    for view, proj in zip(cfg.views, projections):
        if cfg.mode == "mean-hu":
            shown = min_max(proj)
        else:
            shown = display_image(proj, cfg.post, noise_generator(cfg.post.seed, volume_id, view))
        images.append(to_uint16(shown))
    raw = np.stack([p.float().cpu().numpy() for p in projections])
    return Rendered(images=np.stack(images), line_integrals=raw)
