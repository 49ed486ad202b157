"""What simulate-drr's driver spends per manifest row before any task: each step timed and its
memory traced (tracemalloc: held after the step, peak during it), on the code of a checkout.

    python bench/profile_driver_rows.py --n 50000 --work /tmp/rows [--root CHECKOUT] [--report-chars 1000]

``--root``: another checkout (``git archive COMMIT | tar -x -C DIR``) to profile the code before a
change; default this one. Steps: reading the manifest (``ManifestIndex`` where the checkout has
it, else ``read_manifest``), creating the store (``open_or_create``), ``read_status`` on the fresh
store, ``read_status`` with every 7th item's status chunk written. ``--tracemalloc 0`` times the
steps without tracing (tracing slows allocation-heavy steps several-fold).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
import tracemalloc
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--report-chars", type=int, default=0, help="findings text per row (CT-RATE: ~1000)")
    ap.add_argument("--tracemalloc", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(args.root.resolve()))

    from pipeline.drr.stage import _provenance
    from pipeline.drr.store import open_or_create, read_status
    from schemas.drr import DRRStoreLayout, SimulateDRRConfig
    from schemas.labels import N_LABELS
    from schemas.manifest import manifest_sha256

    try:
        from pipeline.manifest_index import ManifestIndex

        def read_rows(path):
            return ManifestIndex(path)

        how = "ManifestIndex"
    except ImportError:
        from schemas.manifest import read_manifest as read_rows

        how = "read_manifest"

    n = args.n
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / f"rows-{n}-{args.report_chars}.jsonl"
    if not manifest.exists():
        text = ("The lungs are clear without focal consolidation. " * 40)[: args.report_chars]
        with manifest.open("w") as f:
            for i in range(n):
                row = {
                    "volume_id": f"train_{i}_a_1",
                    "patient_id": f"train_{i}",
                    "scan_id": f"train_{i}_a",
                    "reconstruction_id": f"train_{i}_a_1",
                    "split": "train",
                    "ct_path": f"ct/train_{i}_a_1.nii.gz",
                    "findings": text,
                    "labels": [0] * N_LABELS,
                }
                f.write(json.dumps(row) + "\n")
    if args.tracemalloc:
        tracemalloc.start()
    steps = []

    def step(name, fn):
        gc.collect()
        c0 = 0
        if args.tracemalloc:
            tracemalloc.reset_peak()
            c0 = tracemalloc.get_traced_memory()[0]
        t = time.perf_counter()
        out = fn()
        entry = {"step": name, "seconds": round(time.perf_counter() - t, 3)}
        if args.tracemalloc:
            cur, peak = tracemalloc.get_traced_memory()
            entry |= {"held_bytes_per_row": round((cur - c0) / n), "peak_bytes_per_row": round((peak - c0) / n)}
        steps.append(entry)
        print(json.dumps(entry), flush=True)
        return out

    cfg = SimulateDRRConfig(
        manifest=manifest, out=args.work / f"store-{n}.zarr", render={"views": ["pa"], "geometry": {"size": 16}}
    )
    shutil.rmtree(cfg.out, ignore_errors=True)
    rows = step(f"manifest ({how})", lambda: read_rows(manifest))
    sha = manifest_sha256(manifest)
    layout = DRRStoreLayout(n_items=len(rows), views=cfg.render.views, size=16, line_integrals=False)
    group = step("open_or_create (new store)", lambda: open_or_create(cfg, layout, rows, _provenance(cfg, sha)))
    step("read_status (fresh store)", lambda: read_status(group))
    for i in range(0, n, 7):
        group["status"][i] = 1
    step("read_status (every 7th item written)", lambda: read_status(group))
    shutil.rmtree(cfg.out, ignore_errors=True)
    print(json.dumps({"root": str(args.root), "n": n, "report_chars": args.report_chars, "steps": steps}))


if __name__ == "__main__":
    main()
