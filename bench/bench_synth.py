"""Benchmark ``x2ct-pipeline synth``: wall and CPU time per data set, 1 vs 2 worker processes, medians of repeats.

    python bench/bench_synth.py --n 64 --size 96 --repeats 3

CPU time (user + system of this process and its workers) is reported next to
wall time because a shared machine inflates wall time; on an idle machine with
two cores, wall time with two workers is about half the CPU time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_once(n: int, size: int, workers: int) -> tuple[float, float]:
    from pipeline.synth.writer import synthesize
    from schemas.stages import SynthConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(out=Path(tmp) / "ct-rate", n=n, size=size, seed=0, workers=workers)
        c0, t0 = _cpu(), time.perf_counter()
        synthesize(cfg, progress=False)
        return time.perf_counter() - t0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here (python -m bench reads it).")
    args = ap.parse_args()
    rows = {}
    for workers in (1, 2):
        runs = [run_once(args.n, args.size, workers) for _ in range(args.repeats)]
        rows[workers] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    print(f"synth n={args.n} size={args.size}, median of {args.repeats}")
    print("workers  wall_s  cpu_s  ms_cpu_per_volume")
    for w, (wall, cpu) in rows.items():
        print(f"{w:7d}  {wall:6.1f}  {cpu:5.1f}  {1000 * cpu / args.n:8.0f}")
    print(f"speed-up with 2 workers (wall): {rows[1][0] / rows[2][0]:.2f}x")
    if args.json:
        out = {"n": args.n, "size": args.size, "repeats": args.repeats}
        out["workers"] = {
            str(w): {"wall_s": wall, "cpu_s": cpu, "cpu_per_volume_ms": 1000 * cpu / args.n}
            for w, (wall, cpu) in rows.items()
        }
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
