"""How time and memory grow: volumes, workers, manifest rows; and a training epoch's data loading.

    python bench/bench_scaling.py --out out/bench/scaling --json out/bench/scaling.json [--quick]

* **simulate-drr and embed-ct against the number of volumes** (10, 100, 1000 small synthetic
  volumes, 40 x 40 x 24 chest phantoms) and workers (1, 2; 100 volumes with both, 10 with one,
  1000 with two; quick: 4 with one): the real command
  lines (``python -m pipeline simulate-drr / embed-ct``) run as subprocesses, wall time,
  CPU time of the whole process tree and the peak of its summed RSS (driver + Dask workers,
  sampled every 50 ms). One manifest per size serves both stages (tiny CT-CLIP with random
  weights, 256 x 256 PA cone beam). **Full size** (not in --quick): ``--full-n`` CT-like
  512 x 512 x 300 volumes through simulate-drr (PA + lateral, 512) with 1 and 2 workers.
* **Driver memory against manifest rows** (1k rows, and 50k rows of which the first 1k are
  rendered (``limit``): on this loaded machine 50k Dask tasks take half an hour; quick: 100): ``run_stage``
  with a local cluster of 2 workers in which **rendering is stubbed out (in this measurement
  only)**: ``load_ct`` and ``render_volume`` are replaced in every worker by functions that
  return a blank 16 x 16 image at once, so each task still goes through the scheduler, the
  store write and the driver's bookkeeping. The driver's RSS is sampled every 20 ms in its
  own process; growth = peak minus the level before ``run_stage``.
* **Read side**: one training epoch's data loading (``trainer.data``: the store joined with
  the cache, ``TrainDataset`` with the training transform, ``ScanBatchSampler``, batches of
  32, a torch DataLoader with 0 and 2 workers) over the largest store and cache made above.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


LIVE: list[subprocess.Popen] = []  # children to end if this benchmark is stopped (SIGTERM)


def run_tree(argv: list[str], env: dict | None = None) -> dict:
    """Run ``argv``; wall seconds, CPU seconds and peak summed RSS (MB) of its process tree."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    LIVE.append(proc)
    root = psutil.Process(proc.pid)
    peak, cpu_seen = 0.0, {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0.0
        for p in procs:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu_seen[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, total)
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{out[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "cpu_s": sum(cpu_seen.values()), "peak_rss_mb": peak / 2**20}


def small_stages(work: Path, plan: dict[int, list[int]], res: dict, save) -> dict:
    """``plan``: volumes -> the worker counts to run them with. Figures go into ``res`` as they
    come (``save()`` writes them), so a stopped run keeps what it measured."""
    from bench.bench_embed import make_data

    drr, embed, largest = res.setdefault("simulate_drr", []), res.setdefault("embed_ct", []), {}
    for n, workers in plan.items():
        manifest, ckpt, tok, _ = make_data(work, "tiny", n)
        for w in workers:
            store = work / f"drr-{n}-{w}.zarr"
            r = run_tree([
                sys.executable, "-m", "pipeline", "simulate-drr", "--manifest", str(manifest), "--out", str(store),
                "--workers", str(w), "--size", "256", "--views", "pa", "--overwrite",
            ])  # fmt: skip
            drr.append({"n": n, "size": "40x40x24", "workers": w, **r})
            cache = work / f"embed-{n}-{w}.h5"
            r = run_tree([
                sys.executable, "-m", "pipeline", "embed-ct", "--manifest", str(manifest), "--checkpoint", str(ckpt),
                "--tokenizer", str(tok), "--model", "tiny", "--out", str(cache), "--workers", str(w),
                "--overwrite", "--no-progress",
            ])  # fmt: skip
            embed.append({"n": n, "size": "40x40x24", "workers": w, **r})
            print(f"n={n} workers={w}: drr {drr[-1]['seconds']:.1f} s, embed {embed[-1]['seconds']:.1f} s", flush=True)
            largest = {"store": store, "cache": cache, "n": n}
            save()
        res["epoch"] = epoch(largest["store"], largest["cache"], [0, 2])  # the largest store so far
        save()
    return largest


def full_size_drr(work: Path, n: int, workers: list[int]) -> list:
    from bench.ct_like import write_ct_like
    from schemas.labels import N_LABELS
    from schemas.manifest import ManifestRow, write_manifest

    ct = write_ct_like(work / "ct_like_512x512x300.nii.gz")
    rows = [
        ManifestRow(
            volume_id=f"valid_{900 + i}_a_1",
            patient_id=f"valid_{900 + i}",
            scan_id=f"valid_{900 + i}_a",
            reconstruction_id=f"valid_{900 + i}_a_1",
            split="valid",
            ct_path=str(ct),
            labels=[0] * N_LABELS,
        )  # fmt: skip
        for i in range(n)
    ]
    manifest = work / f"full-{n}.jsonl"
    write_manifest(rows, manifest)
    out = []
    for w in workers:
        r = run_tree([
            sys.executable, "-m", "pipeline", "simulate-drr", "--manifest", str(manifest),
            "--out", str(work / f"full-{n}-{w}.zarr"), "--workers", str(w), "--views", "pa,lateral", "--overwrite",
        ])  # fmt: skip
        out.append({"n": n, "size": "512x512x300", "workers": w, **r})
        print(f"full size n={n} workers={w}: {r['seconds']:.1f} s", flush=True)
    return out


# --- driver memory (child process per manifest size) -------------------------------------


def _stub_rendering() -> None:
    """Runs in every worker: no CT read, no rendering (this measurement only)."""
    import numpy as np

    import pipeline.ct_io as ct_io
    import pipeline.drr.render as render

    class _Vol:
        hu = np.zeros((2, 2, 2), np.float32)
        affine = np.eye(4)

    def load_ct(*_a, **_k):
        return _Vol()

    def render_volume(hu, affine, cfg, *_a, **_k):
        v, s = len(cfg.views), cfg.geometry.size
        return render.Rendered(np.zeros((v, s, s), np.uint16), np.zeros((v, s, s), np.float32))

    ct_io.load_ct = load_ct
    render.render_volume = render_volume


def driver_child(n_rows: int, work: Path, limit: int | None = None) -> dict:
    import psutil
    from distributed import Client, LocalCluster

    from pipeline.drr.stage import run_stage
    from schemas.drr import SimulateDRRConfig
    from schemas.labels import N_LABELS
    from schemas.manifest import ManifestRow, write_manifest

    work.mkdir(parents=True, exist_ok=True)
    manifest = work / f"driver-{n_rows}.jsonl"
    rows = (
        ManifestRow(
            volume_id=f"train_{i}_a_1",
            patient_id=f"train_{i}",
            scan_id=f"train_{i}_a",
            reconstruction_id=f"train_{i}_a_1",
            split="train",
            ct_path=f"ct/train_{i}_a_1.nii.gz",
            labels=[0] * N_LABELS,
        )  # fmt: skip
        for i in range(n_rows)
    )
    write_manifest(list(rows), manifest)
    del rows
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40)
    client = Client(cluster)
    client.run(_stub_rendering)
    me = psutil.Process()
    import gc

    gc.collect()
    base = me.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = SimulateDRRConfig(
        manifest=manifest,
        out=work / f"driver-{n_rows}.zarr",
        render={"views": ["pa"], "geometry": {"size": 16}},
        overwrite=True,
        limit=limit,
    )
    t = time.perf_counter()
    summary = run_stage(cfg, client=client)
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    client.close()
    cluster.close()
    tasks = n_rows if limit is None else min(limit, n_rows)
    assert summary.done == tasks, (summary.done, summary.failed, list(summary.failures.items())[:3])
    return {
        "rows": n_rows,
        "tasks": tasks,
        "seconds": seconds,
        "driver_base_rss_mb": base / 2**20,
        "driver_peak_rss_mb": peak[0] / 2**20,
        "driver_rss_growth_mb": (peak[0] - base) / 2**20,
    }


def driver_memory(work: Path, sizes: list[tuple[int, int | None]], before: Path | None = None) -> list:
    """``before``: another checkout of this repository (the code before a change): each size runs with
    it too, right before this code, so the two are compared in one run."""
    out = []
    codes = [("before", before.resolve()), ("this run", ROOT)] if before else [("this run", ROOT)]
    for n, limit in sizes:
        for code, root in codes:
            proc = subprocess.run(
                [sys.executable, str(root / "bench" / "bench_scaling.py"), "--driver-child", str(n),
                 "--out", str(work), "--limit", str(limit or 0)],
                cwd=root, capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"driver child {n} ({code}) failed:\n{proc.stderr[-3000:]}")
            out.append(
                {
                    "code": "before" if code == "before" else "this run",
                    **json.loads(proc.stdout.strip().splitlines()[-1]),
                }
            )
            print(f"driver {n} rows ({code}): {out[-1]}", flush=True)
        for p in work.glob(f"driver-{n}.*"):  # the stub store is large in files; free the disk
            if p.is_dir():
                import shutil

                shutil.rmtree(p, ignore_errors=True)
    return out


# --- read side -----------------------------------------------------------------------------


def epoch(store: Path, cache: Path, workers: list[int], batch_size: int = 32) -> dict:
    import torch

    from schemas.train import AugmentConfig
    from trainer.data import ScanBatchSampler, TrainDataset, join_split
    from trainer.encoder import resolve_encoder
    from trainer.transforms import TrainTransform

    torch.set_num_threads(1)
    t = time.perf_counter()
    split = join_split(store, cache, ["pa"])
    join_s = time.perf_counter() - t
    spec = resolve_encoder("tiny", split.latent_dim, 224)
    dataset = TrainDataset(split, TrainTransform(spec, AugmentConfig()))
    res: dict = {"items": len(split), "how": "trainer.data (join_split, TrainDataset, ScanBatchSampler)"}
    res["join_s"] = join_s
    for w in workers:
        sampler = ScanBatchSampler(split.scan_groups(), min(batch_size, len(split)))
        sampler.set_epoch(0)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=w, prefetch_factor=4 if w else None
        )
        t = time.perf_counter()
        n = 0
        for batch in loader:
            n += batch["image"].shape[0]
        s = time.perf_counter() - t
        res[f"epoch_s_workers_{w}"] = s
        res[f"images_per_s_workers_{w}"] = n / s
    res["images_per_epoch"] = n
    # The raw reads alone (no transform): the floor of the loader.
    t = time.perf_counter()
    for i in range(len(split)):
        split.read_image(i, 0)
    res["raw_read_s"] = time.perf_counter() - t
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/bench/scaling"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-n", type=int, default=3, help="full-size volumes through simulate-drr (0: none)")
    ap.add_argument("--parts", default="stages,full,driver,epoch")
    ap.add_argument(
        "--driver-before",
        type=Path,
        default=None,
        help="a checkout of the code before a change (git archive COMMIT | tar -x -C DIR): the driver part runs it too",
    )
    ap.add_argument("--driver-sizes", default=None, help="driver part: ROWS[:LIMIT],... (default 1000,50000:1000)")
    ap.add_argument("--driver-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver_child is not None:
        print(json.dumps(driver_child(args.driver_child, args.out, args.limit or None)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    res: dict = {"load_before": os.getloadavg()}

    def save() -> None:
        res["load_after"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))

    def stop(*_):  # keep what was measured: the figures so far, and say the run was cut short
        for proc in LIVE:
            if proc.poll() is None:
                proc.kill()
        res["stopped_early"] = "SIGTERM: the parts missing from this file did not run to the end"
        save()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if "driver" in parts:
        # 50k tasks of Dask overhead take ~30 min on this loaded 2-core machine: the 50k-row manifest
        # runs its first 1k items (--limit) against a 1k-row manifest, so the manifest's own cost is seen.
        sizes = [(100, None)] if args.quick else [(1000, None), (50000, 1000)]
        if args.driver_sizes:  # "ROWS[:LIMIT],...", e.g. "50000" for every row of a 50k-row manifest as a task
            sizes = [
                (int(r), int(lim) if lim else None)
                for r, _, lim in (x.partition(":") for x in args.driver_sizes.split(","))
            ]
        res["driver"] = driver_memory(args.out, sizes, args.driver_before)
        save()
    if "stages" in parts:
        # Each command-line run starts its own Dask cluster (tens of seconds on this loaded machine),
        # so not every size runs with every worker count: 100 volumes show the workers' effect.
        plan = {4: [1]} if args.quick else {10: [1], 100: [1, 2], 1000: [2]}
        small_stages(args.out, plan, res, save)  # with the read side after each size (``epoch``)
    if "full" in parts and not args.quick and args.full_n:
        res["simulate_drr"] = res.get("simulate_drr", []) + full_size_drr(args.out, args.full_n, [1, 2])
    save()
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
