"""The frozen cosine-similarity vector quantiser of CTViT (``vq._codebook.*`` in the state dict).

Each token is replaced by the stored codebook row whose *normalised* version has
the highest cosine similarity with it (the official vector-quantize-pytorch
1.1.2 ``CosineSimCodebook`` in eval mode). There is no update rule here at all,
so the codebook cannot change, whatever ``.train()`` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Tokens scored per matmul: bounds the (chunk x codebook_size) score matrix
# (2048 x 8192 fp32 = 64 MiB) instead of the official 13,824-row one (432 MiB).
CHUNK = 2048
# The bf16 search keeps every code whose bf16 score is within this of the best
# bf16 score, then rescores those in fp32. A bf16 cosine of unit vectors is off
# by at most 2^-7 (inputs rounded to 8 significant bits; Cauchy-Schwarz) plus
# 2^-8 (output rounding), so the true best code always survives a window of
# twice that sum.
BF16_WINDOW = 2 * (2.0**-7 + 2.0**-8)
MAX_CANDIDATES = 64


class _Codebook(nn.Module):
    embed: torch.Tensor  # a buffer (1, codebook_size, dim)

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(torch.rand(1, codebook_size, dim) * 2 - 1, dim=-1))


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self._codebook = _Codebook(dim, codebook_size)

    @property
    def codebook(self) -> torch.Tensor:
        """The stored rows (codebook_size, dim), as returned for each token."""
        return self._codebook.embed[0]

    def forward(self, tokens: torch.Tensor, fast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (..., dim) -> (codebook rows (..., dim) float32, indices (...) int64).

        ``fast_bf16`` finds candidates with a bf16 matmul and picks among them in
        fp32 (exact up to fp32 rounding, see BF16_WINDOW); the default scores all
        codes in fp32 like the official code.
        """
        shape = tokens.shape
        flat = tokens.reshape(-1, shape[-1])
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            codes = F.normalize(self.codebook.float(), dim=-1)
            search = self._search_bf16 if fast_bf16 else self._search_fp32
            indices = torch.cat([search(F.normalize(chunk.float(), dim=-1), codes) for chunk in flat.split(CHUNK)])
        rows = self.codebook.float()[indices]
        return rows.reshape(shape), indices.reshape(shape[:-1])

    @staticmethod
    def _search_fp32(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (x @ codes.T).argmax(dim=-1)

    @staticmethod
    def _search_bf16(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        approx = x.bfloat16() @ codes.bfloat16().T
        # Every (token, code) pair within the window of its token's best bf16 score is a
        # candidate; the true fp32 best is always among them (see BF16_WINDOW).
        near = approx >= approx.max(dim=-1, keepdim=True).values - BF16_WINDOW
        del approx
        # Tokens with many near-best codes (a zero token ties with every code) are scored in full.
        crowded = near.sum(dim=-1) > MAX_CANDIDATES
        near[crowded] = False
        tok, code = torch.nonzero(near, as_tuple=True)
        exact = (x[tok] * codes[code]).sum(dim=-1)
        best = torch.full((x.shape[0],), float("-inf"), device=x.device).scatter_reduce(0, tok, exact, "amax")
        winners = exact == best[tok]
        # Lowest code index among exact ties, as argmax would pick.
        index = torch.full((x.shape[0],), codes.shape[0], device=x.device, dtype=torch.long)
        index = index.scatter_reduce(0, tok[winners], code[winners], "amin")
        if crowded.any():
            index[crowded] = (x[crowded] @ codes.T).argmax(dim=-1)
        return index
