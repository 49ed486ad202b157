"""embed-ct throughput on this machine: decode alone, model alone, and the two overlapped by the stage.

    python bench/bench_embed.py --model tiny --n 24
    python bench/bench_embed.py --model official --n 4 --batch-size 1

Random weights (the speed does not depend on them) and synthetic chest phantoms
(official: 512 x 512 x 300 int16 NIfTI, 0.7 x 0.7 x 1.0 mm; tiny: 40 x 40 x 24).
Figures are medians per volume; 'together' is the steady-state time per volume
from the first to the last commit of a real run (Dask: one decode worker, one model
worker; and in-process threads), so cluster start and model loading are left
out (with --commit-every above --n: the scheduling loop's time over n). Goal: together within
15% of the slower of decode and model. The machine is shared: the 1-minute load
average is printed with every figure.
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


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_data(work: Path, model: str, n: int):
    from schemas.labels import N_LABELS
    from schemas.manifest import ManifestRow, write_manifest
    from tests.helpers.embed_data import REPORTS, write_checkpoint, write_vocab, write_volume

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{model}.pt"
    if not ckpt.exists():
        write_checkpoint(ckpt, seed=0, config=model)
    shape, spacing = ((512, 512, 300), (0.7, 0.7, 1.0)) if model == "official" else ((40, 40, 24), (5.0, 5.0, 8.0))
    rows = []
    for i in range(n):
        vid = f"valid_{i}_a_1"
        path = work / f"{model}-{vid}.nii.gz"
        if not path.exists():
            write_volume(path, seed=i, shape=shape, spacing=spacing)
        report = REPORTS[i % len(REPORTS)]
        rows.append(
            ManifestRow(
                volume_id=vid,
                patient_id=f"valid_{i}",
                scan_id=f"valid_{i}_a",
                reconstruction_id=vid,
                split="valid",
                ct_path=path.name,
                findings=report,
                labels=[0] * N_LABELS,
            )
        )
    manifest = work / f"{model}-{n}.jsonl"
    write_manifest(rows, manifest)
    return manifest, ckpt, write_vocab(work / "tok"), rows


def bench_decode(rows, work: Path, model: str) -> list[float]:
    """decode_volume in this process with one torch thread, as a decode worker runs it."""
    import torch

    from pipeline.embed.work import decode_volume
    from schemas.ct import CTLoadConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    for r in rows:
        t0 = time.perf_counter()
        decode_volume(r.volume_id, str(work / r.ct_path), {}, CTLoadConfig().model_dump(), model)
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return times


def bench_model(spec, rows, work: Path, model: str) -> list[float]:
    """encode_volumes of preprocessed volumes, one at a time, after 5 s of warm-up calls."""
    from pipeline.embed.model import get_model
    from pipeline.embed.work import decode_volume
    from schemas.ct import CTLoadConfig

    m = get_model(spec)
    arrays = [
        decode_volume(r.volume_id, str(work / r.ct_path), {}, CTLoadConfig().model_dump(), model).array
        for r in rows[: min(len(rows), 3)]
    ]
    t_end = time.perf_counter() + 5.0  # warm up for 5 s (at least one call): the first calls are slow
    while True:
        m.encode_volumes([arrays[0]])
        if time.perf_counter() > t_end:
            break
    times = []
    for i in range(len(rows)):
        t0 = time.perf_counter()
        m.encode_volumes([arrays[i % len(arrays)]])
        times.append(time.perf_counter() - t0)
    return times


def bench_together(
    manifest, ckpt, tok, work: Path, model: str, workers: int, threads: int, commit_every: int, batch_size: int
) -> dict:
    from pipeline.embed.stage import run_embed
    from schemas.embed import EmbedConfig

    out = work / f"together-{model}-{workers}.h5"
    stamps: list[tuple[float, int]] = []  # (time, rows committed so far)
    cfg = EmbedConfig(
        manifest=manifest,
        checkpoint=ckpt,
        tokenizer=tok,
        out=out,
        model=model,
        workers=workers,
        commit_every=commit_every,
        batch_size=batch_size,
        overwrite=True,
        progress=False,
        model_threads=threads,
    )
    t0 = time.perf_counter()
    summary = run_embed(cfg, on_commit=lambda n: stamps.append((time.perf_counter(), n)))
    if len(stamps) >= 2:  # steady state: from the first commit to the last
        per_volume = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])
    else:
        per_volume = summary.extras["work_s"] / summary.done
    return {
        "wall_s": time.perf_counter() - t0,
        "work_s": summary.extras["work_s"],
        "per_volume_s": per_volume,
        "embedded": summary.done,
        "load_s_median": statistics.median(summary.extras["load_s"]),
        "preprocess_s_median": statistics.median(summary.extras["preprocess_s"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=["tiny", "official"])
    ap.add_argument("--n", type=int, default=24, help="volumes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/embed-bench"))
    ap.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="torch threads of the model (default: the cores one decode worker leaves, as embed-ct)",
    )
    ap.add_argument(
        "--commit-every",
        type=int,
        default=1,
        help="1: time the gaps between commits (steady state); more than --n: the whole loop / n",
    )
    ap.add_argument("--batch-size", type=int, default=2, help="volumes per forward pass in the overlapped runs")
    ap.add_argument(
        "--modes", default="dask,threads", help="overlapped runs: dask (1 decode + 1 model worker), threads"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from pipeline.embed.model import ModelSpec

    manifest, ckpt, tok, rows = make_data(args.work, args.model, args.n)
    spec = ModelSpec(
        checkpoint=str(ckpt), tokenizer=str(tok), model=args.model, device="cpu", precision="fp32", threads=args.threads
    )
    res = {
        "model": args.model,
        "n": args.n,
        "cpus": os.cpu_count(),
        "model_threads": args.threads,
        "batch_size": args.batch_size,
    }
    res["load_before"] = load()
    decode = bench_decode(rows, args.work, args.model)
    res["decode_s"], res["load_decode"] = statistics.median(decode), load()
    mtimes = bench_model(spec, rows, args.work, args.model)
    res["model_s"], res["load_model"] = statistics.median(mtimes), load()
    modes = [m for m in (("dask", 1), ("threads", 0)) if m[0] in args.modes.split(",")]
    for name, workers in modes:
        res[f"together_{name}"] = bench_together(
            manifest, ckpt, tok, args.work, args.model, workers, args.threads, args.commit_every, args.batch_size
        )
        res[f"load_{name}"] = load()
    slower = max(res["decode_s"], res["model_s"])
    for name, _ in modes:
        t = res[f"together_{name}"]["per_volume_s"]
        res[f"together_{name}_vs_slower"] = t / slower
        res[f"volumes_per_s_{name}"] = 1.0 / t
    print(
        f"{args.model}: decode {res['decode_s']:.3f} s/vol (load {res['load_decode']}), "
        f"model {res['model_s']:.3f} s/vol (load {res['load_model']})"
    )
    for name, _ in modes:
        t = res[f"together_{name}"]
        print(
            f"  together [{name}]: {t['per_volume_s']:.3f} s/vol = {res[f'volumes_per_s_{name}']:.2f} vol/s, "
            f"{res[f'together_{name}_vs_slower']:.2f}x the slower alone (load {res[f'load_{name}']}); "
            f"whole run {t['wall_s']:.1f} s for {t['embedded']} volumes"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
