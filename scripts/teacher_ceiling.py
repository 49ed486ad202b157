"""What the demo teacher's CT encoder could reach at best: supervised probes on the teacher's own data.

    python scripts/teacher_ceiling.py --manifest data/train.jsonl --valid-manifest data/valid.jsonl \
        --tokenizer data/vocab --work /tmp/ceiling [--epochs 10] [--json out.json] \
        [--preprocess '{"channel_windows": [[-1000, 1000]], "hu_max": 1000}'] [--visual '{"quantize": true}']

A zero-shot CT-CLIP can at best find what its image encoder can be trained to see. Three
probes, on exactly the volumes pretrain-ctclip trains on (its preprocessing, its cache), give
the validation AUROC per label when the labels themselves are the training signal:

* ``logreg_blocks``: logistic regression (C=0.01) on the mean of each 8 x 8 x 8 voxel block
  (the token grid of the ``small`` config), with the features standardised (each block's mean
  and spread over patients) and without;
* ``ctvit_supervised``: the ``small`` CTViT (with its quantiser in training mode where the
  config has one, as pretrain-ctclip trains it) + its latent projection + a linear head,
  trained with binary cross-entropy on the 18 labels (AdamW 1e-3, batch 32).

``--preprocess`` and ``--visual`` change fields of the config for a probe (e.g. other windows,
no quantiser); the changed config is written beside the volumes and named in the JSON.

docs/teacher.md quotes the figures and what they mean. Nothing is asserted: a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def auroc_table(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from schemas.labels import CT_RATE_LABELS

    return {
        name: float(roc_auc_score(y[:, i], scores[:, i]))
        for i, name in enumerate(CT_RATE_LABELS)
        if 0 < y[:, i].sum() < len(y)
    }


def block_means(volumes: np.ndarray, block: int = 8) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = []
    for s in range(0, len(volumes), 256):
        v = torch.from_numpy(np.asarray(volumes[s : s + 256], dtype=np.float32))
        out.append(F.avg_pool3d(v, block).reshape(len(v), -1).numpy())
    return np.concatenate(out)


def logreg(train, valid, standardise: bool) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xt, xv = block_means(train.volumes), block_means(valid.volumes)
    if standardise:
        scaler = StandardScaler().fit(xt)
        xt, xv = scaler.transform(xt), scaler.transform(xv)
    scores = np.zeros(valid.labels.shape, dtype=np.float64)
    for i in range(train.labels.shape[1]):
        if 0 < train.labels[:, i].sum() < len(train.labels):
            model = LogisticRegression(C=0.01, max_iter=500).fit(xt, train.labels[:, i])
            scores[:, i] = model.decision_function(xv)
    return auroc_table(valid.labels, scores)


def ctvit_supervised(trainer, epochs: int, seed: int = 0) -> list[dict[str, float]]:
    """Per epoch, the validation AUROC per label of the small CTViT trained on the labels."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model, train, valid = trainer.model, trainer.train, trainer.valid
    head = torch.nn.Linear(model.cfg.dim_latent, train.labels.shape[1])
    params = [*model.visual_transformer.parameters(), *model.to_visual_latent.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    y = torch.from_numpy(train.labels.astype(np.float32))
    history = []
    for epoch in range(epochs):
        model.train()
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        for s in range(0, len(order) - 31, 32):
            rows = np.sort(order[s : s + 32])
            vol = torch.from_numpy(np.asarray(train.volumes[rows], dtype=np.float32))
            latent = model.latent_from_quantized(model.visual_features(vol, "fp32").quantized)
            # latents are unit vectors: a fixed gain lets the head reach confident logits
            loss = F.binary_cross_entropy_with_logits(head(10 * latent), y[rows])
            loss = loss + trainer.commit_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            scores = np.concatenate(
                [
                    head(
                        10 * model.encode_ct(torch.from_numpy(np.asarray(valid.volumes[s : s + 64], np.float32)))
                    ).numpy()
                    for s in range(0, len(valid), 64)
                ]
            )
        history.append(auroc_table(valid.labels, scores))
        print(f"epoch {epoch}: {json.dumps({k: round(v, 3) for k, v in history[-1].items()})}", flush=True)
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--valid-manifest", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the preprocessed volumes")
    ap.add_argument("--model", default="small")
    ap.add_argument(
        "--preprocess",
        type=json.loads,
        default=None,
        help="JSON fields that replace the config's preprocess fields (visual.channels follows), e.g. "
        '\'{"channel_windows": null, "hu_max": 1000}\' (the official HU / 1000) or '
        "'{\"channel_windows\": [[-1000, -400], [-160, 240]]}'",
    )
    ap.add_argument(
        "--visual", type=json.loads, default=None, help="JSON fields that replace visual fields, e.g. '{\"dim\": 96}'"
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from schemas.pretrain import PretrainConfig
    from trainer.teacher.labels import visible_labels
    from trainer.teacher.pretrain import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    if args.preprocess or args.visual:  # a copy of the config with other fields, written beside the volumes
        from pipeline.ctclip.config import get_config
        from schemas.ctclip import CTCLIPPreprocessConfig

        base = get_config(args.model).model_dump(mode="json")
        base["preprocess"].update(args.preprocess or {})
        base["visual"].update(args.visual or {})
        base["visual"]["channels"] = CTCLIPPreprocessConfig.model_validate(base["preprocess"]).n_channels
        args.work.mkdir(parents=True, exist_ok=True)
        model = str(args.work / "model_config.json")
        Path(model).write_text(json.dumps(base, indent=2))
    cfg = PretrainConfig(
        manifest=args.manifest,
        valid_manifest=args.valid_manifest,
        tokenizer=args.tokenizer,
        out=args.work,
        model=model,
        progress=False,
    )
    trainer = Trainer(cfg)  # the model, the quantiser in training mode, the preprocessed volumes
    seen = visible_labels()
    t0 = time.perf_counter()
    results = {
        "logreg_blocks_standardised": logreg(trainer.train, trainer.valid, True),
        "logreg_blocks_raw": logreg(trainer.train, trainer.valid, False),
    }
    history = ctvit_supervised(trainer, args.epochs)
    results["ctvit_supervised"] = history[-1]
    report = {
        "model": args.model,
        "preprocess": trainer.model_cfg.preprocess.model_dump(mode="json"),
        "epochs": args.epochs,
        "train_volumes": len(trainer.train),
        "valid_volumes": len(trainer.valid),
        "visible_labels": seen,
        "auroc": results,
        "visible_macro": {k: float(np.mean([v[n] for n in seen])) for k, v in results.items()},
        "ctvit_visible_macro_per_epoch": [float(np.mean([h[n] for n in seen])) for h in history],
        "wall_s": time.perf_counter() - t0,
    }
    width = max(len(n) for n in seen)
    print(f"{'label':<{width}}  " + "  ".join(f"{k:>26}" for k in results))
    for name in seen:
        print(f"{name:<{width}}  " + "  ".join(f"{results[k][name]:>26.3f}" for k in results))
    print(f"{'macro (visible)':<{width}}  " + "  ".join(f"{report['visible_macro'][k]:>26.3f}" for k in results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
