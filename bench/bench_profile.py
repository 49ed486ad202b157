"""Where the time goes, per volume, in each data stage: its parts timed one after another.

    python bench/bench_profile.py --ct FILE --out out/bench/profile --json out/bench/profile.json

One full-size CT (``--ct``, default the CT-like 512 x 512 x 300 file), one thread (as a
Dask worker of simulate-drr or a decode worker of embed-ct runs), median of ``--repeats``:

* simulate-drr (cone PA + lateral 512, the default geometry; and parallel PA): **read** (the
  gzip file from the page cache), **inflate**, **convert** (the rest of ``load_ct``: scaling,
  padding, air and finite checks, orientation), **resample** (``axis_aligned``: zero for an
  axis-aligned volume, as CT-RATE's are), **project** (per view), **post** (display image,
  noise, uint16), **write** (the item into a Zarr store, as the stage writes it);
* embed-ct: **decode** (``load_ct``), **preprocess** (clip, resample to 0.75 x 0.75 x 1.5 mm,
  crop/pad to 480 x 480 x 240), **forward** (``encode_ct`` of the official-size encoder,
  random weights, fp32; ``--no-forward`` leaves it out, the ``ctclip`` benchmark measures it
  with more rounds), **commit** (one row of the HDF5 cache: milliseconds, not timed here).

Plus a torch profile of one cone-beam PA projection by op, to show what bounds the projector.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def drr_parts(ct_path: Path, work: Path, repeats: int) -> dict:
    import nibabel as nib
    import numpy as np
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.drr.geometry import axis_aligned, unflipped
    from pipeline.drr.render import line_integrals, render_volume
    from pipeline.drr.store import create_store, write_item
    from pipeline.inflate import gunzip
    from schemas.drr import DRRRenderConfig, DRRStoreLayout
    from schemas.labels import N_LABELS
    from schemas.manifest import ManifestRow
    from schemas.provenance import Provenance

    read_s, data = _median(lambda: ct_path.read_bytes(), repeats)
    img = nib.load(str(ct_path))
    need = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    inflate_s, _ = _median(lambda: gunzip(data, need), repeats)
    load_s, ct = _median(lambda: load_ct(ct_path), repeats)
    hu, affine = unflipped(ct.hu, ct.affine)
    vol = torch.from_numpy(hu)
    resample_s, _ = _median(lambda: axis_aligned(vol, affine), repeats)
    out = {}
    for name, render in {
        "cone PA + lateral": {"views": ["pa", "lateral"]},
        "parallel PA": {"views": ["pa"], "geometry": {"projection": "parallel"}},
    }.items():
        cfg = DRRRenderConfig.model_validate(render)
        project_s, proj = _median(lambda cfg=cfg: line_integrals(vol, affine, cfg), repeats)
        post_s, rendered = _median(
            lambda cfg=cfg, proj=proj: render_volume(hu, affine, cfg, projections=proj, volume_id="v"), repeats
        )
        layout = DRRStoreLayout(n_items=1, views=cfg.views, size=cfg.geometry.size, line_integrals=False)
        row = ManifestRow(
            volume_id="valid_1_a_1", patient_id="valid_1", scan_id="valid_1_a", reconstruction_id="valid_1_a_1",
            split="valid", ct_path=str(ct_path), labels=[0] * N_LABELS,
        )  # fmt: skip
        store = work / f"profile-{len(cfg.views)}-{cfg.geometry.projection}.zarr"
        if not store.exists():
            create_store(
                store,
                layout,
                [row],
                Provenance(stage="simulate-drr", software_version="bench", config={}, config_sha256="bench"),
            )
        write_s, _ = _median(lambda store=store, r=rendered: write_item(str(store), 0, r.images, None), repeats)
        out[f"simulate-drr, {name}"] = {
            "read": read_s,
            "inflate": inflate_s,
            "convert": max(0.0, load_s - read_s - inflate_s),
            "resample": resample_s,
            "project": project_s,
            "post": post_s,
            "write": write_s,
        }
    return out


def embed_parts(ct_path: Path, repeats: int, forward: bool) -> dict:
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.preprocess import preprocess_ct

    cfg = get_config("official")
    decode_s, ct = _median(lambda: load_ct(ct_path), repeats)
    pre_s, x = _median(lambda: preprocess_ct(ct, cfg), repeats)
    parts = {"decode": decode_s, "preprocess": pre_s}
    if forward:
        from pipeline.ctclip.model import CTCLIP

        model = CTCLIP(cfg)
        with torch.inference_mode():
            model.encode_ct(x[None], "fp32")  # warm-up
            parts["forward"], _ = _median(lambda: model.encode_ct(x[None], "fp32"), max(1, repeats // 2))
    return {"embed-ct (official encoder, fp32)": parts}


def projector_ops(ct_path: Path) -> list:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.ct_io import load_ct
    from pipeline.drr.geometry import plan_projection, unflipped
    from pipeline.drr.physics import voxel_transform
    from pipeline.drr.projector import project
    from schemas.drr import DRRRenderConfig, GeometryConfig

    ct = load_ct(ct_path)
    hu, affine = unflipped(ct.hu, ct.affine)
    vol = torch.from_numpy(hu)
    plan = plan_projection(vol.shape, affine, "pa", GeometryConfig())
    transform = voxel_transform(DRRRenderConfig())
    project(vol, plan, transform)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        project(vol, plan, transform)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total} for e in top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("out/bench/profile"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-forward", action="store_true", help="leave the CT-CLIP forward pass out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"load_before": os.getloadavg(), "threads": args.threads, "ct": str(args.ct)}

    def save() -> None:  # after each part: a stopped run keeps what it measured
        res["load_after"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))

    res["stages"] = drr_parts(args.ct, args.out, args.repeats)
    save()
    res["projector_ops_cone_pa"] = projector_ops(args.ct)
    save()
    res["stages"].update(embed_parts(args.ct, args.repeats, not args.no_forward))
    save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
