"""Radiographs -> latents with a loaded run's encoder (evaluation, few-shot, predict).

Every image goes through the run's ``eval_transform`` (the one intensity convention: a float32
(H, W) display image in [0, 1]) and the encoder in eval mode without gradients, in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch


def encode_images(
    encoder: torch.nn.Module,
    transform: Callable[[np.ndarray], torch.Tensor],
    images: Iterable[np.ndarray],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Latents (N, D) float32 of display images read lazily from ``images``; rows stay in order."""
    device = torch.device(device)
    encoder = encoder.to(device).eval()
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        with torch.no_grad():
            z = encoder(torch.stack(batch).to(device))
        out.append(z.float().cpu().numpy())
        batch.clear()

    for image in images:
        batch.append(transform(image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def encode_store_items(
    encoder: torch.nn.Module,
    transform: Callable[[np.ndarray], torch.Tensor],
    read_image: Callable[[int], np.ndarray],
    items: Sequence[int],
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "encoding",
) -> np.ndarray:
    """Latents of ``read_image(i)`` for each i in ``items`` (with a tqdm bar when asked)."""
    from tqdm import tqdm

    it = tqdm(items, desc=desc, unit="image", disable=not progress)
    return encode_images(encoder, transform, (read_image(i) for i in it), batch_size, device)
