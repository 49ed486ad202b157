"""The demo's figures: zero-shot AUROC per label from simulated radiographs (the trained student),
from CT (the teacher: the upper bound) and from an untrained encoder, a linear probe on each,
X->C Recall@5 against chance; written to ``summary.json``, a text table and ``report.html``.

Everything is measured on the held-out patients (the synth ``valid`` split, never trained on).
Zero-shot uses three prompt sets: the paper's two templates and the per-label ensemble in the
report vocabulary (``data_manifests/label_prompts.json``); the headline is the ensemble, the
paper's figures stand beside it. Macro averages are given over all labels and over the labels
counted as visible in projection (``data_manifests/projection_visibility.json``, with reasons).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from schemas.demo import DemoConfig
from trainer.evaluation.zeroshot import zero_shot_probabilities
from trainer.teacher import zeroshot
from trainer.teacher.labels import REPORT_VOCAB, prompt_sets, visibility, visible_labels

logger = logging.getLogger(__name__)
HEADLINE = REPORT_VOCAB
SOURCES = ("drr_student", "ct_teacher", "drr_untrained")
SOURCE_TITLES = {
    "drr_student": "radiograph, trained encoder",
    "ct_teacher": "CT, teacher (upper bound)",
    "drr_untrained": "radiograph, untrained encoder",
}


def _latents(p, teacher: Path) -> dict[str, Any]:
    import torch

    from pipeline.ctclip.checkpoint import load_ctclip
    from pipeline.ctclip.text import load_tokenizer
    from trainer.data import join_split
    from trainer.encode import encode_store_items
    from trainer.encoder import build_encoder
    from trainer.run import load_run

    run = load_run(p.student, "latest")
    torch.manual_seed(0)
    untrained = build_encoder(run.encoder.spec).eval()
    out: dict[str, Any] = {"run": run}
    for split, drr, emb in (("train", p.drr_train, p.emb_train), ("test", p.drr_test, p.emb_test)):
        s = join_split(drr, emb, ["pa"])
        out[split] = s

        def read(i, s=s):
            return s.read_image(i, "pa")

        items = range(len(s))
        out[f"{split}/drr_student"] = encode_store_items(run.encoder, run.eval_transform, read, items, 64)
        out[f"{split}/drr_untrained"] = encode_store_items(untrained, run.eval_transform, read, items, 64)
        out[f"{split}/ct_teacher"] = s.ct
    test = out["test"]
    prompts = dict(test.prompts)  # the paper's templates, embedded by embed-ct
    model = load_ctclip(teacher / "ctclip.pt", cfg=str(teacher / "model_config.json"))
    tok = load_tokenizer(teacher, vocab_size=model.cfg.text.vocab_size)
    prompts[REPORT_VOCAB] = zeroshot.prompt_latents(model, tok, {REPORT_VOCAB: prompt_sets()[REPORT_VOCAB]})[
        REPORT_VOCAB
    ]
    out["prompts"] = prompts
    out["logit_scale"] = float(np.exp(test.temperature))
    return out


def compute(p, teacher: Path) -> tuple[dict, dict]:
    """(summary dict, arrays for the figures)."""
    from trainer.evaluation.retrieval import recall_at_k

    lat = _latents(p, teacher)
    test, train = lat["test"], lat["train"]
    seen = visible_labels()
    y = test.labels
    scores: dict[str, dict[str, np.ndarray]] = {}
    zero_shot: dict[str, dict[str, Any]] = {}
    for src in SOURCES:
        zero_shot[src] = {}
        scores[src] = {}
        for name, pr in lat["prompts"].items():
            s = zero_shot_probabilities(lat[f"test/{src}"], pr["positive"], pr["negative"], lat["logit_scale"])
            scores[src][name] = s
            per = zeroshot.auroc_per_label(s, y)
            zero_shot[src][name] = {
                "per_label": per,
                "macro_all": zeroshot.macro(per),
                "macro_visible": zeroshot.macro(per, seen),
            }
    probe = {}
    for src in SOURCES:
        per = zeroshot.linear_probe_auroc(lat[f"train/{src}"], train.labels, lat[f"test/{src}"], y)
        probe[src] = {"per_label": per, "macro_all": zeroshot.macro(per), "macro_visible": zeroshot.macro(per, seen)}
    reps = test.scan_representatives()
    gallery_keys = [test.scan_ids[i] for i in reps]
    retrieval = {}
    for src in ("drr_student", "drr_untrained"):
        r = recall_at_k(lat[f"test/{src}"], test.ct[reps], test.scan_ids, gallery_keys, ks=(5,))
        retrieval[src] = r["recall@5"]
    known = y != 255
    positives = {n: int(((y[:, j] == 1) & known[:, j]).sum()) for j, n in enumerate(test.label_names)}
    summary = {
        "headline_prompts": HEADLINE,
        "prompt_sets": {
            name: (
                "per-label ensemble in the report vocabulary (data_manifests/label_prompts.json)"
                if name == REPORT_VOCAB
                else "paper template"
            )
            for name in lat["prompts"]
        },
        "held_out": {
            "radiographs": len(test),
            "scans": len(reps),
            "patients": len(set(test.patient_ids)),
            "positives_per_label": positives,
        },
        "train": {"radiographs": len(train), "scans": len(train.scan_representatives())},
        "visible_in_projection": {n: {"counted": v, "why": why} for n, (v, why) in visibility().items()},
        "visible_labels": seen,
        "zero_shot_auroc": zero_shot,
        "linear_probe_auroc": probe,
        "x2c_recall_at_5": {**retrieval, "chance": min(1.0, 5 / len(reps))},
        "student_run": str(p.student),
        "teacher": str(teacher),
        "teacher_provenance": _teacher_provenance(teacher),
    }
    return summary, {"y": y, "scores": scores, "lat": lat}


def _teacher_provenance(teacher: Path) -> dict | None:
    f = teacher / "provenance.json"
    return json.loads(f.read_text()) if f.is_file() else None


def table_text(summary: dict) -> str:
    """The summary as a plain-text table (per label: zero-shot x3 sources, probes, positives)."""
    zs, pb = summary["zero_shot_auroc"], summary["linear_probe_auroc"]
    h = summary["headline_prompts"]
    pos = summary["held_out"]["positives_per_label"]
    vis = summary["visible_in_projection"]

    def f(v):
        return "  n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:5.3f}"

    lines = [
        f"Zero-shot AUROC on {summary['held_out']['radiographs']} held-out radiographs "
        f"({summary['held_out']['patients']} patients never trained on); prompts: {h} (paper's 'There is {{p}}.' in [])",
        f"{'label':36s} {'vis':3s} {'pos':>4s} | {'DRR':>5s} {'[DRR]':>7s} {'CT':>5s} {'untr.':>5s} | "
        f"probe: {'DRR':>5s} {'CT':>5s} {'untr.':>5s}",
    ]
    for name in pos:
        lines.append(
            f"{name:36s} {'yes' if vis[name]['counted'] else ' - ':3s} {pos[name]:4d} | "
            f"{f(zs['drr_student'][h]['per_label'][name])} [{f(zs['drr_student']['x2ct_clip']['per_label'][name])}] "
            f"{f(zs['ct_teacher'][h]['per_label'][name])} {f(zs['drr_untrained'][h]['per_label'][name])} | "
            f"       {f(pb['drr_student']['per_label'][name])} {f(pb['ct_teacher']['per_label'][name])} "
            f"{f(pb['drr_untrained']['per_label'][name])}"
        )
    for key, title in (("macro_visible", "macro, visible in projection"), ("macro_all", "macro, all labels")):
        lines.append(
            f"{title:36s} {'':3s} {'':4s} | {f(zs['drr_student'][h][key])} [{f(zs['drr_student']['x2ct_clip'][key])}] "
            f"{f(zs['ct_teacher'][h][key])} {f(zs['drr_untrained'][h][key])} | "
            f"       {f(pb['drr_student'][key])} {f(pb['ct_teacher'][key])} {f(pb['drr_untrained'][key])}"
        )
    r = summary["x2c_recall_at_5"]
    lines.append(
        f"X->C Recall@5 (radiograph finds its own CT among {summary['held_out']['scans']} scans): trained "
        f"{r['drr_student']:.3f}, untrained {r['drr_untrained']:.3f}, chance {r['chance']:.3f}"
    )
    return "\n".join(lines)


def contact_sheet(split, n: int = 24, columns: int = 8) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(split))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    names = split.label_names
    for k in range(rows * columns):
        ax = axes[k // columns][k % columns]
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(split.read_image(k, "pa"), cmap="gray", vmin=0, vmax=1)
        found = [names[j] for j in range(len(names)) if split.labels[k, j] == 1]
        short = ", ".join(x.split()[0] for x in found[:3]) + ("..." if len(found) > 3 else "")
        ax.set_title(f"{split.volume_ids[k]}\n{short or 'no finding'}", fontsize=5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def loss_figure(student: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    keys = [k for k in ("loss", "loss_xr", "loss_xc") if any(k in r for r in train)]
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if k in r]
        ax.plot([a for a, _ in pts], [b for _, b in pts], label=k, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE")
    ax.set_title("student training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(p, summary: dict, arrays: dict, table: str) -> Path:
    from trainer.evaluation.plots import curves_figure
    from trainer.report_html import HtmlReport

    h = summary["headline_prompts"]
    seen = summary["visible_labels"]
    test = arrays["lat"]["test"]
    idx = [test.label_names.index(n) for n in seen]
    zs = summary["zero_shot_auroc"]
    report = HtmlReport("x2ct-pipeline demo: CT knowledge reaching simulated radiographs")
    report.paragraph(
        "A small CT-CLIP teacher (frozen) gave CT and report latents; a CXR encoder was trained on radiographs "
        "simulated from the CTs of new synthetic patients (L = L(X,R) + L(X,C)). All figures below are on "
        f"{summary['held_out']['patients']} held-out patients never seen in training."
    )
    report.heading("Summary")
    rows = []
    for n in test.label_names:
        rows.append(
            [
                n,
                "yes" if summary["visible_in_projection"][n]["counted"] else "no",
                summary["held_out"]["positives_per_label"][n],
                zs["drr_student"][h]["per_label"][n],
                zs["drr_student"]["x2ct_clip"]["per_label"][n],
                zs["ct_teacher"][h]["per_label"][n],
                zs["drr_untrained"][h]["per_label"][n],
                summary["linear_probe_auroc"]["drr_student"]["per_label"][n],
                summary["linear_probe_auroc"]["ct_teacher"]["per_label"][n],
            ]
        )
    for key, title in (("macro_visible", "macro (visible in projection)"), ("macro_all", "macro (all labels)")):
        rows.append(
            [
                title,
                "",
                "",
                zs["drr_student"][h][key],
                zs["drr_student"]["x2ct_clip"][key],
                zs["ct_teacher"][h][key],
                zs["drr_untrained"][h][key],
                summary["linear_probe_auroc"]["drr_student"][key],
                summary["linear_probe_auroc"]["ct_teacher"][key],
            ]
        )
    report.table(
        [
            "label",
            "visible",
            "positives",
            "zero-shot DRR",
            "DRR, 'There is {p}.'",
            "zero-shot CT (teacher)",
            "zero-shot untrained",
            "linear probe DRR",
            "linear probe CT",
        ],
        rows,
        caption=f"AUROC per label; zero-shot prompts: {h} (per-label ensemble), and the paper's template for DRRs",
    )
    r = summary["x2c_recall_at_5"]
    report.paragraph(
        f"X->C Recall@5: trained {r['drr_student']:.3f}, untrained {r['drr_untrained']:.3f}, "
        f"chance {r['chance']:.3f} ({summary['held_out']['scans']} CT scans)."
    )
    report.heading("Held-out simulated radiographs")
    report.figure(contact_sheet(test), caption="The first held-out DRRs (PA) with their CT-level labels")
    report.heading("ROC curves (labels visible in projection)")
    sources = {SOURCE_TITLES[s]: arrays["scores"][s][h][:, idx] for s in SOURCES}
    report.figure(
        curves_figure("roc", test.labels[:, idx], sources, seen, "zero-shot ROC, held-out patients", columns=5),
        caption="Zero-shot ROC per label: trained encoder on radiographs, teacher on CT, untrained encoder",
    )
    report.heading("Training")
    report.figure(loss_figure(p.student), caption="Student training loss (InfoNCE terms)")
    report.heading("Labels counted as visible in projection")
    report.table(
        ["label", "counted", "why"],
        [[n, "yes" if v["counted"] else "no", v["why"]] for n, v in summary["visible_in_projection"].items()],
    )
    report.heading("Text summary")
    report.paragraph(table, css_class="pre")  # the fixed-width table as printed: its columns need its spaces
    return report.write(p.report)


def write_summary(p, teacher: Path, cfg: DemoConfig) -> dict:
    from pipeline.runtime import atomic_write_text

    summary, arrays = compute(p, teacher)
    summary["config"] = cfg.model_dump(mode="json")
    table = table_text(summary)
    summary["table"] = table.splitlines()
    write_report(p, summary, arrays, table)
    summary["report"] = str(p.report)
    summary["evaluate_report"] = str(p.evaluate / "report.html")
    atomic_write_text(p.summary_json, json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)
