"""``x2ct-pipeline fewshot``: linear probes on the run's encoder and on a baseline, side by side.

Both encoders encode the radiographs (one view) of the training and the test split (each a
DRR store joined with its cache, ``trainer.data.join_split``); :mod:`.probe` then trains the
probes at every fraction and seed on the frozen, L2-normalised latents. The baseline is the
same architecture before alignment: built from the run's encoder spec and initialised from
``--baseline-init`` (for example ImageNet weights), else from the run's own ``--init``, else
randomly (seed 0), and it is said which. Outputs: ``fewshot.csv`` (one row per encoder,
fraction and seed), ``fewshot_summary.csv`` (mean and standard deviation over seeds),
``fewshot.json`` (both, with the settings) and ``fewshot.png`` (macro AUROC against the
training fraction).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import PipelineError
from trainer.evaluation.stage import read_view
from trainer.fewshot.probe import ProbeSettings, fewshot_rows, summarise

log = logging.getLogger(__name__)


class FewshotError(PipelineError):
    """The splits or the baseline cannot be used as asked."""


def curve_figure(summary: list[dict[str, Any]], title: str) -> bytes:
    """PNG: macro AUROC (mean +- s.d. over seeds) against the training fraction, one line per encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for enc in dict.fromkeys(r["encoder"] for r in summary):
        pts = sorted((r for r in summary if r["encoder"] == enc), key=lambda r: r["fraction"])
        fr = [100 * r["fraction"] for r in pts]
        mean = np.array([r["auroc_macro_mean"] for r in pts], float)
        std = np.nan_to_num(np.array([r["auroc_macro_std"] for r in pts], float))
        ax.errorbar(fr, mean, yerr=std, marker="o", capsize=3, label=enc)
    ax.set_xscale("log")
    ax.set_xticks([100 * r["fraction"] for r in summary if r["encoder"] == summary[0]["encoder"]])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("training labels used")
    ax.set_ylabel("macro AUROC (test)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    header = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: an undefined AUROC is null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_fewshot_outputs(out: Path, rows: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    from pipeline.runtime import atomic_write_bytes, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    atomic_write_text(out / "fewshot.csv", _csv(rows))
    atomic_write_text(out / "fewshot_summary.csv", _csv(summary))
    clean = _nan_to_none({**meta, "summary": summary, "rows": rows})
    atomic_write_text(out / "fewshot.json", json.dumps(clean, indent=2, allow_nan=False) + "\n")
    atomic_write_bytes(out / "fewshot.png", curve_figure(summary, "Few-shot linear probes on frozen latents"))
    return clean


def build_baseline(run, baseline_init: Path | None):
    """The run's architecture before alignment, and a sentence saying where its weights came from."""
    import torch

    from trainer.encoder import build_encoder

    init = baseline_init or getattr(run.config, "init", None)
    if init is not None and not Path(init).is_file():
        raise FewshotError(f"baseline weights {init} do not exist; give --baseline-init a local weights file")
    torch.manual_seed(0)
    encoder = build_encoder(run.encoder.spec, init=init)
    return encoder.eval(), (f"initialised from {init}" if init else "randomly initialised (seed 0)")


def run_fewshot(cfg) -> dict[str, Any]:
    from pipeline.devices import resolve_device
    from pipeline.runtime import output_lock, refuse_non_folder
    from trainer.data import join_split
    from trainer.encode import encode_store_items
    from trainer.run import load_run
    from trainer.teacher_match import check_teacher

    out = Path(cfg.out)
    refuse_non_folder(out, "a few-shot result")
    if (out / "fewshot.json").exists() and not cfg.overwrite:
        raise FewshotError(f"{out} already holds few-shot results; give another --out or --overwrite")
    device = resolve_device(cfg.device)
    with output_lock(out, "fewshot"):
        run = load_run(cfg.run, checkpoint=cfg.checkpoint, device=device)
        train = join_split(cfg.train_drr, cfg.train_embeddings, [cfg.view])
        test = join_split(cfg.test_drr, cfg.test_embeddings, [cfg.view])
        for split, path in ((train, cfg.train_embeddings), (test, cfg.test_embeddings)):
            check_teacher(run, split.latent_dim, split.identity["cache"].get("checkpoint_sha256"), Path(path))
        baseline, baseline_from = build_baseline(run, cfg.baseline_init)
        settings = ProbeSettings(cfg.lr, cfg.probe_batch_size, cfg.max_epochs, cfg.patience)

        def encode(encoder, split, desc: str) -> np.ndarray:
            return encode_store_items(
                encoder, run.eval_transform, functools.partial(read_view, split, 0), range(len(split)),
                cfg.batch_size, device, cfg.progress, desc=desc,
            )  # fmt: skip

        latents = {
            name: (encode(encoder, train, f"{name}: train"), encode(encoder, test, f"{name}: test"))
            for name, encoder in (("X2CT-CLIP (trained)", run.encoder), (f"baseline ({baseline_from})", baseline))
        }
        rows = fewshot_rows(
            latents, train.labels, test.labels, test.label_names, tuple(cfg.fractions), tuple(cfg.seeds), settings,
            str(device),
        )  # fmt: skip
        meta = {
            "run": str(cfg.run),
            "checkpoint": str(run.checkpoint),
            "baseline": baseline_from,
            "view": cfg.view,
            "n_train": len(train),
            "n_test": len(test),
            "settings": cfg.model_dump(mode="json"),
        }
        return write_fewshot_outputs(out, rows, meta)
