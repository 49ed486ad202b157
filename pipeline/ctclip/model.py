"""CT-CLIP (v2): CTViT image encoder + BERT report encoder, projected to a shared 512-d latent space.

State-dict names equal those of the official ``CTCLIP`` module (GitHub
ibrahimethemhamamci/CT-CLIP, ``ct_clip.py``; docs/ctclip-compatibility.md), so
``CT-CLIP_v2.pt`` loads strictly (see :mod:`pipeline.ctclip.checkpoint`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.ctclip.ctvit import CTViT, VisualOutput
from schemas.ctclip import CTCLIPConfig, Precision


def build_text_encoder(cfg: CTCLIPConfig) -> nn.Module:
    """A transformers BertModel built from the config (no hub access)."""
    from transformers import BertConfig, BertModel

    t = cfg.text
    config = BertConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        type_vocab_size=t.type_vocab_size,
        layer_norm_eps=t.layer_norm_eps,
        hidden_act="gelu",
        pad_token_id=0,
    )
    # The official model holds a BertModel with its (unused) pooler; its weights are in the checkpoint.
    return BertModel(config, add_pooling_layer=True)


class CTCLIP(nn.Module):
    def __init__(self, cfg: CTCLIPConfig | str = "official"):
        super().__init__()
        if not isinstance(cfg, CTCLIPConfig):
            from pipeline.ctclip.config import get_config

            cfg = get_config(cfg)
        self.cfg = cfg
        self.precision: Precision = cfg.precision
        self.text_transformer = build_text_encoder(cfg)
        self.visual_transformer = CTViT(cfg.visual)
        self.to_text_latent = nn.Linear(cfg.text.hidden_size, cfg.dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(cfg.visual.pooled_dim, cfg.dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        # Unused CLOOB projections of the official model (extra_latent_projection=False); in the checkpoint.
        self.to_text_latent_extra = nn.Linear(cfg.text.hidden_size, cfg.dim_latent, bias=False)
        self.to_visual_latent_extra = nn.Linear(cfg.visual.pooled_dim, cfg.dim_latent, bias=False)
        # Which parts hold checkpoint weights (set by load_ctclip); None: built here, all parts usable.
        self.loaded_parts: frozenset | None = None
        self.eval()

    def _require(self, part: str) -> None:
        if self.loaded_parts is not None and part not in self.loaded_parts:
            raise RuntimeError(
                f"this CT-CLIP was loaded from a checkpoint without the {part} part "
                f"(it holds {sorted(self.loaded_parts)}); load a checkpoint that has it"
            )

    def _no_autograd(self):
        """inference_mode for the frozen teacher; plain autograd only when someone trains it."""
        training = self.training and torch.is_grad_enabled()
        return contextlib.nullcontext() if training else torch.inference_mode()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.temperature.exp()

    def visual_features(self, volume: torch.Tensor, precision: Precision | None = None) -> VisualOutput:
        """Encoder internals (tokens before quantisation, codebook indices, quantised tokens)."""
        precision = precision or self.precision
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        return self.visual_transformer(volume, bf16=precision == "bf16")

    def latent_from_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        """(b, t, h, w, dim) quantised tokens -> L2-normalised (b, dim_latent): mean over depth, flatten (h, w, dim)."""
        pooled = quantized.mean(dim=1).reshape(quantized.shape[0], -1)
        w = self.to_visual_latent.weight
        return F.normalize(F.linear(pooled.to(w.dtype), w).float(), dim=-1)

    def encode_ct(self, volume: torch.Tensor, precision: Precision | None = None) -> torch.Tensor:
        """volume (B, C, D, H, W) as made by ``preprocess_ct`` -> L2-normalised latents (B, dim_latent).

        ``precision`` overrides the config's: 'fp32' (matches the official code) or
        'bf16' (autocast; the quantiser and the projection stay fp32).
        """
        self._require("visual")
        with self._no_autograd():
            latent = self.latent_from_quantized(self.visual_features(volume, precision).quantized)
        return latent.clone()  # a normal tensor: inference tensors cannot enter a later autograd graph

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (B, L) from :func:`pipeline.ctclip.text.tokenize` -> L2-normalised (B, dim_latent).

        The CLS token of BERT's last hidden state (not the pooler), no token_type_ids, as the official code.
        """
        self._require("text")
        with self._no_autograd():
            hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            latent = F.normalize(self.to_text_latent(hidden[:, 0, :]), dim=-1)
        return latent.clone()

    def forward(self, volume: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Similarity logits (B_ct, B_text) = temperature.exp() * image latents @ text latents^T."""
        return self.logit_scale * self.encode_ct(volume) @ self.encode_text(input_ids, attention_mask).T
