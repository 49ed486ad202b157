"""``x2ct-pipeline evaluate``: zero-shot classification and retrieval of a trained run on one split.

For each selected view, every radiograph of the split (the DRR store joined with the
embedding cache, ``trainer.data.join_split``) is encoded by the run's encoder, and

* **zero-shot classification** (:mod:`.zeroshot`, :mod:`.classification`,
  :mod:`.bootstrap`): P(positive) per label for both prompt sets of the cache
  (``x2ct_clip``: "There is {p}." / "There is no {p}."; ``ct_clip``: "{p} is present." /
  "{p} is not present."), scored per label and macro/micro/weighted with 95% intervals
  from resampling patients. The **CT upper bound** is the same computation on the cached
  CT-CLIP CT latents against the same prompts (CT-CLIP's own zero-shot, what the radiograph
  encoder is distilled from), shown side by side;
* **retrieval** (:mod:`.retrieval`): Recall@K and MAP@K for X->C, C->X, X->R, R->X, with
  CT-CLIP's C->R and R->C for reference.

Labels that no item of the split has (an external set annotated for a subset of the 18)
are left out of every table, and listed. Outputs (in ``--out``): ``metrics.json``,
``zero_shot.csv`` (long: every source, prompt set, label or average, metric, value and
interval), ``zero_shot_auroc.csv`` (wide: AUROC per label, sources side by side),
``retrieval.csv``, ``roc_<view>_<set>.png`` and ``pr_<view>_<set>.png`` (per-label curves,
radiograph beside CT), and ``report.html`` (all of it in one self-contained file).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import PipelineError
from trainer.evaluation.bootstrap import bootstrap_intervals
from trainer.evaluation.classification import AVERAGES, METRICS, classification_metrics, known_mask
from trainer.evaluation.retrieval import retrieval_table
from trainer.evaluation.zeroshot import zero_shot_probabilities

log = logging.getLogger(__name__)

CT_SOURCE = "ct_upper_bound"


class EvaluateError(PipelineError):
    """The run, store and cache cannot be evaluated together as asked."""


def radiograph_source(view: str) -> str:
    return f"radiograph_{view}"


def select_labels(y: np.ndarray, label_names: list[str], wanted: list[str] | None) -> tuple[list[int], list[str]]:
    """Columns to evaluate: those some item knows (and, if given, among ``wanted``); and the names left out."""
    if wanted:
        unknown = [w for w in wanted if w not in label_names]
        if unknown:
            raise EvaluateError(f"unknown label(s) {unknown}; choose among {label_names}")
    present = np.asarray(known_mask(y).any(axis=0))
    cols = [j for j, n in enumerate(label_names) if present[j] and (not wanted or n in wanted)]
    if not cols:
        raise EvaluateError("no label to evaluate: every selected label is unknown for every item of the split")
    absent = [n for j, n in enumerate(label_names) if not present[j]]
    return cols, absent


def scored_table(
    y: np.ndarray, p: np.ndarray, groups: list[str], names: list[str], threshold: float, n_resamples: int, seed: int
) -> dict[str, Any]:
    """Point values (scikit-learn) and bootstrap intervals, one record per (scope, metric)."""
    point = classification_metrics(y, p, names, threshold)
    ci = bootstrap_intervals(y, p, groups, names, threshold, n_resamples, seed) if n_resamples else None

    def cell(values: dict, intervals: dict | None, m: str) -> dict[str, Any]:
        v = values[m]
        rec: dict[str, Any] = {"value": None if math.isnan(v) else float(v)}
        rec.update(intervals[m] if intervals else {"ci_low": None, "ci_high": None, "n_resamples_defined": 0})
        return rec

    out: dict[str, Any] = {"per_label": {}}
    for name in names:
        vals = point["per_label"][name]
        out["per_label"][name] = {"n": vals["n"], "n_pos": vals["n_pos"]}
        out["per_label"][name].update({m: cell(vals, ci["per_label"][name] if ci else None, m) for m in METRICS})
    for avg in AVERAGES:
        out[avg] = {m: cell(point[avg], ci[avg] if ci else None, m) for m in METRICS}
        if avg != "micro":
            out[avg].update({f"{m}_n_labels": point[avg][f"{m}_n_labels"] for m in METRICS})
    return out


def evaluate_latents(
    x_by_view: dict[str, np.ndarray],
    ct: np.ndarray | None,
    report: np.ndarray | None,
    labels: np.ndarray,
    patient_ids: list[str],
    volume_ids: list[str],
    scan_ids: list[str],
    prompts: dict[str, dict[str, np.ndarray]],
    temperature: float,
    label_names: list[str],
    wanted_labels: list[str] | None = None,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    ks: tuple[int, ...] = (1, 5, 10, 50, 100),
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Every metric of the split; returns (results, probabilities[source][prompt set]) for the figures.

    Without ``ct`` and ``report`` (a set of real radiographs) there is no CT upper bound and no retrieval.
    """
    width = int(next(iter(prompts.values()))["positive"].shape[1])
    for x in x_by_view.values():
        if x.shape[1] != width or (ct is not None and ct.shape[1] != width):
            raise EvaluateError(
                f"the run's encoder gives {x.shape[1]}-d latents but the cache holds "
                f"{ct.shape[1] if ct is not None else width}-d CT-CLIP latents; "
                "evaluate with the cache of the CT-CLIP the run was trained against"
            )
    cols, absent = select_labels(labels, label_names, wanted_labels)
    names = [label_names[j] for j in cols]
    y = labels[:, cols].astype(np.int64)
    y[~known_mask(labels[:, cols])] = -1
    scale = float(np.exp(temperature))
    sources = {radiograph_source(v): x for v, x in x_by_view.items()}
    if ct is not None:
        sources[CT_SOURCE] = ct
    probs: dict[str, dict[str, np.ndarray]] = {}
    zero_shot: dict[str, Any] = {}
    for src, lat in sources.items():
        probs[src], zero_shot[src] = {}, {}
        for pset, pr in prompts.items():
            p = zero_shot_probabilities(lat, pr["positive"][cols], pr["negative"][cols], scale)
            probs[src][pset] = p
            zero_shot[src][pset] = scored_table(y, p, patient_ids, names, threshold, n_resamples, seed)
            log.info("%s / %s: macro AUROC %s", src, pset, zero_shot[src][pset]["macro"]["auroc"]["value"])
    retrieval = {}
    if ct is not None and report is not None:
        retrieval = {
            view: retrieval_table(x, ct, report, volume_ids, scan_ids, y, tuple(ks)) for view, x in x_by_view.items()
        }
    results = {
        "n_items": len(volume_ids),
        "n_scans": len(set(scan_ids)),
        "n_patients": len(set(patient_ids)),
        "labels_evaluated": names,
        "labels_absent": absent,
        "threshold": threshold,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "unit": "patient", "interval": "percentile 95%"},
        "zero_shot": zero_shot,
        "retrieval": retrieval,
    }
    return results, probs


# ---- outputs ------------------------------------------------------------------------------------------------------


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def zero_shot_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for src, by_set in results["zero_shot"].items():
        for pset, table in by_set.items():
            for name, rec in table["per_label"].items():
                for m in METRICS:
                    c = rec[m]
                    rows.append([src, pset, name, m, c["value"], c["ci_low"], c["ci_high"], rec["n"], rec["n_pos"]])
            for avg in AVERAGES:
                for m in METRICS:
                    c = table[avg][m]
                    rows.append([src, pset, avg, m, c["value"], c["ci_low"], c["ci_high"], "", ""])
    return rows


def _interval_text(c: dict[str, Any]) -> str:
    if c["value"] is None:
        return "undefined"
    if c["ci_low"] is None:
        return f"{c['value']:.3f}"
    return f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"


def side_by_side(results: dict[str, Any], metric: str = "auroc") -> tuple[list[str], list[list[str]]]:
    """Rows: labels then averages; columns: every (source, prompt set); cells 'value [low, high]'."""
    columns = [(s, p) for s, by_set in results["zero_shot"].items() for p in by_set]
    header = ["label", *[f"{s} / {p}" for s, p in columns]]
    rows = []
    for name in results["labels_evaluated"]:
        rows.append(
            [name, *[_interval_text(results["zero_shot"][s][p]["per_label"][name][metric]) for s, p in columns]]
        )
    for avg in AVERAGES:
        rows.append([avg, *[_interval_text(results["zero_shot"][s][p][avg][metric]) for s, p in columns]])
    return header, rows


def retrieval_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    first: dict[str, Any] = next((rec for by_dir in results["retrieval"].values() for rec in by_dir.values()), {})
    keys = [k for k in first if k not in ("n_queries", "n_gallery")]
    header = ["view", "direction", "n_queries", "n_gallery", *keys]
    rows = [
        [view, d, rec["n_queries"], rec["n_gallery"], *[rec.get(k) for k in keys]]
        for view, by_dir in results["retrieval"].items()
        for d, rec in by_dir.items()
    ]
    return header, rows


def write_outputs(
    out: Path,
    results: dict[str, Any],
    probs: dict[str, dict[str, np.ndarray]],
    y_all: np.ndarray,
    label_names: list[str],
    meta: dict[str, Any],
) -> list[Path]:
    """metrics.json, the CSV tables, the curve figures and report.html into ``out``."""
    from pipeline.runtime import atomic_write_bytes, atomic_write_text
    from trainer.evaluation.plots import curves_figure
    from trainer.report_html import HtmlReport

    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_text(out / "metrics.json", json.dumps({**meta, **results}, indent=2, allow_nan=False) + "\n")
    atomic_write_text(
        out / "zero_shot.csv",
        _csv(
            ["source", "prompt_set", "label", "metric", "value", "ci_low", "ci_high", "n", "n_pos"],
            zero_shot_rows(results),
        ),
    )
    header, rows = side_by_side(results)
    atomic_write_text(out / "zero_shot_auroc.csv", _csv(header, rows))
    written += [out / n for n in ("metrics.json", "zero_shot.csv", "zero_shot_auroc.csv")]
    r_header, r_rows = retrieval_rows(results)
    if r_rows:
        atomic_write_text(out / "retrieval.csv", _csv(r_header, r_rows))
        written.append(out / "retrieval.csv")

    names = results["labels_evaluated"]
    cols = [label_names.index(n) for n in names]
    y = y_all[:, cols]
    figures: list[tuple[str, bytes, str]] = []
    views = [s for s in probs if s != CT_SOURCE]
    for src in views:
        view = src.removeprefix("radiograph_")
        for pset in probs[src]:
            pair = {f"radiograph ({view})": probs[src][pset]}
            if CT_SOURCE in probs:
                pair["CT (upper bound)"] = probs[CT_SOURCE][pset]
            for kind in ("roc", "pr"):
                vs = " vs CT" if CT_SOURCE in probs else ""
                title = f"{'ROC' if kind == 'roc' else 'Precision-recall'}: {view} radiographs{vs}, prompts {pset}"
                png = curves_figure(kind, y, pair, names, title)
                name = f"{kind}_{view}_{pset}.png"
                atomic_write_bytes(out / name, png)
                figures.append((name, png, title))
                written.append(out / name)

    report = HtmlReport(f"Evaluation of {meta.get('run', 'a run')}")
    report.paragraph(
        f"Split: {results['n_items']} volumes, {results['n_scans']} scans, {results['n_patients']} patients. "
        f"Checkpoint: {meta.get('checkpoint')}. Store: {meta.get('drr')}. Cache: {meta.get('embeddings')}.",
        css_class="meta",
    )
    report.paragraph(
        "Zero-shot scores are P(positive prompt) of a softmax over a positive and a negative prompt; a label is "
        f"called positive at P >= {results['threshold']}. Intervals: 95% percentile bootstrap, "
        f"{results['bootstrap']['n_resamples']} resamples of patients (seed {results['bootstrap']['seed']}). "
        "'undefined': the label has no positive or no negative item (AUROC, PR-AUC), no positive (recall) or no "
        "predicted positive (precision).",
        css_class="note",
    )
    if results["labels_absent"]:
        report.paragraph(f"Labels this split does not have (left out): {', '.join(results['labels_absent'])}.")
    if results.get("failed_images"):
        report.paragraph(
            f"{len(results['failed_images'])} image(s) could not be read and are left out: "
            + "; ".join(results["failed_images"][:5])
        )
    report.heading(
        "Zero-shot AUROC per label" + (": radiographs beside the CT upper bound" if CT_SOURCE in probs else "")
    )
    report.table(header, rows)
    for avg in AVERAGES:
        columns = [(s, p) for s, by_set in results["zero_shot"].items() for p in by_set]
        report.table(
            ["metric", *[f"{s} / {p}" for s, p in columns]],
            [[m, *[_interval_text(results["zero_shot"][s][p][avg][m]) for s, p in columns]] for m in METRICS],
            caption=f"{avg} average",
        )
    if r_rows:
        report.heading("Retrieval")
        report.paragraph(
            "Recall@K: the relevant item among the K most similar (X<->C: the volume's own CT; X<->R: the scan's report, "
            "each report once per scan). MAP@K: mean Jaccard overlap of positive labels between the query and its K "
            "most similar gallery items. C->R and R->C are CT-CLIP's own, for reference."
        )
        report.table(r_header, r_rows)
    report.heading("Curves")
    for _, png, title in figures:
        report.figure(png, caption=title)
    report.write(out / "report.html")
    written.append(out / "report.html")
    return written


# ---- the command ----------------------------------------------------------------------------------------------------


def read_view(split, view: int, item: int) -> np.ndarray:
    return split.read_image(item, view)


def run_evaluate(cfg) -> dict[str, Any]:
    from pipeline.devices import resolve_device
    from pipeline.runtime import output_lock, refuse_non_folder
    from schemas.provenance import file_sha256
    from trainer.data import join_split
    from trainer.encode import encode_store_items
    from trainer.run import load_run
    from trainer.teacher_match import check_teacher

    out = Path(cfg.out)
    refuse_non_folder(out, "an evaluation")
    if (out / "metrics.json").exists() and not cfg.overwrite:
        raise EvaluateError(f"{out} already holds an evaluation (metrics.json); give another --out or --overwrite")
    device = resolve_device(cfg.device)
    with output_lock(out, "evaluate"):
        run = load_run(cfg.run, checkpoint=cfg.checkpoint, device=device)
        if cfg.cxr_manifest is not None:
            from trainer.evaluation.external import evaluate_cxr_set

            return evaluate_cxr_set(run, cfg, device)
        split = join_split(cfg.drr, cfg.embeddings, list(cfg.views))
        check_teacher(run, split.latent_dim, split.identity["cache"].get("checkpoint_sha256"), Path(cfg.embeddings))
        x_by_view = {}
        for v, view in enumerate(split.views):
            x_by_view[view] = encode_store_items(
                run.encoder, run.eval_transform, functools.partial(read_view, split, v), range(len(split)),
                cfg.batch_size, device, cfg.progress, desc=f"encoding {view}",
            )  # fmt: skip
        results, probs = evaluate_latents(
            x_by_view, split.ct, split.report, split.labels, split.patient_ids, split.volume_ids, split.scan_ids,
            split.prompts, split.temperature, split.label_names, cfg.labels, cfg.threshold, cfg.n_resamples,
            cfg.seed, tuple(cfg.ks),
        )  # fmt: skip
        meta = {
            "run": str(cfg.run),
            "checkpoint": str(run.checkpoint),
            "checkpoint_sha256": file_sha256(run.checkpoint),
            "step": run.step,
            "drr": str(cfg.drr),
            "embeddings": str(cfg.embeddings),
            "identity": split.identity,
            "config": cfg.model_dump(mode="json"),
        }
        write_outputs(out, results, probs, split.labels, split.label_names, meta)
    return results
