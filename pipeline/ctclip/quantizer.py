"""The cosine-similarity vector quantiser of CTViT (``vq._codebook.*`` in the state dict).

Each token is replaced by the stored codebook row whose *normalised* version has
the highest cosine similarity with it (the official vector-quantize-pytorch
1.1.2 ``CosineSimCodebook`` in eval mode). By default there is no update rule at
all, so the codebook of a frozen teacher cannot change, whatever ``.train()`` says.

Learning is opt-in (:meth:`VectorQuantizer.start_learning`), for pretraining a
CT-CLIP of our own; it then applies only in train mode with autograd on:

* straight-through gradients: the output's value is the chosen row, its gradient
  goes unchanged to the token (the argmax itself has none);
* the codebook follows the tokens by exponential moving averages: each row moves
  towards the mean direction of the (unit) tokens assigned to it in the batch,
  ``row <- normalise(decay * row + (1 - decay) * mean)``, and the code's usage
  count is averaged the same way;
* a commitment loss, the mean squared distance between each unit token and its
  (detached) row, which keeps tokens close to the codes they pick;
* dead-code restarts: a code whose averaged usage falls below a threshold is
  moved onto a random token of the batch, so no code stays unused for long.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class QuantizerLearning:
    """How the codebook learns (see the module docstring)."""

    decay: float = 0.8  # EMA decay of rows and usage counts (vector-quantize-pytorch's default)
    commitment_weight: float = 0.25  # scale of the commitment loss added to the training loss
    dead_code_threshold: float = 0.05  # restart codes whose averaged usage (tokens per step) falls below this

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ValueError("commitment_weight and dead_code_threshold must be >= 0")


class _Codebook(nn.Module):
    embed: torch.Tensor  # a buffer (1, codebook_size, dim)
    cluster_size: torch.Tensor  # a buffer (1, codebook_size): EMA of the tokens each code received per step

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(torch.rand(1, codebook_size, dim) * 2 - 1, dim=-1))


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self._codebook = _Codebook(dim, codebook_size)
        self.learning: QuantizerLearning | None = None  # None: frozen (the teacher); see start_learning
        # The commitment loss of the last learning forward (0 when frozen); the trainer adds it to its loss.
        self.commit_loss: torch.Tensor = torch.zeros(())
        self.restarted_codes = 0  # dead codes restarted by the last learning forward

    def start_learning(self, learning: QuantizerLearning | None = None) -> None:
        """Let the codebook learn in train mode (``None`` stops it; eval mode never learns)."""
        self.learning = learning if learning is not None else QuantizerLearning()

    def stop_learning(self) -> None:
        self.learning = None

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
        if self.learning is not None and self.training and torch.is_grad_enabled():
            rows, indices = self._learning_forward(flat.float())
            return rows.reshape(shape), indices.reshape(shape[:-1])
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            codes = F.normalize(self.codebook.float(), dim=-1)
            search = self._search_bf16 if fast_bf16 else self._search_fp32
            indices = torch.cat([search(F.normalize(chunk.float(), dim=-1), codes) for chunk in flat.split(CHUNK)])
        rows = self.codebook.float()[indices]
        return rows.reshape(shape), indices.reshape(shape[:-1])

    def _learning_forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick codes, update the codebook (EMA, restarts), and pass gradients straight through to ``flat``."""
        learning = self.learning
        assert learning is not None
        unit = F.normalize(flat, dim=-1)
        with torch.no_grad():
            codes = F.normalize(self.codebook, dim=-1)
            indices = torch.cat([self._search_fp32(chunk, codes) for chunk in unit.detach().split(CHUNK)])
            chosen = self.codebook[indices].clone()  # the rows used this step, before the update
            self._ema_update(unit.detach(), indices, learning.decay)
            self._restart_dead_codes(unit.detach(), learning.dead_code_threshold)
        self.commit_loss = F.mse_loss(unit, chosen)
        # Value: exactly the chosen row (flat - flat.detach() is exactly 0); gradient: the identity onto flat.
        return chosen + (flat - flat.detach()), indices

    def _ema_update(self, unit: torch.Tensor, indices: torch.Tensor, decay: float) -> None:
        book = self._codebook
        n_codes = book.embed.shape[1]
        counts = torch.bincount(indices, minlength=n_codes).to(unit.dtype)
        sums = torch.zeros(n_codes, unit.shape[-1], dtype=unit.dtype, device=unit.device).index_add_(0, indices, unit)
        used = counts > 0
        means = F.normalize(sums[used], dim=-1)
        book.cluster_size.mul_(decay).add_(counts[None], alpha=1 - decay)
        rows = book.embed[0]
        rows[used] = F.normalize(decay * rows[used] + (1 - decay) * means, dim=-1)

    def _restart_dead_codes(self, unit: torch.Tensor, threshold: float) -> None:
        book = self._codebook
        dead = torch.nonzero(book.cluster_size[0] < threshold).flatten()
        self.restarted_codes = int(dead.numel())
        if not self.restarted_codes:
            return
        pick = torch.randint(0, unit.shape[0], (self.restarted_codes,), device=unit.device)
        book.embed[0, dead] = unit[pick]
        # A restarted code gets the usage of a code used once per step, so it is not restarted again at once.
        book.cluster_size[0, dead] = 1.0

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
