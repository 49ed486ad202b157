"""The two kinds of task of embed-ct: decode a volume (CPU worker) and embed a batch (model worker).

Both are plain functions of picklable arguments, so they run the same in a Dask
worker and in a thread of the calling process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ItemFailed(Exception):
    """A volume could not be decoded or preprocessed; the message is the reason recorded in the cache."""


@dataclass
class DecodedVolume:
    volume_id: str
    array: np.ndarray  # (C, D, H, W) float32, the model's input
    load_s: float  # reading and decoding the file into HU
    preprocess_s: float  # resampling, clipping, crop/pad


@dataclass
class BatchResult:
    ct: dict[str, np.ndarray]  # volume id -> (512,) latent
    errors: dict[str, str]  # volume id -> reason, for volumes whose forward pass failed
    texts: dict[str, np.ndarray]  # text -> (512,) latent
    ct_s: float
    text_s: float
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (load_s, preprocess_s)
    text_errors: dict[str, str] = field(default_factory=dict)  # text -> reason its latent is missing


NON_FINITE = "CT-CLIP gave a non-finite (NaN or infinite) {what} latent; the row is not stored"


def drop_non_finite(
    ct: dict[str, np.ndarray], errors: dict[str, str], texts: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """A NaN latent must never be committed as a result: such volumes become errors (in ``errors``),
    such texts move to the returned text errors (the rows that need them then fail)."""
    for vid in [v for v, z in ct.items() if not np.isfinite(z).all()]:
        del ct[vid]
        errors[vid] = NON_FINITE.format(what="CT")
    bad_texts = {t: NON_FINITE.format(what="report") for t, z in texts.items() if not np.isfinite(z).all()}
    return ct, {t: z for t, z in texts.items() if t not in bad_texts}, bad_texts


def decode_volume(
    volume_id: str, ct_path: str, load_kwargs: dict[str, Any], ct_cfg: dict[str, Any], model: str
) -> DecodedVolume:
    """Read one CT and make it the model's input; any failure becomes :class:`ItemFailed` with a reason."""
    from pipeline.ct_io import CTLoadError, load_ct
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.preprocess import preprocess_ct
    from schemas.ct import CTLoadConfig

    t0 = time.perf_counter()
    try:
        volume = load_ct(ct_path, CTLoadConfig.model_validate(ct_cfg), **load_kwargs)
    except CTLoadError as e:
        raise ItemFailed(str(e)) from None
    except Exception as e:  # anything else a broken file can raise; one bad volume must not stop the run
        raise ItemFailed(f"{ct_path}: unreadable ({type(e).__name__}: {e})") from None
    t1 = time.perf_counter()
    try:
        x = preprocess_ct(volume, get_config(model), csv_spacing=load_kwargs.get("spacing"))
        array = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    except Exception as e:
        raise ItemFailed(f"{ct_path}: preprocessing failed ({type(e).__name__}: {e})") from None
    return DecodedVolume(volume_id, array, t1 - t0, time.perf_counter() - t1)


def embed_batch(spec, volumes: list[DecodedVolume], texts: list[str]) -> BatchResult:
    """CT latents of ``volumes`` (one forward pass; one at a time if the batch fails) and text latents of ``texts``."""
    from pipeline.embed.model import get_model

    model = get_model(spec)
    t0 = time.perf_counter()
    ct, errors = {}, {}
    try:
        z = model.encode_volumes([v.array for v in volumes])
        ct = {v.volume_id: z[i] for i, v in enumerate(volumes)}
    except Exception:
        for v in volumes:  # find the volume that broke the batch; keep the others
            try:
                ct[v.volume_id] = model.encode_volumes([v.array])[0]
            except Exception as e:
                errors[v.volume_id] = (
                    f"CT-CLIP forward pass failed ({type(e).__name__}: {e}); input shape {v.array.shape}"
                )
    t1 = time.perf_counter()
    text_latents = model.encode_texts(texts) if texts else np.zeros((0, 512), np.float32)
    ct, text_map, text_errors = drop_non_finite(ct, errors, dict(zip(texts, text_latents)))
    return BatchResult(
        ct=ct,
        errors=errors,
        texts=text_map,
        text_errors=text_errors,
        ct_s=t1 - t0,
        text_s=time.perf_counter() - t1,
        timings={v.volume_id: (v.load_s, v.preprocess_s) for v in volumes},
    )


def load_kwargs_of(row, manifest_dir) -> tuple[str, dict[str, Any]]:
    """The CT path and the :func:`load_ct` keyword arguments of a manifest row."""
    path = str(row.resolved_ct_path(manifest_dir))
    kwargs = {"spacing": row.spacing, "orientation": row.orientation, "slope": row.slope, "intercept": row.intercept}
    return path, kwargs


def labels_u8(labels: list[int | None]) -> np.ndarray:
    from schemas.embed import LABEL_MISSING

    return np.array([LABEL_MISSING if v is None else v for v in labels], dtype=np.uint8)
