"""External validation on real radiographs (MIMIC-CT style sets, built by ``manifest cxr``).

Each radiograph of the CXR manifest is read like ``predict`` reads files
(:mod:`trainer.predict.radiograph`), encoded by the run, and scored zero-shot against the
run's prompt latents (``prompts.npz``, both prompt sets). There is no CT for these images,
so no CT upper bound and no retrieval; the metrics cover only the labels the set
annotates (the others are null in the manifest and left out, and listed). An image that
cannot be read is listed in ``failed_images`` and left out; the others are evaluated.
RadChest-CT style CT sets need none of this: ``manifest radchest`` -> ``simulate-drr`` ->
``embed-ct`` -> ``evaluate`` (labels outside RadChest-CT's mapping are null and left out).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from schemas.cxr import read_cxr_manifest
from schemas.embed import LABEL_MISSING
from trainer.encode import encode_images
from trainer.evaluation.stage import EvaluateError, evaluate_latents, write_outputs
from trainer.predict.radiograph import RadiographError, read_radiograph

log = logging.getLogger(__name__)

REAL_VIEW = "real"


def cxr_labels(rows) -> np.ndarray:
    """(N, 18) uint8 with the cache's convention: 1, 0, 255 = not annotated."""
    return np.array([[LABEL_MISSING if v is None else v for v in r.labels] for r in rows], dtype=np.uint8)


def evaluate_cxr_set(run, cfg, device) -> dict[str, Any]:
    manifest = Path(cfg.cxr_manifest)
    rows = read_cxr_manifest(manifest)
    images, kept, failed = [], [], []
    for r in rows:
        try:
            images.append(read_radiograph(r.resolved_path(manifest.parent)).image)
            kept.append(r)
        except RadiographError as e:
            failed.append(str(e))
            log.warning("%s", e)
    if not kept:
        raise EvaluateError(f"no radiograph of {manifest} could be read ({failed[0]}); check the image paths")
    x = encode_images(run.encoder, run.eval_transform, images, cfg.batch_size, device)
    labels = cxr_labels(kept)
    ids = [r.image_id for r in kept]
    results, probs = evaluate_latents(
        {REAL_VIEW: x}, None, None, labels, [r.patient_id for r in kept], ids, ids, run.prompts,
        run.temperature, list(run.label_names), cfg.labels, cfg.threshold, cfg.n_resamples, cfg.seed,
    )  # fmt: skip
    results["failed_images"] = failed
    meta = {
        "run": str(cfg.run),
        "checkpoint": str(run.checkpoint),
        "cxr_manifest": str(manifest),
        "config": cfg.model_dump(mode="json"),
    }
    write_outputs(Path(cfg.out), results, probs, labels, list(run.label_names), meta)
    return results
