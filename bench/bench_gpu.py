"""The GPU figures in one script: rendering, embed-ct, a training step (run where CUDA is).

    python bench/bench_gpu.py --device cuda --json gpu.json          # the real figures, ~5 minutes
    python bench/bench_gpu.py --device cpu --quick --json gpu.json   # a smoke test of this script

Every part runs on its own (a failure is recorded and the rest go on); times are medians
after warm-up, with ``torch.cuda.synchronize`` around each call:

* **render**: a 512 x 512 x 300 CT-like volume already on the device (HU, LPS, 0.7 x 0.7 x 1 mm);
  ``line_integrals`` for cone-beam PA at 256 x 256 and 512 x 512 and parallel PA at 256:
  DRRs per second (goal on an H100-class GPU: >= 1000 per second at 256 x 256);
* **stage_item**: one volume the way a simulate-drr task does it on a GPU machine: ``load_ct``
  (CPU, one thread) of a CT-like file, to the device, PA + lateral 512, display images back;
* **embed**: the official-size CT-CLIP image encoder (random weights) on the device, fp32 and
  bf16, batch 1 and 4: volumes per second; beside it ``load_ct`` + CT-CLIP preprocessing of a
  full-size file on one CPU core, so ``decode_volumes_per_s_per_core x cores`` says whether
  embed-ct is bound by decoding (the goal) or by the model;
* **train**: one optimiser step of the default encoder (ViT-B/16, 224 x 224, random init) with
  the tri-modal loss on random targets, bf16 autocast, batch 64 (quick: the tiny encoder):
  images per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, device, repeats: int, warmup: int = 2) -> float:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ct_like_tensor(shape, device):
    """HU volume (LPS) with air, a body, lungs and noise, made on the device."""
    import torch

    nx, ny, nz = shape
    x = torch.linspace(-1, 1, nx, device=device)[:, None, None]
    y = torch.linspace(-1, 1, ny, device=device)[None, :, None]
    body = (x / 0.78) ** 2 + (y / 0.55) ** 2 <= 1
    lung = body & (x.abs() > 0.12) & (x.abs() < 0.66) & ((y / 0.36) ** 2 < 1)
    hu = torch.full(shape, -1000.0, device=device)
    hu = torch.where(body, torch.tensor(40.0, device=device), hu)
    hu = torch.where(lung, torch.tensor(-850.0, device=device), hu)
    return hu + 15.0 * torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0))


def bench_render(device, quick: bool, repeats: int) -> dict:
    import numpy as np

    from pipeline.ct_io import affine_from_spacing
    from pipeline.drr.render import line_integrals
    from schemas.drr import DRRRenderConfig

    shape = (96, 96, 64) if quick else (512, 512, 300)
    spacing = (0.7, 0.7, 1.0) if not quick else (3.5, 3.5, 4.5)
    hu = ct_like_tensor(shape, device)
    affine = affine_from_spacing(spacing)
    out = {"volume": list(shape)}
    for name, render in {
        "cone_pa_256": {"geometry": {"size": 256}},
        "cone_pa_512": {"geometry": {"size": 512}},
        "parallel_pa_256": {"geometry": {"size": 256, "projection": "parallel"}},
    }.items():
        cfg = DRRRenderConfig.model_validate({"views": ["pa"], **render})
        s = _timed(lambda cfg=cfg: line_integrals(hu, affine, cfg), device, repeats)
        out[f"{name}_s"], out[f"{name}_drrs_per_s"] = s, 1.0 / s
    out["finite"] = bool(np.isfinite(line_integrals(hu, affine, DRRRenderConfig())[0].cpu().numpy()).all())
    return out


def bench_stage_item(device, quick: bool, repeats: int, work: Path) -> dict:
    import torch

    from bench.ct_like import write_ct_like
    from pipeline.ct_io import load_ct
    from pipeline.drr.render import render_volume
    from schemas.drr import DRRRenderConfig

    torch.set_num_threads(1)
    ct_path = write_ct_like(work / "ct_like.nii.gz", (128, 128, 80) if quick else (512, 512, 300))
    cfg = DRRRenderConfig.model_validate({"views": ["pa", "lateral"]})
    load_s = _timed(lambda: load_ct(ct_path), torch.device("cpu"), repeats, 1)
    ct = load_ct(ct_path)
    render_s = _timed(lambda: render_volume(ct.hu, ct.affine, cfg, device, "v"), device, repeats)
    return {"load_ct_s": load_s, "render_pa_lateral_512_s": render_s, "items_per_s_one_core": 1 / (load_s + render_s)}


def bench_embed(device, quick: bool, repeats: int, work: Path) -> dict:
    import torch

    from bench.ct_like import write_ct_like
    from pipeline.ct_io import load_ct
    from pipeline.ctclip.model import CTCLIP
    from pipeline.ctclip.preprocess import preprocess_ct

    name = "tiny" if quick else "official"
    model = CTCLIP(name).to(device).eval()
    d, h, w = model.cfg.preprocess.shape[2], model.cfg.preprocess.shape[0], model.cfg.preprocess.shape[1]
    out: dict = {"model": name, "input": [d, h, w]}
    with torch.inference_mode():
        for batch in (1, 4):
            x = torch.rand(batch, 1, d, h, w, device=device) * 2 - 1
            for prec in ("fp32", "bf16"):
                s = _timed(lambda x=x, prec=prec: model.encode_ct(x, prec), device, repeats)
                out[f"{prec}_batch{batch}_volumes_per_s"] = batch / s
    torch.set_num_threads(1)
    ct_path = write_ct_like(work / "ct_like.nii.gz", (128, 128, 80) if quick else (512, 512, 300))
    decode_s = _timed(lambda: preprocess_ct(load_ct(ct_path), model.cfg), torch.device("cpu"), max(1, repeats // 2), 1)
    out["decode_s_one_core"] = decode_s
    out["decode_volumes_per_s_per_core"] = 1 / decode_s
    cores = os.cpu_count() or 1
    best = max(v for k, v in out.items() if k.endswith("volumes_per_s") and "batch" in k)
    out["cores"] = cores
    out["bound_by"] = "decoding" if (cores - 1) / decode_s < best else "the model"
    return out


def bench_train(device, quick: bool, repeats: int) -> dict:
    import torch

    from trainer.encoder import build_encoder, resolve_encoder
    from trainer.loss import LogitScale, TriModalLoss

    name, size, batch, dim = ("tiny", 64, 8, 32) if quick else ("vit-b-16", 224, 64, 512)
    model = build_encoder(resolve_encoder(name, dim, size)).to(device).train()
    scale = LogitScale(math.log(1 / 0.07), True).to(device)  # holds the log of the logit scale
    loss_fn = TriModalLoss(0.0, 1.0, 1.0)
    opt = torch.optim.AdamW([*model.parameters(), *scale.parameters()], lr=1e-5)
    images = torch.randn(batch, 3, size, size, device=device)
    ct = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1)
    report = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            z = model(images)
        loss, _ = loss_fn(z, ct, report, scale())
        loss.backward()
        opt.step()

    s = _timed(step, device, repeats)
    return {"encoder": name, "image_size": size, "batch": batch, "step_s": s, "images_per_s": batch / s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the GPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parts", default="render,stage_item,embed,train")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    device = torch.device(args.device)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    res["torch"], res["load_before"] = torch.__version__, os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="x2ct-gpu-"))
    parts = {
        "render": lambda: bench_render(device, args.quick, args.repeats),
        "stage_item": lambda: bench_stage_item(device, args.quick, args.repeats, work),
        "embed": lambda: bench_embed(device, args.quick, args.repeats, work),
        "train": lambda: bench_train(device, args.quick, args.repeats),
    }
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            res[name] = parts[name]()
        except Exception:
            res[name] = {"error": traceback.format_exc()[-2000:]}
        res[name]["part_s"] = time.perf_counter() - t
        print(name, json.dumps(res[name], default=str), flush=True)
    res["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
