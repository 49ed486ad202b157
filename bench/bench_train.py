"""Training throughput on this machine (CPU): the step, the data loader, and the cached design
against computing the CT-CLIP targets online.

    python bench/bench_train.py --out /tmp/bench-train --json train.json [--quick]

1. **Step** (forward + backward + gradient clipping + AdamW) of the CXR encoder on random
   images of its input size, images/s (median of the timed steps after warm-up): the tiny
   encoder (64 px) and Swin-T (224 px), fp32 and, where the CPU has bf16 (avx512_bf16 or
   AMX), bf16 autocast.
2. **Loader** alone (``trainer.data.TrainDataset`` + ``ScanBatchSampler`` through a
   DataLoader, training augmentation to 224 px, from a simulate-drr store of real-size
   512 x 512 DRRs made here: synth -> manifest -> simulate-drr) at 0, 1, 2 and the default
   number of workers, images/s; and **loader + Swin-T step** together at the default worker
   count against the step alone (the loader is the bottleneck if together is clearly slower).
3. **Cached vs online targets**: the frozen CT-CLIP's cost per training sample (one CT volume
   through the image encoder at the official 480 x 480 x 240 input, one 512-token report
   through BERT; random weights, the speed does not depend on them) against the Swin-T step
   per sample, measured in the same run. With the cache a step reads B rows of latents
   (timed too); online it would run CT-CLIP on B volumes and B reports as well. The ratio
   leaves out decoding the CT (1-2 s a volume more for the online design). ``--quick``
   uses the tiny CT-CLIP config instead, so its ratio says nothing about the official size.

The machine is shared: the 1-minute load average is recorded before and after; steps run
with ``--threads`` torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_has_bf16() -> bool:
    from trainer.train import cpu_has_bf16 as check

    return check()


def time_steps(encoder_name: str, batch: int, precision: str, n: int, warmup: int = 2) -> float:
    """Median seconds of one optimiser step on random input."""
    import torch

    from trainer.encoder import build_encoder, resolve_encoder
    from trainer.loss import TriModalLoss

    spec = resolve_encoder(encoder_name, 512)
    torch.manual_seed(0)
    enc = build_encoder(spec).train()
    opt = torch.optim.AdamW(enc.parameters(), lr=5e-5, betas=(0.9, 0.99), weight_decay=1e-4)
    loss_fn = TriModalLoss(0.0, 1.0, 1.0)
    x = torch.randn(batch, 3, spec.image_size, spec.image_size)
    ct = torch.nn.functional.normalize(torch.randn(batch, 512), dim=-1)
    rep = torch.nn.functional.normalize(torch.randn(batch, 512), dim=-1)
    scale = torch.tensor(14.3)
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            z = enc(x)
        loss, _ = loss_fn(z, ct, rep, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 0.5)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_store(work: Path, n: int) -> Path:
    """synth -> manifest -> simulate-drr: a store of n volumes' real-size (512 px) PA DRRs."""
    store = work / "drr.zarr"
    if store.exists():
        return store
    py = [sys.executable, "-m", "pipeline"]
    synth = work / "ct-rate"
    run = dict(cwd=ROOT, check=True, capture_output=True)
    subprocess.run(
        [*py, "synth", "--out", synth, "--n", str(n), "--size", "64", "--valid-fraction", "0", "--no-progress"], **run
    )
    subprocess.run([*py, "manifest", "ct-rate", "--root", synth, "--split", "train", "--out", work / "m.jsonl"], **run)
    subprocess.run(
        [*py, "simulate-drr", "--manifest", work / "m.jsonl", "--out", store, "--size", "512", "--workers", "1"],
        **run,
    )
    return store


def store_split(store: Path):
    """A JoinedSplit over the store's finished items with random latents (the join is not timed)."""
    import numpy as np
    import zarr

    from pipeline.drr.store import read_status
    from trainer.data import JoinedSplit

    group = zarr.open_group(str(store), mode="r")
    done = np.flatnonzero(read_status(group) == 1)
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((len(done), 512)).astype(np.float32)
    lat /= np.linalg.norm(lat, axis=1, keepdims=True)
    ids = [str(group["ids"][int(i)]) for i in done]
    return JoinedSplit(
        store_path=store,
        cache_path=store,
        views=["pa"],
        view_index=[0],
        volume_ids=ids,
        scan_ids=ids,
        patient_ids=ids,
        store_rows=done.astype(np.int64),
        labels=np.zeros((len(done), 18), np.uint8),
        ct=lat,
        report=lat.copy(),
        temperature=2.66,
        prompts={},
        label_names=[],
        identity={},
        image_size=512,
    )


def loader(split, batch: int, workers: int, n_batches: int):
    import torch

    from schemas.train import AugmentConfig
    from trainer.data import ScanBatchSampler, TrainDataset
    from trainer.encoder import resolve_encoder
    from trainer.transforms import TrainTransform

    spec = resolve_encoder("swin-t", 512)
    ds = TrainDataset(split, TrainTransform(spec, AugmentConfig()))
    # many "scans" reusing the store's items, so one epoch holds n_batches batches
    groups = [[i % len(split)] for i in range(batch * n_batches)]
    sampler = ScanBatchSampler(groups, batch)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None
    )


def time_loader(split, batch: int, workers: int, n_batches: int) -> float:
    """Images/s of the loader alone, from the first batch received (worker start-up left out)."""
    it = iter(loader(split, batch, workers, n_batches + 1))
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return batch * n_batches / (time.perf_counter() - t0)


def time_loader_and_step(split, batch: int, workers: int, n_batches: int) -> float:
    """Images/s of Swin-T steps fed by the loader (the training loop's inner part)."""
    import torch

    from trainer.encoder import build_encoder, resolve_encoder
    from trainer.loss import TriModalLoss

    enc = build_encoder(resolve_encoder("swin-t", 512)).train()
    opt = torch.optim.AdamW(enc.parameters(), lr=5e-5)
    loss_fn = TriModalLoss(0.0, 1.0, 1.0)
    it = iter(loader(split, batch, workers, n_batches + 1))
    t0 = None
    for i in range(n_batches + 1):
        b = next(it)
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(enc(b["image"]), b["ct"], b["report"], torch.tensor(14.3))
        loss.backward()
        opt.step()
        if i == 0:
            t0 = time.perf_counter()  # after the first (warm-up) step
    assert t0 is not None
    return batch * n_batches / (time.perf_counter() - t0)


def time_teacher(config: str, n: int) -> dict[str, float]:
    """Median seconds per sample of the frozen CT-CLIP: one volume, one 512-token report."""
    import torch

    from pipeline.ctclip.model import CTCLIP

    torch.manual_seed(0)
    model = CTCLIP(config).eval()
    cfg = model.cfg
    x, y, z = cfg.preprocess.shape  # the encoder's input is (1, z, x, y)
    d, h, w = z, x, y
    vol = torch.randn(1, 1, d, h, w).clamp_(-1, 1)
    length = min(512, cfg.text.max_position_embeddings)
    ids = torch.randint(5, cfg.text.vocab_size, (1, length))
    ids[0, 0] = 2
    mask = torch.ones_like(ids)
    ct, txt = [], []
    for i in range(n + 1):
        t0 = time.perf_counter()
        model.encode_ct(vol)
        t1 = time.perf_counter()
        model.encode_text(ids, mask)
        t2 = time.perf_counter()
        if i:  # the first call builds caches (position bias)
            ct.append(t1 - t0)
            txt.append(t2 - t1)
    return {"ct_s": statistics.median(ct), "text_s": statistics.median(txt), "input": [d, h, w]}


def time_cache_lookup(batch: int, rows: int = 50_000, n: int = 200) -> float:
    """Seconds to gather B random rows of CT and report latents from an in-memory cache."""
    import numpy as np
    import torch

    ct = np.random.default_rng(0).standard_normal((rows, 512)).astype(np.float32)
    rep = ct.copy()
    idx = np.random.default_rng(1).integers(0, rows, (n, batch))
    t0 = time.perf_counter()
    for row in idx:
        torch.from_numpy(ct[row]), torch.from_numpy(rep[row])
    return (time.perf_counter() - t0) / n


def run(quick: bool, out: Path | None = None, threads: int = 1) -> dict:
    import tempfile

    import torch

    # One torch thread by default: on a shared, oversubscribed machine OpenMP's spinning threads
    # made 2-thread steps 10-100x slower than 1-thread ones (the loader's workers use 1 each).
    torch.set_num_threads(threads)
    from schemas.train import TrainConfig

    out = out or Path(tempfile.mkdtemp(prefix="bench-train-"))
    out.mkdir(parents=True, exist_ok=True)
    r: dict = {"load_before": load(), "torch_threads": torch.get_num_threads(), "quick": quick}
    repeats, warmup = (2, 1) if quick else (7, 2)
    bf16 = cpu_has_bf16()
    r["cpu_bf16"] = bf16
    swin_batch = 2 if quick else 16
    for name, batch in (("tiny", 32), ("swin-t", swin_batch)):
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            s = time_steps(name, batch, precision, repeats, warmup)
            r[f"step_{name}_{precision}_batch"] = batch
            r[f"step_{name}_{precision}_images_per_s"] = round(batch / s, 2)
    default_workers = TrainConfig.model_fields["workers"].default
    store = make_store(out, 4 if quick else 32)
    split = store_split(store)
    n_batches = 2 if quick else 12
    # quick (a smoke test): each loader worker count starts its own processes, so only 0 and the default
    for workers in sorted({0, default_workers} if quick else {0, 1, 2, default_workers}):
        r[f"loader_workers{workers}_images_per_s"] = round(time_loader(split, swin_batch, workers, n_batches), 2)
    r["loader_plus_swin_t_step_images_per_s"] = round(
        time_loader_and_step(split, swin_batch, default_workers, n_batches), 2
    )
    r["swin_t_step_alone_images_per_s"] = r["step_swin-t_fp32_images_per_s"]
    r["default_workers"] = default_workers

    teacher = time_teacher("tiny" if quick else "official", 1 if quick else 2)
    r["teacher_config"] = "tiny" if quick else "official"
    r["teacher_input_dhw"] = "x".join(map(str, teacher["input"]))
    r["teacher_ct_s_per_sample"] = round(teacher["ct_s"], 3)
    r["teacher_text_s_per_sample"] = round(teacher["text_s"], 3)
    student = 1.0 / r["step_swin-t_fp32_images_per_s"]  # seconds per sample of the Swin-T step
    lookup = time_cache_lookup(swin_batch) / swin_batch
    r["cached_lookup_s_per_sample"] = lookup
    r["student_step_s_per_sample"] = round(student, 4)
    cached = student + lookup
    online = student + teacher["ct_s"] + teacher["text_s"]
    r["online_over_cached_per_step"] = round(online / cached, 1)
    if bf16:  # the same teacher against the bf16 student step of this run
        student_bf16 = 1.0 / r["step_swin-t_bf16_images_per_s"]
        r["online_over_cached_per_step_bf16_student"] = round(
            (student_bf16 + teacher["ct_s"] + teacher["text_s"]) / (student_bf16 + lookup), 1
        )
    r["load_after"] = load()
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="work folder (DRR store)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="small sizes, tiny CT-CLIP: a smoke test")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the timed steps (default: 1)")
    a = p.parse_args()
    r = run(a.quick, a.out, a.threads)
    text = json.dumps(r, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
