"""embed-ct end to end on tiny synthetic data with a random-weight tiny CT-CLIP, checked against direct model calls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.ct_io import load_ct
from pipeline.ctclip.checkpoint import CheckpointError, load_ctclip
from pipeline.ctclip.preprocess import preprocess_ct
from pipeline.ctclip.text import load_tokenizer, report_text, tokenize
from pipeline.embed.cache import CacheMismatchError, prompt_texts
from pipeline.embed.errors import TooManyFailures
from pipeline.embed.reader import load_embeddings
from pipeline.embed.stage import run_embed
from schemas.embed import LABEL_MISSING, PROMPT_TEMPLATES, EmbedConfig
from tests.helpers.embed_data import build_inputs, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BAD = {
    "valid_4_a_1": "truncated",
    "valid_4_a_3": "preprocessing failed",
    "valid_5_a_1": "empty report",
    "valid_5_a_2": "empty report",
}


def config(inp, out: Path, **kw) -> EmbedConfig:
    base = dict(
        manifest=inp.manifest,
        checkpoint=inp.checkpoint,
        tokenizer=inp.tokenizer,
        out=out,
        model="tiny",
        workers=0,
        progress=False,
    )
    return EmbedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("embed"), n_scans=4, recons=2, bad=True)


@pytest.fixture(scope="module")
def reference(inputs):
    """One uninterrupted in-process run; other tests compare their rows with it."""
    out = inputs.root / "reference.h5"
    summary = run_embed(config(inputs, out))
    return summary, load_embeddings(out)


def assert_same_rows(a, b) -> None:
    assert sorted(a.ids) == sorted(b.ids)
    ia, ib = a.index(), b.index()
    order_a, order_b = [ia[v] for v in sorted(a.ids)], [ib[v] for v in sorted(b.ids)]
    np.testing.assert_allclose(a.ct[order_a], b.ct[order_b], atol=1e-5)
    np.testing.assert_allclose(a.report[order_a], b.report[order_b], atol=1e-5)
    np.testing.assert_array_equal(a.labels[order_a], b.labels[order_b])


def test_rows_equal_direct_model_calls_and_failures_are_recorded(inputs, reference):
    summary, emb = reference
    good = [r for r in inputs.rows if r.volume_id not in BAD]
    assert sorted(emb.ids) == sorted(r.volume_id for r in good) and summary.done == len(good)
    assert set(emb.failures) == set(BAD)
    for vid, why in BAD.items():
        assert why in emb.failures[vid]
    assert (
        summary.extras["texts_embedded"] == 4
    )  # 5 scans with text, scans 0 and 4 share a report: each text embedded once
    model, tok = load_ctclip(inputs.checkpoint, "tiny"), load_tokenizer(inputs.tokenizer)
    idx = emb.index()
    for row in good:
        x = preprocess_ct(load_ct(inputs.root / row.ct_path), model.cfg)[None]
        ids, mask = tokenize(tok, [report_text(row.findings, row.impressions)], max_length=64)
        i = idx[row.volume_id]
        np.testing.assert_allclose(emb.ct[i], model.encode_ct(x)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(emb.report[i], model.encode_text(ids, mask)[0].numpy(), atol=1e-5)
        assert emb.scan_ids[i] == row.scan_id
        np.testing.assert_array_equal(emb.labels[i], [LABEL_MISSING if v is None else v for v in row.labels])
    assert np.allclose(np.linalg.norm(emb.ct, axis=1), 1.0, atol=1e-5)
    assert emb.temperature == pytest.approx(float(np.log(1 / 0.07)), rel=1e-6)


def test_prompt_embeddings_equal_encode_text_of_their_templates(inputs, reference):
    _, emb = reference
    model, tok = load_ctclip(inputs.checkpoint, "tiny"), load_tokenizer(inputs.tokenizer)
    for s, (_pos, _) in PROMPT_TEMPLATES.items():
        for kind, texts in prompt_texts(s).items():
            ids, mask = tokenize(tok, texts, max_length=64)
            np.testing.assert_allclose(emb.prompts[s][kind], model.encode_text(ids, mask).numpy(), atol=1e-5)
    assert prompt_texts("x2ct_clip")["positive"][9] == "There is Lung nodule."
    assert prompt_texts("ct_clip")["negative"][12] == "Pleural effusion is not present."


def test_file_attributes_record_how_it_was_made(inputs, reference):
    from pipeline.ctclip.checkpoint import file_sha256
    from schemas.manifest import manifest_sha256

    with h5py.File(inputs.root / "reference.h5", "r") as f:
        assert f.attrs["checkpoint_sha256"] == file_sha256(inputs.checkpoint)
        assert f.attrs["manifest_sha256"] == manifest_sha256(inputs.manifest)
        pre = json.loads(f.attrs["preprocessing"])
        assert (
            pre["model_config"]["preprocess"]["spacing_mm"] == [6.0, 6.0, 12.0]
            and pre["ct_load"]["hu_policy"] == "header"
        )
        prov = json.loads(f.attrs["provenance"])
        assert prov["stage"] == "embed-ct" and prov["config"]["model"] == "tiny" and f.attrs["software_version"]
        assert f["ct"].shape == (9, 32) and f["labels"].shape == (9, 18)


def test_rerun_embeds_only_what_is_missing_and_another_checkpoint_is_refused(inputs, reference, tmp_path):
    out = inputs.root / "reference.h5"
    again = run_embed(config(inputs, out))
    assert again.done_before == 9 and again.done == 0 and set(again.failures) == set(BAD)  # failures retried
    before = out.read_bytes()
    other = write_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(CacheMismatchError, match="checkpoint_sha256.*--overwrite"):
        run_embed(config(inputs, out, checkpoint=other))
    assert out.read_bytes() == before  # refused before touching anything
    bad_ckpt = tmp_path / "truncated.pt"
    bad_ckpt.write_bytes(inputs.checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        run_embed(config(inputs, tmp_path / "new.h5", checkpoint=bad_ckpt))
    assert not (tmp_path / "new.h5").exists()


def test_overwrite_with_a_wrong_checkpoint_keeps_the_old_cache(inputs, reference, tmp_path):
    out = tmp_path / "emb.h5"
    shutil.copyfile(inputs.root / "reference.h5", out)
    before = out.read_bytes()
    bad_ckpt = tmp_path / "truncated.pt"
    bad_ckpt.write_bytes(inputs.checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        run_embed(config(inputs, out, checkpoint=bad_ckpt, overwrite=True))
    assert out.read_bytes() == before  # refused before the old cache was discarded


def test_a_one_part_checkpoint_is_refused_before_any_volume(inputs, tmp_path):
    from pipeline.embed.errors import EmbedError

    text_only = tmp_path / "text_only.pt"
    state = torch.load(inputs.checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith(("text_transformer.", "to_text_latent"))}, text_only)
    with pytest.raises(EmbedError, match="text_only.pt: has no visual part"):
        run_embed(config(inputs, tmp_path / "e.h5", checkpoint=text_only))
    assert not (tmp_path / "e.h5").exists()


def test_max_failures_stops_the_run_and_keeps_what_was_done(inputs, tmp_path):
    out = tmp_path / "emb.h5"
    with pytest.raises(TooManyFailures, match="max-failures 1"):
        run_embed(config(inputs, out, max_failures=1, batch_size=1))
    emb = load_embeddings(out)
    assert len(emb.failures) >= 2 and not set(emb.ids) & set(BAD)


KILL_AFTER_COMMITS = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from schemas.embed import EmbedConfig
    from pipeline.embed.stage import run_embed
    cfg = EmbedConfig.model_validate_json({cfg!r})
    commits = []
    parts = cfg.out.parent / (cfg.out.name + ".parts")
    def on_commit(n):
        commits.append(n)
        # Kill from the 3rd commit on, at the first one that left a shard pending (not merged into the file):
        # how many rows a commit holds depends on timing, so a fixed commit number may have been merged.
        pending = parts.is_dir() and any(not p.name.startswith(".") for p in parts.iterdir())
        if len(commits) >= 3 and pending:
            print(n, flush=True)  # rows committed so far: a commit may hold more than commit_every
            os.kill(os.getpid(), signal.SIGKILL)
    run_embed(cfg, on_commit=on_commit)
""")


def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(inputs, reference, tmp_path):
    out = tmp_path / "emb.h5"
    # 2 or more rows a commit; the 2nd commit is merged into the HDF5 file (4 >= 3 pending rows); later commits stay
    # shards until they hold as many rows as the file (merge_fraction 1), and the kill comes with one pending.
    # (CI once saw a 3-row 3rd commit merged under merge_fraction 0.25, leaving nothing pending.)
    cfg = config(inputs, out, batch_size=1, commit_every=2, merge_min_rows=3, merge_fraction=1.0)
    script = KILL_AFTER_COMMITS.format(root=str(ROOT), cfg=cfg.model_dump_json())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with h5py.File(out, "r") as f:  # readable as the kill left it
        in_file = set(f["ids"].asstr()[:])
    assert len(in_file) >= 4
    # The reader sees every committed row (file + pending commit files), with the values of an uninterrupted run.
    committed = int(proc.stdout.split()[-1])  # a commit holds the rows finished by then: 2 or more
    killed = load_embeddings(out)
    assert committed >= 6
    assert len(killed.ids) == committed and in_file < set(killed.ids) and set(killed.ids) <= set(reference[1].ids)
    ref = reference[1].index()
    np.testing.assert_allclose(killed.ct, reference[1].ct[[ref[v] for v in killed.ids]], atol=1e-5)
    np.testing.assert_allclose(killed.report, reference[1].report[[ref[v] for v in killed.ids]], atol=1e-5)
    np.testing.assert_array_equal(killed.labels, reference[1].labels[[ref[v] for v in killed.ids]])
    with pytest.warns(UserWarning, match="a run was interrupted"):
        assert set(load_embeddings(out, include_pending=False).ids) == in_file
    resumed = run_embed(cfg)
    assert resumed.done_before >= committed and resumed.done == 9 - resumed.done_before
    assert_same_rows(load_embeddings(out), reference[1])
    assert not [p for p in os.listdir(tmp_path / "emb.h5.parts")]


def test_dask_cluster_gives_the_same_rows(inputs, reference, tmp_path):
    out = tmp_path / "emb.h5"
    summary = run_embed(config(inputs, out, workers=1, batch_size=2, model_threads=1))
    assert summary.done == 9 and set(summary.failures) == set(BAD)
    assert_same_rows(load_embeddings(out), reference[1])


def test_cli(inputs, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    args = [
        "embed-ct",
        "--manifest",
        str(inputs.manifest),
        "--checkpoint",
        str(inputs.checkpoint),
        "--tokenizer",
        str(inputs.tokenizer),
        "--out",
        str(tmp_path / "e.h5"),
        "--model",
        "tiny",
        "--workers",
        "0",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "e.h5: 9 done, 4 failed in this run" in result.output and "0 done before; 13 items" in result.output
    log = (tmp_path / "e.h5.log").read_text()  # the run's full log, beside the cache
    assert "9 done, 4 failed in this run" in log and log.count("failed: valid_") == 4
    other = write_checkpoint(tmp_path / "other.pt", seed=2)
    result = CliRunner().invoke(app, args[:4] + [str(other)] + args[5:])
    assert result.exit_code == 2 and "another checkpoint" in result.output
    result = CliRunner().invoke(app, args[:8] + [str(tmp_path / "f.h5")] + args[9:] + ["--max-failures", "0"])
    assert result.exit_code == 1 and "error: stopped after 1 failures (--max-failures 0)" in result.output


def test_a_prefetch_smaller_than_a_batch_is_refused(inputs):
    # It would never fill a batch: the run used to wait forever.
    with pytest.raises(ValueError, match=r"prefetch \(1\) must be at least batch_size \(2\)"):
        config(inputs, inputs.root / "never.h5", prefetch=1, batch_size=2)
    assert config(inputs, inputs.root / "never.h5", prefetch=2, batch_size=2).prefetch == 2


def test_a_cluster_without_model_or_decode_workers_is_refused():
    from pipeline.embed.backends import count_workers
    from pipeline.embed.errors import EmbedError

    assert count_workers([{"resources": {"model": 1}}, {"resources": {"model": 1}}, {"resources": {"decode": 1}}]) == 2
    with pytest.raises(EmbedError, match="0 model and 1 decode.*--resources model=1"):
        count_workers([{"resources": {"decode": 1}}, {"resources": {}}])


def test_a_volume_that_breaks_the_batch_fails_alone(inputs):
    from pipeline.embed.model import ModelSpec
    from pipeline.embed.work import DecodedVolume, embed_batch

    spec = ModelSpec(
        checkpoint=str(inputs.checkpoint), tokenizer=str(inputs.tokenizer), model="tiny", device="cpu", precision="fp32"
    )
    good = np.random.default_rng(0).uniform(-1, 1, (1, 16, 32, 32)).astype(np.float32)
    volumes = [DecodedVolume("ok", good, 0.0, 0.0), DecodedVolume("bad", good[:, :8], 0.0, 0.0)]
    result = embed_batch(spec, volumes, ["there is no nodule."])
    assert (
        set(result.ct) == {"ok"}
        and "forward pass failed" in result.errors["bad"]
        and "(1, 8, 32, 32)" in result.errors["bad"]
    )
    model = load_ctclip(inputs.checkpoint, "tiny")
    np.testing.assert_allclose(result.ct["ok"], model.encode_ct(torch.from_numpy(good)[None])[0].numpy(), atol=1e-5)
    assert set(result.texts) == {"there is no nodule."}


def test_report_latents_are_dropped_after_their_last_row(inputs, reference, tmp_path):
    """A report's latent is held only while a row that uses it is unfinished: of the four reports
    (scans 0 and 4 share one, 3 scans apart) at most two are held at once with one volume in flight
    (a driver keeping every latent holds all four by the end); each report is still embedded once
    and the rows equal the reference's.

    Only the one-in-flight run has a fixed bound: with batches of 2 (the reference run), which rows
    share a batch depends on how many decodes finish between two waits (a CI run paired scans 1 and 2
    and held three), so there the count of embedded reports is what is checked."""
    out = tmp_path / "small.h5"
    summary = run_embed(config(inputs, out, batch_size=1, prefetch=1))
    assert summary.extras["report_latents_held_max"] <= 2
    for run in (summary, reference[0]):
        assert run.extras["texts_embedded"] == 4
    assert_same_rows(load_embeddings(out), reference[1])
