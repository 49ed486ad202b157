"""Error of CT-CLIP's bf16 path against its fp32 path, on real weights and real volumes.

    python bench/ctclip_bf16_error.py --checkpoint CT-CLIP_v2.pt --tokenizer CXR_BERT_DIR VOL.nii.gz [VOL ...]

Per volume: cosine of the bf16 to the fp32 latent, the share of codebook indices
that differ, and the 18 zero-shot decisions of the official protocol
("<label> is present." vs "<label> is not present.", softmax over the two) that
change. Random weights are a worst case for the quantiser (its random codebook
leaves many near-ties); this script measures the real one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("volumes", nargs="+", type=Path, help="CT volumes (NIfTI), read with load_ct (header HU).")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="Folder with CXR-BERT's vocab.txt.")
    ap.add_argument("--config", default="official", help="Model config (default: official).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from pipeline.ct_io import load_ct
    from pipeline.ctclip.checkpoint import load_ctclip
    from pipeline.ctclip.preprocess import preprocess_ct
    from pipeline.ctclip.text import load_tokenizer, tokenize
    from schemas.labels import CT_RATE_LABELS

    torch.set_num_threads(args.threads)
    model = load_ctclip(args.checkpoint, args.config)
    tok = load_tokenizer(args.tokenizer)
    prompts = [p for label in CT_RATE_LABELS for p in (f"{label} is present.", f"{label} is not present.")]
    text = model.encode_text(*tokenize(tok, prompts)).reshape(len(CT_RATE_LABELS), 2, -1)
    scale = model.logit_scale
    for path in args.volumes:
        x = preprocess_ct(load_ct(path), model.cfg)[None]
        out = {}
        for prec in ("fp32", "bf16"):
            feats = model.visual_features(x, prec)
            latent = model.latent_from_quantized(feats.quantized)[0]
            present = (scale * torch.einsum("d,lkd->lk", latent, text)).softmax(dim=-1)[:, 0]
            out[prec] = (latent, feats.indices, present)
        cos = F.cosine_similarity(out["bf16"][0], out["fp32"][0], dim=0).item()
        flips = (out["bf16"][1] != out["fp32"][1]).float().mean().item()
        changed = ((out["bf16"][2] > 0.5) != (out["fp32"][2] > 0.5)).sum().item()
        dp = (out["bf16"][2] - out["fp32"][2]).abs().max().item()
        print(
            f"{path.name}: latent cosine {cos:.5f}, indices differing {100 * flips:.2f}%, "
            f"zero-shot decisions changed {changed}/18 (max |d p(present)| {dp:.4f})"
        )


if __name__ == "__main__":
    main()
