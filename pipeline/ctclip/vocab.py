"""A WordPiece vocabulary (``vocab.txt``, BERT layout) learnt from the reports of a manifest, offline.

For a CT-CLIP pretrained by us (``pretrain-ctclip``) there is no CXR-BERT vocabulary
to borrow: its 30,522 tokens would mostly never occur in the training reports and
leave embedding rows that are never trained. Instead the HF ``tokenizers`` library
learns WordPiece merges from the reports themselves, cleaned exactly as the text
encoder sees them (:func:`pipeline.ctclip.text.report_text`), lower case, with the
BERT special tokens first (``[PAD]`` = 0, as the text encoder's padding id).
Words that never occur in a report (say, in a prompt) still tokenize: the
alphabet is always in the vocabulary, so they break into pieces the model has seen.

The trainer breaks ties between equally frequent merges in hash order, so two runs
on the same reports may differ by a few rare tokens; the tokens after the special
ones are written sorted, and a model must be used with the ``vocab.txt`` it was
trained with (``pretrain-ctclip`` copies it into its run and export).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pipeline.ctclip.text import report_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Always in the vocabulary, even if no report uses them, so that any plain-English prompt tokenizes without [UNK].
ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz0123456789.,;:-/%?")


def distinct_reports(manifests: Iterable[Path]) -> list[str]:
    """Cleaned report texts of every row, each text once, in first-seen order (deterministic)."""
    from schemas.manifest import read_manifest

    seen: dict[str, None] = {}
    for m in manifests:
        for row in read_manifest(m):
            text = report_text(row.findings, row.impressions)
            if text:
                seen.setdefault(text, None)
    return list(seen)


def train_wordpiece(texts: list[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """The learnt tokens in id order (special tokens first)."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    learnt = set(tok.get_vocab()) - set(SPECIAL_TOKENS)
    return [*SPECIAL_TOKENS, *sorted(learnt)]


def build_vocab(manifests: list[Path], out: Path, vocab_size: int = 4000, min_frequency: int = 2) -> dict:
    """Write ``out/vocab.txt`` and ``out/vocab_provenance.json``; returns the provenance record."""
    from pipeline._version import __version__
    from pipeline.runtime import atomic_write_text
    from schemas.manifest import ManifestError, manifest_sha256

    texts = distinct_reports(manifests)
    if not texts:
        raise ManifestError(f"{', '.join(map(str, manifests))}: no report text in any row; cannot learn a vocabulary")
    tokens = train_wordpiece(texts, vocab_size, min_frequency)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "vocab.txt", "\n".join(tokens) + "\n")
    record = {
        "tokens": len(tokens),
        "distinct_reports": len(texts),
        "vocab_size_requested": vocab_size,
        "min_frequency": min_frequency,
        "manifests": {str(m): manifest_sha256(m) for m in manifests},
        "software_version": __version__,
    }
    atomic_write_text(out / "vocab_provenance.json", json.dumps(record, indent=2) + "\n")
    return record
