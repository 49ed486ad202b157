"""CT-CLIP image encoder speed against the machine's matmul limit (and the official code, optionally).

    python bench/bench_ctclip.py [--threads 2] [--repeats 3] [--official SCRATCH_DIR] [--tiny-volumes 64]

Measured in one run, so the ratios compare like with like:
  * the machine's fp32 and bf16 matmul peak (GFLOP/s, best of a few large GEMMs);
  * one official-size volume (1 x 1 x 240 x 480 x 480), random weights: median seconds,
    achieved GFLOP/s (matrix work counted below / time) and the peak RSS above the loaded
    model, on the fp32 path and on the bf16 path (+ their latent cosine);
  * optionally the official code (a scratch folder holding its source, see BENCHMARKS.md),
    with the same weights, timed the same way;
  * volumes per second of the tiny config (batch 8).
Each figure is printed with the 1-minute load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set every 2 ms while the block runs; .extra = peak minus the level at entry."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.base


def matmul_peak(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best GFLOP/s over large GEMMs shaped like the encoder's (tokens x 512 x 2730) and square ones."""
    best = 0.0
    for m, k, n in [(13824, 512, 2730), (13824, 1365, 512), (4096, 4096, 4096)]:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def encoder_flops(cfg) -> dict[str, float]:
    """Matrix-multiply FLOPs (2 per multiply-add) of one volume through the image encoder."""
    v = cfg.visual
    t, h, w = v.grid
    n = t * h * w
    inner = v.heads * v.dim_head
    ff = int(4 * (2 / 3) * v.dim)
    feats = v.channels * v.temporal_patch_size * v.patch_size**2
    per_layer = 2 * n * (v.dim * inner * 3 + inner * v.dim + v.dim * 2 * ff + ff * v.dim)
    return {
        "patch embedding": 2.0 * n * feats * v.dim,
        "transformer projections": per_layer * (v.spatial_depth + v.temporal_depth),
        "spatial attention": 4.0 * t * (h * w) ** 2 * inner * v.spatial_depth,
        "temporal attention": 4.0 * h * w * t**2 * inner * v.temporal_depth,
        "quantiser": 2.0 * n * v.codebook_size * v.dim,
        "latent projection": 2.0 * v.pooled_dim * cfg.dim_latent,
    }


def time_rounds(variants: dict, rounds: int, each_round=None) -> dict:
    """Each variant once per round, in turn, so that all see the same machine load.

    Returns per variant: first-call seconds, per-round seconds, the largest RSS rise above
    the level before the call, and the load average seen during its calls; ``each_round()``
    (the matmul peak) is called after every timed round and its results listed under "rounds".
    """
    res = {name: {"times": [], "extra": 0, "load": []} for name in variants}
    res["rounds"] = []
    for r in range(rounds + 1):
        if r > 0 and each_round is not None:
            res["rounds"].append(each_round())
        for name, fn in variants.items():
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            entry = res[name]
            entry["extra"] = max(entry["extra"], mem.extra)
            entry["load"].append(os.getloadavg()[0])
            if r == 0:
                entry["first"] = dt
            else:
                entry["times"].append(dt)
    if each_round is not None:
        res["rounds"].append(each_round())
    for name in variants:
        res[name]["median"] = statistics.median(res[name]["times"])
    return res


def time_breakdown(fn, flops: dict, total: float) -> str:
    """One call under torch.profiler: the share of time in GEMMs, in attention and elsewhere, and the
    GEMMs' own rate (their FLOPs over their self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    gemm = sum(v for k, v in self_s.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    attn = sum(v for k, v in self_s.items() if "scaled_dot_product" in k)
    everything = sum(self_s.values())
    gemm_flops = total - flops["spatial attention"] - flops["temporal attention"]
    return (
        f"{wall:.2f} s wall; GEMMs {100 * gemm / everything:.0f}% of op time at {gemm_flops / gemm / 1e9:.0f} "
        f"GFLOP/s, attention {100 * attn / everything:.0f}%, other ops {100 * (everything - gemm - attn) / everything:.0f}%"
    )


def official_encoder(scratch: Path, ours):
    """The official module tree from a scratch copy of its source, with our weights (strict load)."""
    sys.path.insert(0, str(scratch))
    import official_env  # the scratch folder's import shim (see BENCHMARKS.md)

    off = official_env.build_official(ours.cfg).eval()
    off.load_state_dict(ours.state_dict(), strict=True)

    def encode(vol):
        with torch.no_grad():  # what the official inference script runs under
            enc = off.visual_transformer(vol, return_encoded_tokens=True)
            return F.normalize(off.to_visual_latent(enc.mean(dim=1).reshape(vol.shape[0], -1)), dim=-1)

    return off, encode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="Timed rounds after the first (default: 3).")
    ap.add_argument("--official", type=Path, default=None, help="Scratch folder with the official code (optional).")
    ap.add_argument("--tiny-volumes", type=int, default=64)
    ap.add_argument("--skip-peak", action="store_true", help="Do not measure the matmul peak.")
    ap.add_argument("--profile", action="store_true", help="Also break one call of each path down by op kind.")
    ap.add_argument("--skip-official-size", action="store_true", help="Only the tiny config (a smoke test).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here (python -m bench reads it).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, {load()}")
    peaks = {}
    if not args.skip_peak:
        for name, dt in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            peaks[name] = matmul_peak(dt)
            print(f"matmul peak {name}: {peaks[name]:.0f} GFLOP/s ({load()})")
    RESULT["matmul_peak_gflops"] = peaks
    if not args.skip_official_size:
        bench_official_size(args)  # returns before the tiny runs, so the official model's memory is freed
    bench_tiny(args)
    if args.json:
        args.json.write_text(json.dumps(RESULT, indent=1, default=float))


RESULT: dict = {"threads": None}  # what --json writes: the figures printed above


def bench_official_size(args) -> None:
    """The encoder at the official size: timing, efficiency, memory, and the latents compared."""
    from pipeline.ctclip.model import CTCLIP

    model = CTCLIP("official")
    flops = encoder_flops(model.cfg)
    total = sum(flops.values())
    print(
        "matrix work per volume: "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items())
        + f"; total {total / 1e9:.0f} GFLOP"
    )
    vol = torch.rand(1, 1, 240, 480, 480, generator=torch.Generator().manual_seed(0)) * 2 - 1
    variants = {}
    if args.official:
        off, off_encode = official_encoder(args.official, model)
        variants["official"] = lambda: off_encode(vol)
    variants["fp32"] = lambda: model.encode_ct(vol, "fp32")
    variants["bf16"] = lambda: model.encode_ct(vol, "bf16")

    def round_peaks():
        return {"fp32": matmul_peak(torch.float32, 1.5), "bf16": matmul_peak(torch.bfloat16, 1.5)}

    res = time_rounds(variants, args.repeats, None if args.skip_peak else round_peaks)
    rounds = res.pop("rounds")
    RESULT.update(threads=args.threads, gflop_per_volume=total / 1e9, official_size=res, rounds=rounds)
    for name, r in res.items():
        prec = "fp32" if name == "official" else name
        rate = total / r["median"] / 1e9
        line = (
            f"{name:>8}: first {r['first']:.2f} s, median {r['median']:.2f} s "
            f"({', '.join(f'{t:.2f}' for t in r['times'])}), {rate:.0f} GFLOP/s"
        )
        if rounds:
            # efficiency per round: this round's rate over the matmul peak measured around it
            eff = [total / t / 1e9 / max(a[prec], b[prec]) for t, a, b in zip(r["times"], rounds, rounds[1:])]
            line += f" = {100 * statistics.median(eff):.0f}% of the {prec} matmul peak measured around each call"
        line += (
            f", peak RSS +{r['extra'] / 1e9:.2f} GB above the loaded model(s) (load {statistics.median(r['load']):.1f})"
        )
        print(line)
    if rounds:
        for prec in ("fp32", "bf16"):
            print(f"matmul peak {prec} per round: " + ", ".join(f"{p[prec]:.0f}" for p in rounds) + " GFLOP/s")
    if "official" in res:
        for name in ("fp32", "bf16"):
            ratios = [o / t for o, t in zip(res["official"]["times"], res[name]["times"])]
            print(f"{name} speed-up over official, median of per-round ratios: {statistics.median(ratios):.2f}x")
            RESULT[f"{name}_speedup_over_official"] = statistics.median(ratios)
    if args.profile:
        for name, fn in variants.items():
            print(f"{name:>8} breakdown: {time_breakdown(fn, flops, total)} ({load()})")
            if not args.skip_peak:
                prec = "fp32" if name == "official" else name
                print(
                    f"          matmul peak {prec} right after: {matmul_peak(dict(fp32=torch.float32, bf16=torch.bfloat16)[prec], 1.5):.0f} GFLOP/s"
                )
    latents = {name: fn() for name, fn in variants.items()}
    RESULT["bf16_fp32_cosine"] = F.cosine_similarity(latents["bf16"], latents["fp32"]).item()
    print(f"bf16 vs fp32 latent cosine: {RESULT['bf16_fp32_cosine']:.5f}")
    if "official" in latents:
        print(f"fp32 vs official latent max|diff|: {(latents['fp32'] - latents['official']).abs().max():.2e}")


def bench_tiny(args) -> None:
    from pipeline.ctclip.model import CTCLIP

    tiny = CTCLIP("tiny")
    batch = torch.rand(8, 1, 16, 32, 32) * 2 - 1
    for prec in ("fp32", "bf16"):
        tiny.encode_ct(batch, prec)
        t0 = time.perf_counter()
        for _ in range(max(1, args.tiny_volumes // 8)):
            tiny.encode_ct(batch, prec)
        rate = 8 * max(1, args.tiny_volumes // 8) / (time.perf_counter() - t0)
        print(f"tiny config {prec}: {rate:.0f} volumes/s (batch 8) ({load()})")
        RESULT[f"tiny_{prec}_volumes_per_s"] = rate


if __name__ == "__main__":
    main()
