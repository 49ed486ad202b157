"""Report text for CT-CLIP: the official loader's cleaning, and the CXR-BERT tokenizer from a local folder."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from schemas.errors import PipelineError

NOT_GIVEN = "Not given."
# Special tokens tokenize() emits. BertTokenizer silently appends any that vocab.txt lacks under new ids
# the model never learnt (or, for an empty file, fails at the first text), so their absence is refused.
REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
# Characters the official inference loader deletes from the report text.
STRIPPED_CHARS = "\"'()"
# A sentence ends at '.', '?' or '!' followed by a capital letter (spaces optional: the official join of
# findings and impressions puts no space between them).
_SENTENCE_END = re.compile(r"(?<=[.?!])\s*(?=[A-Z])")


class TokenizerError(PipelineError, ValueError):
    """The tokenizer folder is unusable; the message names it and the fix."""


def _part(text: str | None) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""  # the official loader would write str(NaN) = 'nan'; an absent section is empty here
    return "" if str(text) == NOT_GIVEN else str(text)


def report_text(findings: str | None, impressions: str | None) -> str:
    """Findings then impressions as the official loader joins them: no separator, 'Not given.' dropped, cleaned."""
    return clean_report(_part(findings) + _part(impressions))


def clean_report(text: str) -> str:
    """Delete double quotes, single quotes and parentheses (official ``__getitem__``); nothing else changes."""
    return text.translate(str.maketrans("", "", STRIPPED_CHARS))


def load_tokenizer(folder: str | Path, vocab_size: int | None = None):
    """CXR-BERT's WordPiece tokenizer (lower-case) from a local folder holding ``vocab.txt``; no hub access.

    ``vocab_size``: the text model's embedding rows; a vocabulary with more tokens (ids the model has no
    row for) is refused here rather than failing inside the model.
    """
    from transformers import BertTokenizer

    folder = Path(folder)
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise TokenizerError(
            f"{folder}: no vocab.txt in the tokenizer folder; download microsoft/BiomedVLP-CXR-BERT-specialized's "
            "tokenizer files (vocab.txt at least) into it"
        )
    try:
        with vocab.open(encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]  # token id = line number, as BertTokenizer reads it
        tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    except Exception as e:
        raise TokenizerError(f"{vocab}: unreadable vocabulary ({e}); expected one WordPiece token a line") from e
    missing = [t for t in REQUIRED_TOKENS if t not in set(tokens)]
    if missing:
        raise TokenizerError(
            f"{vocab}: not a BERT vocabulary ({len(tokens)} lines, no {' '.join(missing)}); "
            "use the vocab.txt of microsoft/BiomedVLP-CXR-BERT-specialized"
        )
    if vocab_size is not None and len(tokens) > vocab_size:
        raise TokenizerError(
            f"{vocab}: {len(tokens)} tokens, but the model's text encoder has {vocab_size}; "
            "use the vocabulary the checkpoint was trained with (CXR-BERT's has 30522)"
        )
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 512, pad_to_max_length: bool = False):
    """(input_ids, attention_mask), each LongTensor (B, L), truncated at ``max_length`` tokens.

    The official code pads every text to 512 tokens. Padding only to the longest
    text in the batch gives the same CLS output (padding is masked out of BERT's
    attention) for far less work, so it is the default; ``pad_to_max_length``
    reproduces the official tensors exactly.
    """
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(
        list(texts),
        return_tensors="pt",
        truncation=True,
        max_length=max_length,
        padding="max_length" if pad_to_max_length else "longest",
    )
    return enc["input_ids"], enc["attention_mask"]


def split_sentences(text: str) -> list[str]:
    """The sentences of a (cleaned) report, in order; a text without a sentence end is one sentence."""
    return [p.strip() for p in _SENTENCE_END.split(text) if p.strip()] or [text]


def encode_texts(model, tokenizer, texts: Sequence[str]):
    """L2-normalised latents (B, dim_latent) of whole texts, pooled as the model's config says
    (``text.pooling``): the CLS of each text, or the normalised mean of its sentences' CLS latents."""
    import torch
    import torch.nn.functional as F

    cfg = model.cfg.text
    device = next(model.text_transformer.parameters()).device

    def encode(batch: list[str]) -> torch.Tensor:
        ids, mask = tokenize(tokenizer, batch, max_length=cfg.max_length)
        return model.encode_text(ids.to(device), mask.to(device))

    texts = list(texts)
    if cfg.pooling == "cls":
        return encode(texts)
    pieces = [split_sentences(t) for t in texts]
    latents = encode([s for p in pieces for s in p])
    out, start = [], 0
    for p in pieces:
        out.append(latents[start : start + len(p)].mean(dim=0))
        start += len(p)
    return F.normalize(torch.stack(out), dim=-1)
