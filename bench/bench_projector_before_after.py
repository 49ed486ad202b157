"""The projector of this checkout against the projector of another (the code before a change),
side by side in one process, on a full-size CT: time (median of --repeats, the two interleaved
so that a busy machine weighs on both alike) and the largest difference of the line integrals.

    git archive COMMIT | tar -x -C /tmp/before
    python bench/bench_projector_before_after.py --before /tmp/before --ct CT.nii.gz --json out.json

The volume goes through ``load_ct`` and ``unflipped`` as in the stage (a NIfTI volume stays in
its file's memory order, Fortran-ordered), and again as a C-ordered copy. Cone-beam PA and
lateral, parallel-beam PA, 512 x 512 detector, one torch thread (as a Dask worker runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_before(root: Path):
    """``pipeline/drr/projector.py`` of another checkout as a module of its own (its imports resolve
    to this checkout's modules: the geometry's ProjectionPlan is shared)."""
    spec = importlib.util.spec_from_file_location("projector_before", root / "pipeline" / "drr" / "projector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the code before the change")
    ap.add_argument("--ct", type=Path, default=None, help="default: the CT-like 512 x 512 x 300 file (made once)")
    ap.add_argument("--work", type=Path, default=Path("out/bench/projector"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from bench.ct_like import write_ct_like
    from pipeline.ct_io import load_ct
    from pipeline.drr import projector as after
    from pipeline.drr.geometry import axis_aligned, plan_projection, unflipped
    from pipeline.drr.physics import voxel_transform
    from schemas.ct import CTLoadConfig
    from schemas.drr import DRRRenderConfig

    torch.set_num_threads(1)
    before = load_before(args.before)
    args.work.mkdir(parents=True, exist_ok=True)
    ct_path = args.ct or write_ct_like(args.work / "ct_like_512x512x300.nii.gz")
    ct = load_ct(ct_path, CTLoadConfig())
    hu, affine = unflipped(ct.hu, ct.affine)
    file_order, affine = axis_aligned(torch.as_tensor(hu, dtype=torch.float32), affine)
    volumes = {"file order": file_order, "C order": file_order.contiguous()}
    res: dict = {
        "load_before": os.getloadavg(),
        "ct": str(ct_path),
        "shape": list(file_order.shape),
        "threads": 1,
        "repeats": args.repeats,
        "before": str(args.before),
        "cases": [],
    }
    for projection, views in (("cone", ("pa", "lateral")), ("parallel", ("pa",))):
        cfg = DRRRenderConfig.model_validate({"geometry": {"projection": projection, "size": args.size}})
        transform = voxel_transform(cfg)
        for order, vol in volumes.items():
            for view in views:
                plan = plan_projection(vol.shape, affine, view, cfg.geometry)
                times: dict[str, list[float]] = {"before": [], "after": []}
                out = {}
                for _ in range(args.repeats):
                    for name, module in (("before", before), ("after", after)):
                        t = time.perf_counter()
                        out[name] = module.project(vol, plan, transform, slab=cfg.slab)
                        times[name].append(time.perf_counter() - t)
                diff = (out["after"] - out["before"]).abs().max().item()
                scale = out["before"].abs().max().item()
                case = {
                    "projection": projection,
                    "view": view,
                    "memory_order": order,
                    "before_s": statistics.median(times["before"]),
                    "after_s": statistics.median(times["after"]),
                    "max_abs_diff": diff,
                    "max_rel_diff": diff / scale,
                    "max_line_integral": scale,
                }
                case["speedup"] = case["before_s"] / case["after_s"]
                res["cases"].append(case)
                print(
                    f"{projection} {view} {order}: before {case['before_s']:.3f} s, after {case['after_s']:.3f} s "
                    f"({case['speedup']:.2f}x), max |diff| {diff:.2e} (relative {diff / scale:.1e})",
                    flush=True,
                )
    res["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
