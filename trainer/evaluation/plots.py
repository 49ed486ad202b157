"""ROC and precision-recall curves per label (matplotlib, Agg), radiograph beside CT upper bound."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from trainer.evaluation.classification import known_mask


def curves_figure(
    kind: str,
    y: np.ndarray,
    sources: dict[str, np.ndarray],
    label_names: list[str],
    title: str,
    columns: int = 6,
) -> bytes:
    """PNG bytes: one panel per label, one curve per source (name -> probabilities (N, L)).

    ``kind`` is 'roc' (TPR against FPR, chance diagonal) or 'pr' (precision against recall,
    prevalence line). A label without a positive or a negative item says 'undefined'.
    """
    n = len(label_names)
    rows = math.ceil(n / columns)
    # Shared axes and a fixed layout: tight_layout over 18 panels took half the figure's time.
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.5 * rows), squeeze=False, sharex=True, sharey=True
    )
    known = known_mask(y)
    for j, name in enumerate(label_names):
        ax = axes[j // columns][j % columns]
        yj = y[known[:, j], j].astype(int)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if yj.size == 0 or yj.min() == yj.max():
            ax.text(0.5, 0.5, "undefined\n(one class only)", ha="center", va="center", fontsize=8, color="gray")
            continue
        for src, p in sources.items():
            pj = p[known[:, j], j]
            if kind == "roc":
                fpr, tpr, _ = roc_curve(yj, pj)
                ax.plot(fpr, tpr, lw=1.1, label=src)
            else:
                prec, rec, _ = precision_recall_curve(yj, pj)
                ax.step(rec, prec, where="post", lw=1.1, label=src)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=0.8)
        else:
            ax.axhline(yj.mean(), ls=":", color="gray", lw=0.8)
    for j in range(n, rows * columns):
        axes[j // columns][j % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    xlabel, ylabel = ("false positive rate", "true positive rate") if kind == "roc" else ("recall", "precision")
    fig.suptitle(f"{title}  ({ylabel} against {xlabel})", fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1, top=0.9, wspace=0.12, hspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
