"""Every benchmark in one command; the tables of BENCHMARKS.md are regenerated from the results.

    python -m bench                      # full run: medians of 5, real sizes (an hour or more on 2 cores)
    python -m bench --quick              # small sizes, one or two repeats: a smoke test (CI runs it)
    python -m bench --only load_ct,drr_stage
    python -m bench --render bench/results/2026-12-02-host.json   # tables again from a stored run

Each benchmark runs as its own subprocess (its own peak RSS, no state carried over) and writes
a JSON file; this driver collects them with the machine, versions, load average before and
after, the exact command and its wall time into ``bench/results/<date>-<host>[-quick].json``,
and (full runs of every benchmark, unless ``--no-markdown``; parts run with ``--only`` are\nmerged with ``--render A.json B.json``) rewrites the part of BENCHMARKS.md between the
``bench:generated`` markers from that file. Peers run in the same process or the same run as
our code, so their ratios are fair on a shared machine: DiffDRR for rendering (when
importable, or from ``--diffdrr-site``), the official CT-CLIP code for the encoder (a local
copy given by ``--official-ctclip``), decode-only as the floor of both data stages, online
CT-CLIP targets against the cache for training (``bench/bench_train.py``, when present).
A benchmark that fails is recorded with its error and the others still run; the exit code is
1 if any failed. No timing is asserted anywhere: the figures are for people to read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import tables

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MARK_START, MARK_END = "<!-- bench:generated:start -->", "<!-- bench:generated:end -->"


@dataclass
class Ctx:
    quick: bool
    work: Path  # data and per-benchmark JSON files
    repeats: int
    diffdrr_site: Path | None
    official_ctclip: Path | None
    inflate_site: Path | None

    @property
    def ct(self) -> Path:
        """The CT every rendering/I-O benchmark reads: CT-like, real size (quick: small)."""
        from bench.ct_like import write_ct_like

        shape = (128, 128, 80) if self.quick else (512, 512, 300)
        return write_ct_like(self.work / f"ct_like_{'x'.join(map(str, shape))}.nii.gz", shape)


@dataclass
class Job:
    name: str
    title: str
    argv: Callable[[Ctx], list[str] | None]  # None: not run in this configuration (reason in skip_reason)
    json_name: str
    render: Callable[[dict], str]
    skip_reason: str = ""


def _py(script: str, *args) -> list[str]:
    return [sys.executable, str(BENCH / script), *[str(a) for a in args]]


def _diffdrr_site(ctx: Ctx) -> Path | None:
    if ctx.diffdrr_site and (ctx.diffdrr_site / "diffdrr").is_dir():
        return ctx.diffdrr_site
    try:
        import diffdrr  # noqa: F401

        return Path(diffdrr.__file__).resolve().parents[1]
    except ImportError:
        return None


def _load_ct_argv(c: Ctx):
    args = ["--out", c.work, "--repeats", c.repeats, "--ct", c.ct]
    site = _diffdrr_site(c)
    if site and not c.quick:
        args += ["--diffdrr-site", site]
    if c.inflate_site:
        args += ["--inflate-site", c.inflate_site]
    return _py("bench_load_ct.py", *args)


def _synth_argv(c: Ctx):
    n, size = (8, 48) if c.quick else (64, 96)
    return _py("bench_synth.py", "--n", n, "--size", size, "--repeats", c.repeats, "--json", c.work / "synth.json")


def _projector_argv(c: Ctx):
    return _py("bench_drr_projector.py", "--ct", c.ct, "--out", c.work, "--threads", 2, "--repeats", c.repeats)


def _vs_diffdrr_argv(c: Ctx):
    site = _diffdrr_site(c)
    if site is None or c.quick:
        return None
    return _py("bench_drr_vs_diffdrr.py", "--diffdrr-site", site, "--out", c.work, "--threads", 1, "--skip-siddon")


def _stage_argv(c: Ctx):
    n, workers = ("2", "1") if c.quick else ("6", "1,2")
    return _py(
        "bench_drr_stage.py", "--ct", c.ct, "--n", n, "--repeats", c.repeats, "--out", c.work, "--workers", workers
    )


def _embed_argv(c: Ctx):
    if c.quick:
        return _py(  # the in-process backend only: a Dask cluster start costs more than the test
            "bench_embed.py", "--model", "tiny", "--n", 8, "--modes", "threads",
            "--work", c.work / "embed", "--json", c.work / "embed.json",
        )  # fmt: skip
    return _py(
        "bench_embed.py", "--model", "official", "--n", 5, "--batch-size", 1, "--threads", 1,
        "--work", c.work / "embed", "--json", c.work / "embed.json",
    )  # fmt: skip


def _embed_tiny_argv(c: Ctx):
    if c.quick:
        return None
    return _py(
        "bench_embed.py", "--model", "tiny", "--n", 200, "--commit-every", 1000,
        "--work", c.work / "embed", "--json", c.work / "embed_tiny.json",
    )  # fmt: skip


def _ctclip_argv(c: Ctx):
    args = ["--repeats", c.repeats, "--threads", 2, "--json", c.work / "ctclip.json"]
    if c.quick:
        args += ["--skip-official-size", "--skip-peak", "--tiny-volumes", 16]
    elif c.official_ctclip:
        args += ["--official", c.official_ctclip]
    return _py("bench_ctclip.py", *args)


def _scaling_argv(c: Ctx):
    # Full-size volumes against workers are drr_stage's table (6 volumes, 1 and 2 workers).
    args = ["--out", c.work / "scaling", "--json", c.work / "scaling.json", "--full-n", 0]
    return _py("bench_scaling.py", *args, *(["--quick"] if c.quick else []))


def _profile_argv(c: Ctx):
    args = [
        "--ct",
        c.ct,
        "--out",
        c.work / "profile",
        "--json",
        c.work / "profile.json",
        "--repeats",
        min(c.repeats, 3),
    ]
    return _py("bench_profile.py", *args, *(["--no-forward"] if c.quick else []))


def _train_argv(c: Ctx):
    if not (BENCH / "bench_train.py").exists():
        return None
    return _py(
        "bench_train.py", "--out", c.work / "train", "--json", c.work / "train.json", *(["--quick"] if c.quick else [])
    )


def _gpu_argv(c: Ctx):
    import torch

    if not torch.cuda.is_available():
        return None
    return _py("bench_gpu.py", "--device", "cuda", "--json", c.work / "gpu.json", *(["--quick"] if c.quick else []))


JOBS = [
    Job("load_ct", "CT loading against the gzip inflate", _load_ct_argv, "load_ct.json", tables.load_ct),
    Job("synth", "synth", _synth_argv, "synth.json", tables.synth),
    Job("drr_projector", "DRR projector (512x512 DRR)", _projector_argv, "drr_projector.json", tables.projector),
    Job(
        "drr_vs_diffdrr",
        "DRR against DiffDRR 0.6.1",
        _vs_diffdrr_argv,
        "drr_vs_diffdrr.json",
        tables.vs_diffdrr,
        "DiffDRR is not importable (install the `bench` extra or pass --diffdrr-site); left out of --quick",
    ),  # fmt: skip
    Job("drr_stage", "simulate-drr against its I/O floor", _stage_argv, "drr_stage.json", tables.drr_stage),
    Job("embed", "embed-ct: decode, model, together", _embed_argv, "embed.json", tables.embed),
    Job(
        "embed_tiny",
        "embed-ct overhead (tiny config)",
        _embed_tiny_argv,
        "embed_tiny.json",
        tables.embed,
        "full run only",
    ),
    Job("ctclip", "CT-CLIP image encoder", _ctclip_argv, "ctclip.json", tables.ctclip),
    Job("scaling", "Scaling with volumes, workers and manifest rows", _scaling_argv, "scaling.json", tables.scaling),
    Job("profile", "Where the time goes", _profile_argv, "profile.json", tables.profile),
    Job(
        "train",
        "train and evaluate",
        _train_argv,
        "train.json",
        tables.train,
        "bench/bench_train.py is not on this branch yet",
    ),  # fmt: skip
]


def machine() -> dict:
    import numpy
    import torch

    cpu = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem = 0.0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__}
    for mod in ("nibabel", "scipy", "dask", "zarr", "h5py", "diffdrr", "isal", "zlib_ng"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except ImportError:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        commit = ""
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "commit": commit.strip(),
    }


def run_job(job: Job, ctx: Ctx) -> dict:
    argv = job.argv(ctx)
    if argv is None:
        return {"skipped": job.skip_reason or "not in this configuration"}
    out_json = ctx.work / job.json_name
    out_json.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if ctx.inflate_site:
        env["PYTHONPATH"] += os.pathsep + str(ctx.inflate_site)
    entry: dict = {"argv": [str(a) for a in argv], "load_before": os.getloadavg()}
    print(f"[bench] {job.name}: {' '.join(entry['argv'])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    entry.update(seconds=time.perf_counter() - t, load_after=os.getloadavg(), returncode=proc.returncode)
    if out_json.exists():  # also from a benchmark stopped part way: it saves what it measured
        entry["result"] = json.loads(out_json.read_text())
    if proc.returncode != 0 or not out_json.exists():
        entry["error"] = (proc.stderr or proc.stdout)[-4000:] or f"exit status {proc.returncode}"
        print(f"[bench] {job.name} FAILED (exit {proc.returncode}):\n{entry['error'][-1500:]}", flush=True)
        return entry
    entry["stdout_tail"] = proc.stdout[-2000:]
    print(f"[bench] {job.name}: {entry['seconds']:.0f} s", flush=True)
    return entry


CT_RATE_VOLUMES = 50_188
SERVER_CORES = 32  # a GPU server's or a CPU node's cores in the projection (scale linearly)


def project_ct_rate(run: dict) -> dict | None:
    """CT-RATE (50,188 volumes) from this run's per-volume costs: core-seconds per volume of each
    part, divided over the cores a setting has. Needs the load_ct, drr_stage and embed results
    of a full run; the GPU rows assume the issue's GPU goals (rendering >= 1000 DRRs/s,
    the encoder faster than decoding), since no GPU figure was measured here."""
    jobs = run["jobs"]
    try:
        load = next(f for f in jobs["load_ct"]["result"]["files"] if f["shape"][:2] == [512, 512])
        stage = jobs["drr_stage"]["result"]["workers_2"]
    except (KeyError, StopIteration):
        return None
    embed = jobs.get("embed", {}).get("result", {})
    prof = jobs.get("profile", {}).get("result", {}).get("stages", {}).get("embed-ct (official encoder, fp32)", {})
    if embed.get("model") == "official":
        embed_decode = embed["decode_s"]  # load + CT-CLIP preprocessing, one core
        model = embed["model_s"] * embed.get("model_threads", 1)  # core-seconds of one fp32 forward
    elif "forward" in prof:  # the profile's single-thread parts of the same work
        embed_decode, model = (
            prof["decode"] + prof["preprocess"],
            prof["forward"] * jobs["profile"]["result"]["threads"],
        )
    else:
        return None
    # One full-size volume's load on one core: CPU seconds inside the stage's own floor tasks
    # (same run, same units as the projection cost below), else the load_ct benchmark's median.
    decode = stage.get("floor_cpu_per_volume_s", load["median_s"]["load_ct"])
    drr = stage["cone_pa_lateral_cpu_per_volume_s"]  # load + PA + lateral 512, one core
    n = CT_RATE_VOLUMES
    rows = {}
    gpu_cpu = n * (decode + embed_decode) / SERVER_CORES / 3600
    rows[f"1 GPU server, {SERVER_CORES} cores: both stages"] = {
        "hours": gpu_cpu,
        "bottleneck": f"CPU decoding ({decode:.2f} s + {embed_decode:.2f} s per volume on one core); "
        f"GPU work at the goal rates is {n * 2 / 1000 / 3600:.2f} h of rendering",
    }
    for nodes in (4, 16, 64):
        cores = nodes * SERVER_CORES
        rows[f"Dask, {nodes} CPU nodes x {SERVER_CORES} cores: simulate-drr (cone PA + lateral)"] = {
            "hours": n * drr / cores / 3600,
            "bottleneck": f"decode {100 * decode / drr:.0f}% of the {drr:.2f} core-s per volume, projection the rest",
        }
        rows[f"Dask, {nodes} CPU nodes x {SERVER_CORES} cores: embed-ct (fp32)"] = {
            "hours": n * (model + embed_decode) / cores / 3600,
            "bottleneck": f"the CT-CLIP forward pass ({model:.1f} core-s per volume against {embed_decode:.1f} s decode)",
        }
    return rows


def shown_command(argv: list[str]) -> str:
    """A job's command as a user types it: the interpreter by name, the script relative to the
    repository (also for runs made from another checkout of it), this checkout's paths relative."""
    shown = [Path(argv[0]).name]
    for a in argv[1:]:
        script = Path(a)
        shown.append(f"bench/{script.name}" if script.suffix == ".py" and script.parent.name == "bench" else a)
    return " ".join(shown).replace(str(ROOT) + "/", "")


def render_markdown(run: dict) -> str:
    m = run["machine"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    lines = [
        MARK_START,
        "",
        f"## Latest {'quick ' if run.get('quick') else ''}run: `{run['command']}`",
        "",
        "Generated by `python -m bench` from "
        f"`{run['results_file']}` (do not edit by hand: rerun, or `python -m bench --render FILE`).",
        f"Run {run['started']} to {run['finished']} UTC on {m['host']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, AMX {'yes' if m['amx'] else 'no'}, avx512_bf16 {'yes' if m['avx512_bf16'] else 'no'}, "
        f"GPU {m['gpu'] or 'none'}; {v}; commit {m['commit']}.",
        "",
        "**Absolute figures come from a loaded machine** (2 cores shared with other jobs; the 1-minute "
        "load average before and after each benchmark is given with it): read the ratios, which are "
        "measured side by side in the same run.",
        "",
    ]
    for job in JOBS:
        entry = run["jobs"].get(job.name)
        if entry is None:
            continue
        lines.append(f"### {job.title}")
        lines.append("")
        if "skipped" in entry:
            lines += [f"Not run: {entry['skipped']}.", ""]
            continue
        lines += ["```", shown_command(entry["argv"]), "```", ""]
        lb, la = entry["load_before"][0], entry["load_after"][0]
        lines.append(f"Load average {lb:.1f} before, {la:.1f} after; {entry['seconds']:.0f} s.")
        lines.append("")
        if "error" in entry:
            lines += ["Failed or stopped (what it measured before, if anything, follows):", "```"]
            lines += [entry["error"][-800:].strip(), "```", ""]
            if "result" not in entry:
                continue
        try:
            lines += [job.render(entry["result"]), ""]
        except Exception as e:  # a renderer that does not match an old result file: say so, keep the rest
            lines += [f"(table could not be rendered: {type(e).__name__}: {e})", ""]
    proj = project_ct_rate(run)
    if proj:
        lines += [
            "### CT-RATE projection (50,188 volumes)",
            "",
            "From this run's per-volume costs (core-seconds on this CPU, scaled linearly over cores; "
            "the GPU row assumes the issue's GPU goals, not a measurement):",
            "",
            tables._table(
                ["setting", "hours", "bottleneck"], [[k, v["hours"], v["bottleneck"]] for k, v in proj.items()]
            ),
            "",
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


def merge_runs(runs: list[dict], files: list[Path]) -> dict:
    """One run made of several (e.g. ``--only`` parts run apart): machine and times of the last."""
    merged = dict(runs[-1], jobs={})
    for run in runs:
        merged["jobs"].update(run["jobs"])
    merged["started"] = min(r["started"] for r in runs)
    merged["command"] = "; ".join(dict.fromkeys(r["command"] for r in runs))
    merged["results_file"] = ", ".join(str(f) for f in files)
    return merged


def write_markdown(run: dict, path: Path = ROOT / "BENCHMARKS.md") -> None:
    text = path.read_text()
    block = render_markdown(run)
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + block + tail
    else:  # first run: right under the title
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body}"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a few minutes): a smoke test")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(j.name for j in JOBS)}")
    ap.add_argument("--repeats", type=int, default=None, help="runs per median (default 5; --quick 1)")
    ap.add_argument("--work", type=Path, default=None, help="data and per-benchmark files (default: a temp folder)")
    ap.add_argument("--results-dir", type=Path, default=BENCH / "results", help="where the run's JSON goes")
    ap.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--diffdrr-site", type=Path, default=None, help="folder holding the diffdrr package")
    ap.add_argument("--official-ctclip", type=Path, default=None, help="local copy of the official CT-CLIP code")
    ap.add_argument("--inflate-site", type=Path, default=None, help="folder holding isal / zlib_ng (optional)")
    ap.add_argument(
        "--render", type=Path, nargs="+", default=None,
        help="only regenerate BENCHMARKS.md from these results files (runs of parts: later files win per benchmark)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.render:
        write_markdown(merge_runs([json.loads(p.read_text()) for p in args.render], args.render))
        return 0
    only = {s for s in args.only.split(",") if s}
    unknown = only - {j.name for j in JOBS}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {[j.name for j in JOBS]}")
    work = args.work or Path(tempfile.mkdtemp(prefix="x2ct-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or (1 if args.quick else 5)
    ctx = Ctx(args.quick, work, repeats, args.diffdrr_site, args.official_ctclip, args.inflate_site)
    started = dt.datetime.now(dt.timezone.utc)
    run = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "quick": args.quick,
        "repeats": repeats,
        "jobs": {},
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"{started:%Y-%m-%d-%H%M}-{socket.gethostname()}{'-quick' if args.quick else ''}.json"
    results_file = args.results_dir / name
    run["results_file"] = (
        str(results_file.relative_to(ROOT)) if results_file.is_relative_to(ROOT) else str(results_file)
    )
    for job in JOBS:
        if only and job.name not in only:
            continue
        run["jobs"][job.name] = run_job(job, ctx)
        run["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        results_file.write_text(
            json.dumps(run, indent=1, default=str)
        )  # after each job: a killed run keeps its figures
    print(f"[bench] results: {results_file}")
    if not args.quick and not args.no_markdown and not only:
        write_markdown(run)
        print("[bench] BENCHMARKS.md tables regenerated")
    failed = [n for n, e in run["jobs"].items() if "error" in e]
    if failed:
        print(f"[bench] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
