"""python -m bench: the generated block of BENCHMARKS.md, merged runs, the CT-RATE projection."""

from bench.__main__ import MARK_END, MARK_START, merge_runs, project_ct_rate, render_markdown, write_markdown

MACHINE = {
    "host": "h", "cpu": "cpu", "cores": 2, "memory_gib": 1.0, "amx": False, "avx512_bf16": True, "gpu": None,
    "versions": {"python": "3"}, "commit": "abc",
}  # fmt: skip


def _run(load_s: float, jobs=None) -> dict:
    load = {
        "files": [
            {
                "file": "/x/ct.nii.gz", "shape": [512, 512, 300], "axcodes": "LAS", "compressed_mb": 69.0,
                "inflated_mb": 157.0, "backend": "zlib", "load_before": 1.0, "load_after": 1.0,
                "median_s": {"inflate_zlib": 0.5, "load_ct": load_s},
                "load_ct_over_own_inflate": load_s / 0.5, "load_ct_over_zlib_inflate": load_s / 0.5,
                "previous_over_load_ct": 3.0,
            }
        ],
        "repeats": 5,
    }  # fmt: skip
    entry = {"argv": ["python", "bench/bench_load_ct.py"], "load_before": [1, 1, 1], "load_after": [1, 1, 1]}
    return {
        "command": "python -m bench",
        "started": "2026-12-02 05:00",
        "finished": "2026-12-02 05:10",
        "results_file": "bench/results/r.json",
        "machine": MACHINE,
        "jobs": jobs if jobs is not None else {"load_ct": {**entry, "seconds": 9.0, "result": load}},
    }


def test_markdown_block_inserted_then_replaced_and_the_rest_kept(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## synth\n\nhand-written figures\n")
    write_markdown(_run(0.6), md)
    first = md.read_text()
    assert first.startswith("# Benchmarks\n\n" + MARK_START) and first.count(MARK_START) == 1
    assert "**load_ct = 1.20x the zlib inflate" in first and first.endswith("## synth\n\nhand-written figures\n")
    write_markdown(_run(0.7), md)
    second = md.read_text()
    assert second.count(MARK_START) == 1 and second.count(MARK_END) == 1
    assert "1.40x" in second and "1.20x" not in second
    assert second.split(MARK_END)[1] == first.split(MARK_END)[1]  # everything after the block untouched


def test_failed_and_skipped_benchmarks_are_reported_not_dropped():
    text = render_markdown(
        _run(0.6, {"synth": {"skipped": "full run only"}, "load_ct": {"argv": ["p"], "load_before": [2],
         "load_after": [3], "seconds": 1.0, "error": "Traceback ... ValueError: boom"}})
    )  # fmt: skip
    assert "Not run: full run only." in text and "ValueError: boom" in text


def test_merge_runs_later_part_wins_per_benchmark():
    a, b = _run(0.6), _run(0.9)
    a["jobs"]["synth"] = {"skipped": "x"}
    merged = merge_runs([a, b], ["a.json", "b.json"])
    assert set(merged["jobs"]) == {"load_ct", "synth"}
    assert merged["jobs"]["load_ct"]["result"]["files"][0]["median_s"]["load_ct"] == 0.9


def test_ct_rate_projection_by_hand():
    run = _run(2.0)
    run["jobs"]["drr_stage"] = {"result": {"workers_2": {"cone_pa_lateral_cpu_per_volume_s": 4.0}}}
    run["jobs"]["embed"] = {"result": {"model": "official", "decode_s": 8.0, "model_s": 20.0, "model_threads": 1}}
    rows = project_ct_rate(run)
    # 50,188 volumes x (2 s + 8 s) of decoding over 32 cores
    assert abs(rows["1 GPU server, 32 cores: both stages"]["hours"] - 50188 * 10 / 32 / 3600) < 1e-9
    drr = rows["Dask, 4 CPU nodes x 32 cores: simulate-drr (cone PA + lateral)"]
    assert abs(drr["hours"] - 50188 * 4 / 128 / 3600) < 1e-9 and "decode 50%" in drr["bottleneck"]
    embed = rows["Dask, 16 CPU nodes x 32 cores: embed-ct (fp32)"]
    assert abs(embed["hours"] - 50188 * 28 / 512 / 3600) < 1e-9
    run["jobs"]["embed"]["result"]["model"] = "tiny"  # a tiny model says nothing about CT-RATE
    assert project_ct_rate(run) is None


def test_shown_command_is_relative_to_the_repository_of_any_checkout():
    from bench.__main__ import ROOT, shown_command

    argv = ["/venv/bin/python", "/elsewhere/wt/bench/bench/bench_x.py", "--out", f"{ROOT}/out/a", "--n", "3"]
    assert shown_command(argv) == "python bench/bench_x.py --out out/a --n 3"
