"""``x2ct-pipeline predict``: zero-shot scores of real radiographs from a trained run.

Each file is read into the display image (:mod:`trainer.predict.radiograph`), passed
through the run's ``eval_transform`` and encoder, and scored against the run's prompt
latents (``prompts.npz``; :mod:`trainer.evaluation.zeroshot`): one P(positive prompt) per
label. With a cache, the CT volumes whose CT-CLIP latents are most similar to the radiograph's
latent (X->C retrieval) are listed too. A file that cannot be read (or is not a single 2-D
radiograph) gets its error on its own row; the others are scored.

These are zero-shot scores of a research model, not calibrated probabilities of disease:
the output says so on every row (CSV) or at its head (JSON).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime import atomic_write_text
from schemas.errors import ItemsFailedError, PipelineError
from trainer.encode import encode_images
from trainer.evaluation.zeroshot import l2_normalise, zero_shot_probabilities
from trainer.predict.radiograph import Radiograph, RadiographError, read_radiograph
from trainer.teacher_match import check_teacher

log = logging.getLogger(__name__)

NOTE = (
    "zero-shot scores (softmax over a positive and a negative prompt) of a research model: "
    "not calibrated probabilities of disease, not a diagnosis"
)


CSV_FIRST = ["file", "status", "error", "format"]  # the first columns of the CSV table (how it is recognised)


class PredictError(PipelineError):
    """The run, the cache or the output cannot be used as asked."""


def list_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders walked recursively in sorted order (hidden names skipped)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
            )
        else:
            out.append(p)  # a missing file becomes an error row
    return out


def predict_files(
    run,
    paths: list[Path],
    prompt_set: str = "x2ct_clip",
    cache=None,
    cache_path: Path | None = None,
    top_k: int = 5,
    keep_identifiers: bool = False,
    batch_size: int = 16,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One row per path: ``file``, ``status`` ('ok' or 'error'), ``error``, ``format``, DICOM
    attributes, ``scores`` {label: P}, and with a cache ``similar_ct`` [{volume_id, cosine}]."""
    if prompt_set not in run.prompts:
        raise PredictError(f"the run has no prompt set {prompt_set!r} (has {sorted(run.prompts)}); choose one of them")
    if cache is not None:
        check_teacher(run, cache.ct.shape[1], cache.identity.checkpoint_sha256, cache_path or Path("(cache)"))
        gallery = l2_normalise(cache.ct)
    rows: list[dict[str, Any]] = []
    readable: list[tuple[int, Radiograph]] = []
    for path in paths:
        row: dict[str, Any] = {"file": str(path), "status": "ok", "error": "", "format": "", "note": NOTE}
        try:
            rg = read_radiograph(path, keep_identifiers=keep_identifiers)
            row["format"] = rg.kind
            row.update(rg.meta)
            readable.append((len(rows), rg))
        except RadiographError as e:
            row.update(status="error", error=str(e))
            log.debug("%s", e)  # the row says it; the command lists the first failures
        rows.append(row)
    pos, neg = run.prompts[prompt_set]["positive"], run.prompts[prompt_set]["negative"]
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        try:
            z = encode_images(run.encoder, run.eval_transform, [rg.image for _, rg in chunk], batch_size, device)
        except Exception as e:  # one unusable image must not lose the batch: retry one by one
            log.warning("batch failed (%s); scoring its images one by one", e)
            z = None
        for k, (i, rg) in enumerate(chunk):
            try:
                zi = (
                    z[k : k + 1]
                    if z is not None
                    else encode_images(run.encoder, run.eval_transform, [rg.image], 1, device)
                )
            except Exception as e:
                rows[i].update(status="error", error=f"{rows[i]['file']}: the encoder could not score it ({e})")
                continue
            p = zero_shot_probabilities(zi, pos, neg, float(np.exp(run.temperature)))[0]
            if not np.isfinite(p).all():  # never a NaN score under status "ok"
                rows[i].update(status="error", error=f"{rows[i]['file']}: the run gave non-finite scores for it")
                continue
            rows[i]["scores"] = {name: float(v) for name, v in zip(run.label_names, p)}
            if cache is not None:
                sims = gallery @ l2_normalise(zi)[0]
                top = np.argsort(-sims, kind="stable")[:top_k]
                rows[i]["similar_ct"] = [{"volume_id": cache.ids[j], "cosine": float(sims[j])} for j in top]
    return rows


def write_rows(rows: list[dict[str, Any]], out: Path, label_names: list[str], meta: dict[str, Any]) -> None:
    """CSV (one flat row per file; the note in a column) or JSON (the note and run at the head)."""
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps({"note": NOTE, **meta, "predictions": rows}, indent=2) + "\n")
        return
    extra = sorted(
        {k for r in rows for k in r if k not in ("file", "status", "error", "format", "note", "scores", "similar_ct")}
    )
    k = max((len(r.get("similar_ct", [])) for r in rows), default=0)
    header = [*CSV_FIRST, *extra, *label_names]
    for j in range(1, k + 1):
        header += [f"similar_ct_{j}", f"similar_ct_{j}_cosine"]
    header.append("note")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = {key: r.get(key, "") for key in header}
        flat.update({name: f"{v:.6f}" for name, v in r.get("scores", {}).items()})
        for j, hit in enumerate(r.get("similar_ct", []), start=1):
            flat[f"similar_ct_{j}"], flat[f"similar_ct_{j}_cosine"] = hit["volume_id"], f"{hit['cosine']:.6f}"
        w.writerow(flat)
    atomic_write_text(out, buf.getvalue())


def is_predict_table(path: Path) -> bool:
    """True for a table that ``write_rows`` wrote (its header, or its JSON head with the note)."""
    try:
        if path.suffix.lower() == ".json":
            head = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(head, dict) and head.get("note") == NOTE and "predictions" in head
        with path.open(encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
        return first.startswith(",".join(CSV_FIRST) + ",") and first.endswith(",note")
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def check_out(out: Path) -> None:
    """``--out`` may name nothing yet, or a table an earlier predict wrote (replaced); any other file
    (a manifest, someone's CSV, a folder, a device) is left as it is and the run refused before any work."""
    from pipeline.runtime import make_folder

    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise PredictError(f"{out} exists and is not a regular file; give a new .csv or .json path as --out")
        if not is_predict_table(out):
            raise PredictError(
                f"{out} exists and is not a table of predict (which it would replace); it is left as it is: "
                "choose another --out, or move the file away"
            )
    make_folder(out.parent, out)


def run_predict(cfg) -> list[dict[str, Any]]:
    """The command: load the run (and cache), score every input, write ``cfg.out``."""
    from pipeline.devices import resolve_device
    from trainer.run import load_run

    device = resolve_device(cfg.device)  # --device cuda without a GPU: refused before any work
    check_out(cfg.out)
    run = load_run(cfg.run, checkpoint=cfg.checkpoint)
    cache = None
    if cfg.embeddings is not None:
        from pipeline.embed.reader import load_embeddings

        cache = load_embeddings(cfg.embeddings)
    paths = list_inputs(cfg.inputs)
    if not paths:
        raise PredictError(f"no files found in {', '.join(map(str, cfg.inputs))}; give radiograph files or folders")
    rows = predict_files(
        run, paths, cfg.prompt_set, cache, cfg.embeddings, cfg.top_k, cfg.keep_identifiers, cfg.batch_size, str(device)
    )
    meta = {"run": str(cfg.run), "checkpoint": str(cfg.checkpoint), "prompt_set": cfg.prompt_set}
    write_rows(rows, cfg.out, list(run.label_names), meta)
    if not any(r["status"] == "ok" for r in rows):
        raise ItemsFailedError(
            f"no radiograph could be scored ({rows[0]['error']}); every row of {cfg.out} is an error"
        )
    return rows
