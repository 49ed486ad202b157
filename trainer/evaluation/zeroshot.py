"""Zero-shot classification from latents and a positive/negative prompt pair per label.

For a latent x and label l with prompt latents t+ ("There is {p}.") and t- ("There is no
{p}."), CLIP-style zero-shot scores the two prompts with scaled cosine similarities and takes
the softmax over the pair: P(positive) = softmax([s * cos(x, t+), s * cos(x, t-)])[0], with
s = exp(temperature), CT-CLIP's learned logit scale (the X2CT-CLIP paper, arXiv 2503.02162,
and CT-CLIP's own zero-shot protocol). A softmax over two logits is the logistic function of
their difference, which is how it is computed here (no overflow for large scales).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def zero_shot_probabilities(
    latents: np.ndarray, positive: np.ndarray, negative: np.ndarray, logit_scale: float
) -> np.ndarray:
    """P(positive prompt) for every item and label.

    ``latents`` (N, D); ``positive`` and ``negative`` (L, D) prompt latents; ``logit_scale``
    = exp(temperature). Returns (N, L) float64 in [0, 1]. Inputs need not be normalised:
    similarities are cosines.
    """
    x = l2_normalise(latents)
    pos, neg = l2_normalise(positive), l2_normalise(negative)
    if x.ndim != 2 or pos.shape != neg.shape or pos.shape[1] != x.shape[1]:
        raise ValueError(
            f"latents {x.shape} and prompts {pos.shape}/{neg.shape} do not match: both need the same latent width"
        )
    return expit(float(logit_scale) * (x @ pos.T - x @ neg.T))
