"""pretrain-ctclip's text side: every sentence of a batch encoded, against each distinct one once.

    python bench/bench_pretrain_text.py --manifest data/train.jsonl --tokenizer data/vocab \
        [--model small] [--batch-size 32] [--steps 20] [--threads 2] [--json out.json]

A training step encodes the chosen sentences of 32 reports (``text.pooling = sentence_mean``).
Reports share most sentences, so the trainer encodes each distinct sentence once and reuses
its latent (``Trainer.batch_tensors``). This measures forward + backward of the text tower
for the same batches both ways, alternating per batch so load drifts hit both alike, and
reports the medians and the share of distinct sentences. Standalone (not in ``python -m bench``):
it needs a real report manifest and vocabulary. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.model import CTCLIP
    from pipeline.ctclip.text import load_tokenizer, report_text, split_sentences
    from schemas.manifest import read_manifest
    from trainer.teacher import data as tdata

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_config(args.model)
    model = CTCLIP(cfg).train()
    tok = load_tokenizer(args.tokenizer, vocab_size=cfg.text.vocab_size)
    rows = read_manifest(args.manifest)
    rng = np.random.default_rng(0)

    def sentence_ids(row) -> list[list[int]]:
        parts = split_sentences(report_text(row.findings, row.impressions))
        return tok(parts, add_special_tokens=False)["input_ids"]

    def step(texts: list[list[int]], which: list[int], owner: list[int]) -> float:
        """Encode ``texts``, gather them per sentence (``which``), pool per report, backward: seconds."""
        t0 = time.perf_counter()
        ids, mask = tdata.pad_batch(texts, tok.pad_token_id)
        z = model.encode_text(ids, mask)[torch.tensor(which)]
        sums = torch.zeros(args.batch_size, z.shape[1]).index_add(0, torch.tensor(owner), z)
        F.normalize(sums, dim=-1).square().sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    every, distinct_only, shares = [], [], []
    for _ in range(args.steps):
        batch = [rows[i] for i in rng.choice(len(rows), args.batch_size, replace=False)]
        texts, owner = [], []
        for k, row in enumerate(batch):
            for s in tdata.choose_sentences(sentence_ids(row), rng, 0.5):
                texts.append(tdata.text_ids([s], tok.cls_token_id, tok.sep_token_id, cfg.text.max_length))
                owner.append(k)
        distinct, which = tdata.distinct_texts(texts)  # what Trainer.batch_tensors does
        shares.append(len(distinct) / len(texts))
        every.append(step(texts, list(range(len(texts))), owner))
        distinct_only.append(step(distinct, which, owner))
    out = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": args.threads,
        "median_s_every_sentence": statistics.median(every[1:]),
        "median_s_distinct_once": statistics.median(distinct_only[1:]),
        "median_distinct_share": statistics.median(shares),
    }
    out["speedup"] = out["median_s_every_sentence"] / out["median_s_distinct_once"]
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
