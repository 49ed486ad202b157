"""Linear probes on frozen latents at fractions of the training labels.

Protocol of the X2CT-CLIP paper's few-shot experiment (arXiv 2503.02162; the authors'
public code, jz5426/CT-CLIP): for each training fraction (1, 2.5, 5, 10, 100%) and each of
five seeds (1024, 1234, 4321, 5678, 8765):

1. the fraction of the training items is drawn with iterative stratification (Sechidis et
   al. 2011, the ``iterative-stratification`` package), so that each label keeps its
   prevalence even in a 1% subset; 20% of that subset is set aside, again stratified, as
   the validation part;
2. a ``Linear(D, L)`` on the L2-normalised latents is trained with BCE-with-logits, AdamW
   (lr 5e-2, PyTorch's default weight decay), batches of 4096, at most 100 epochs; after each
   epoch the validation loss is measured and the weights with the lowest one are kept;
   training stops after 20 epochs without improvement (patience 20);
3. the kept probe scores the test items; AUROC per label and macro (labels without a
   positive or a negative among the test items are undefined and left out of the mean).

Labels unknown for an item (the cache's 255) are left out of the loss (masked) and count
as negative for the stratification only. Everything runs on the given device in float32;
the seed fixes the subset, the split, the probe's initialisation and the batch order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from trainer.evaluation.classification import classification_metrics, known_mask
from trainer.evaluation.zeroshot import l2_normalise

log = logging.getLogger(__name__)

FRACTIONS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.10, 1.0)
SEEDS: tuple[int, ...] = (1024, 1234, 4321, 5678, 8765)


@dataclass(frozen=True)
class ProbeSettings:
    lr: float = 5e-2
    batch_size: int = 4096
    max_epochs: int = 100
    patience: int = 20
    val_fraction: float = 0.2


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``round(fraction * N)`` items (at least 2) drawn by iterative stratification."""
    n = len(y)
    n_take = max(2, int(round(fraction * n)))
    if fraction >= 1.0 or n_take >= n:
        return np.arange(n)
    strat = (np.asarray(y) == 1).astype(int)
    split = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=n_take, test_size=n - n_take, random_state=seed)
    take, _ = next(split.split(np.zeros(n), strat))
    return np.sort(take)


def train_validation_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions within ``y``: ``val_fraction`` of them (at least 1) stratified aside."""
    n = len(y)
    n_val = max(1, int(round(val_fraction * n)))
    strat = (np.asarray(y) == 1).astype(int)
    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, train_size=n - n_val, random_state=seed)
    train, val = next(split.split(np.zeros(n), strat))
    return np.sort(train), np.sort(val)


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int,
    settings: ProbeSettings = ProbeSettings(),
    device: str = "cpu",
) -> tuple[torch.nn.Linear, dict]:
    """Train one probe with early stopping; returns the best-by-validation-loss probe and a summary."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the Linear's initialisation

    def tensors(x, y):
        m = known_mask(y)
        return (
            torch.as_tensor(l2_normalise(x), dtype=torch.float32, device=device),
            torch.as_tensor(np.where(m, y, 0), dtype=torch.float32, device=device),
            torch.as_tensor(m, dtype=torch.float32, device=device),
        )

    xt, yt, mt = tensors(x_train, y_train)
    xv, yv, mv = tensors(x_val, y_val)
    probe = torch.nn.Linear(xt.shape[1], yt.shape[1]).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=settings.lr)
    best_loss, best_state, best_epoch, waited, epoch = math.inf, None, -1, 0, 0
    for epoch in range(settings.max_epochs):
        probe.train()
        order = torch.randperm(len(xt), generator=gen).to(device)
        for start in range(0, len(xt), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            _masked_bce(probe(xt[idx]), yt[idx], mt[idx]).backward()
            opt.step()
        probe.eval()
        with torch.no_grad():
            val_loss = float(_masked_bce(probe(xv), yv, mv))
        if val_loss < best_loss:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in probe.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                break
    assert best_state is not None  # max_epochs >= 1 and the first epoch always improves on inf
    probe.load_state_dict(best_state)
    return probe.eval(), {"best_epoch": best_epoch, "epochs_run": epoch + 1, "best_val_loss": best_loss}


def probe_probabilities(probe: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    """Sigmoid of the probe's logits on L2-normalised latents (N, L)."""
    w = probe.weight
    with torch.no_grad():
        xt = torch.as_tensor(l2_normalise(x), dtype=torch.float32, device=w.device)
        return torch.sigmoid(probe(xt)).cpu().numpy().astype(np.float64)


def fewshot_rows(
    latents: dict[str, tuple[np.ndarray, np.ndarray]],
    y_train: np.ndarray,
    y_test: np.ndarray,
    label_names: list[str],
    fractions: tuple[float, ...] = FRACTIONS,
    seeds: tuple[int, ...] = SEEDS,
    settings: ProbeSettings = ProbeSettings(),
    device: str = "cpu",
) -> list[dict]:
    """One row per (encoder, fraction, seed): sizes, early-stopping summary, macro and per-label AUROC.

    ``latents`` maps an encoder's name to its (train, test) latents. The subset and the
    validation split of a (fraction, seed) depend on the labels only, so every encoder is
    probed on the very same items: the comparison is paired.
    """
    rows = []
    for fraction in fractions:
        for seed in seeds:
            subset = stratified_subset(y_train, fraction, seed)
            tr, va = train_validation_split(y_train[subset], settings.val_fraction, seed)
            tr, va = subset[tr], subset[va]
            for name, (x_train, x_test) in latents.items():
                probe, summary = fit_probe(x_train[tr], y_train[tr], x_train[va], y_train[va], seed, settings, device)
                metrics = classification_metrics(y_test, probe_probabilities(probe, x_test), label_names)
                row = {
                    "encoder": name,
                    "fraction": fraction,
                    "seed": seed,
                    "n_train": len(tr),
                    "n_val": len(va),
                    **summary,
                    "auroc_macro": metrics["macro"]["auroc"],
                    "auroc_macro_n_labels": metrics["macro"]["auroc_n_labels"],
                }
                row.update({f"auroc/{label}": metrics["per_label"][label]["auroc"] for label in label_names})
                log.info(
                    "%s fraction %.3g seed %d: %d train, %d val, stopped at epoch %d, macro AUROC %.4f",
                    name, fraction, seed, len(tr), len(va), summary["epochs_run"], row["auroc_macro"],
                )  # fmt: skip
                rows.append(row)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (over seeds) of macro AUROC per (encoder, fraction)."""
    out = []
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))  # in the order given
    keys = sorted({(r["encoder"], r["fraction"]) for r in rows}, key=lambda k: (encoders.index(k[0]), k[1]))
    for enc, frac in keys:
        vals = np.array([r["auroc_macro"] for r in rows if r["encoder"] == enc and r["fraction"] == frac], float)
        ok = vals[~np.isnan(vals)]
        out.append(
            {
                "encoder": enc,
                "fraction": frac,
                "n_seeds": int(len(ok)),
                "n_train_mean": float(
                    np.mean([r["n_train"] for r in rows if r["encoder"] == enc and r["fraction"] == frac])
                ),
                "auroc_macro_mean": float(ok.mean()) if len(ok) else math.nan,
                "auroc_macro_std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
            }
        )
    return out
