"""The frozen CT-CLIP as embed-ct uses it: loaded once per worker process, numpy in and out.

A Dask worker keeps the loaded model in :data:`_LOADED`, keyed by everything that
goes into loading it (:class:`ModelSpec`), so a worker loads it on its first task
and reuses it for every later one; a second spec (another checkpoint) gets its
own entry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from schemas.embed import PROMPT_TEMPLATES


@dataclass(frozen=True)
class ModelSpec:
    checkpoint: str
    tokenizer: str
    model: str  # config name ('official', 'tiny') or JSON path
    device: str  # 'auto', 'cpu' or 'cuda', resolved on the worker (a GPU worker sees only its own GPU)
    precision: str  # 'fp32' or 'bf16'
    threads: int | None = None  # torch intra-op threads on CPU


class LoadedModel:
    def __init__(self, spec: ModelSpec):
        import torch

        from pipeline.ctclip.checkpoint import load_ctclip
        from pipeline.ctclip.text import load_tokenizer
        from pipeline.embed.errors import EmbedError

        cuda = torch.cuda.is_available()
        if spec.device == "cuda" and not cuda:
            raise EmbedError("--device cuda but this model worker sees no CUDA GPU; use --device cpu or auto")
        self.device = torch.device("cuda" if cuda and spec.device != "cpu" else "cpu")
        if self.device.type == "cpu" and spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.model = load_ctclip(spec.checkpoint, cfg=spec.model, map_location=self.device).eval()
        # A one-part checkpoint loads for encode-only use, but a cache needs CT and report latents and the
        # temperature: refuse it here, before any volume is read, not once per volume.
        absent = sorted({"visual", "text"} - set(self.model.loaded_parts or ()))
        if absent:
            raise EmbedError(
                f"{spec.checkpoint}: has no {' or '.join(absent)} part (it holds "
                f"{sorted(self.model.loaded_parts)}); embed-ct needs a full CT-CLIP checkpoint"
            )
        self.tokenizer = load_tokenizer(spec.tokenizer, vocab_size=self.model.cfg.text.vocab_size)

    def encode_volumes(self, volumes: list[np.ndarray]) -> np.ndarray:
        """(C, D, H, W) float32 arrays from ``preprocess_ct`` -> (B, 512) float32 latents."""
        import torch

        x = torch.from_numpy(np.stack(volumes)).to(self.device, non_blocking=True)
        z = self.model.encode_ct(x, precision=self.spec.precision)
        return z.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts (already cleaned where they are reports) -> (B, 512) float32 latents."""
        from pipeline.ctclip.text import encode_texts

        z = encode_texts(self.model, self.tokenizer, texts)
        return z.float().cpu().numpy()

    @property
    def temperature(self) -> float:
        return float(self.model.temperature.detach().float().cpu())


_LOADED: dict[ModelSpec, LoadedModel] = {}
_LOCK = threading.Lock()


def get_model(spec: ModelSpec) -> LoadedModel:
    """The model for ``spec``, loaded on first use in this process."""
    with _LOCK:
        if spec not in _LOADED:
            _LOADED[spec] = LoadedModel(spec)
        return _LOADED[spec]


def prompt_latents(spec: ModelSpec) -> tuple[float, dict[str, dict[str, np.ndarray]]]:
    """The checkpoint's temperature and the prompt embeddings of every template set.

    The first task of a run: it loads (and so validates) the checkpoint before any volume is read.
    """
    from pipeline.embed.cache import prompt_texts
    from pipeline.embed.errors import EmbedError

    model = get_model(spec)
    prompts = {s: {k: model.encode_texts(v) for k, v in prompt_texts(s).items()} for s in PROMPT_TEMPLATES}
    if not np.isfinite(model.temperature) or not all(
        np.isfinite(z).all() for p in prompts.values() for z in p.values()
    ):
        raise EmbedError(
            f"{spec.checkpoint}: the temperature or the prompt embeddings are not finite (NaN or infinite); "
            "the checkpoint is unusable: compare its sha256 with the download"
        )
    return model.temperature, prompts
