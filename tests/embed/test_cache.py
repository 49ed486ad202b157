"""The embedding cache on its own: layout, atomic commits, crash recovery, identity, one writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.embed.cache import CacheHeader, CacheMismatchError, EmbeddingCache, prompt_texts
from pipeline.embed.reader import load_embeddings
from pipeline.embed.shards import Rows
from pipeline.runtime import OutputBusyError
from schemas.embed import PROMPT_TEMPLATES, ROW_CHUNK, EmbedIdentity
from schemas.labels import CT_RATE_LABELS
from schemas.provenance import Provenance

ROOT = Path(__file__).resolve().parents[2]


def identity(ckpt: str = "a" * 64) -> EmbedIdentity:
    return EmbedIdentity(
        checkpoint_sha256=ckpt,
        tokenizer_sha256="b" * 64,
        model_config_json={"dim_latent": 512},
        ct_load={"hu_policy": "header"},
        precision="fp32",
    )


def header(ident: EmbedIdentity, seed: int = 0) -> CacheHeader:
    rng = np.random.default_rng(seed)
    prompts = {
        s: {k: rng.standard_normal((18, 512)).astype(np.float32) for k in ("positive", "negative")}
        for s in PROMPT_TEMPLATES
    }
    prov = Provenance(
        stage="embed-ct",
        software_version="0.1.0",
        config={"x": 1},
        config_sha256=ident.sha256(),
        manifest_sha256="m" * 64,
        checkpoint_sha256=ident.checkpoint_sha256,
    )
    return CacheHeader(identity=ident, provenance=prov, temperature=4.6052, prompts=prompts)


def make_rows(start: int, n: int, failed: tuple[str, ...] = ()) -> Rows:
    """Rows whose values are a function of the id number, so any row can be checked on its own."""
    k = np.arange(start, start + n, dtype=np.float32)[:, None]
    return Rows(
        ids=[f"valid_{i}_a_1" for i in range(start, start + n)],
        scan_ids=[f"valid_{i}_a" for i in range(start, start + n)],
        ct=k + np.arange(512, dtype=np.float32) / 1000,
        report=-k - np.arange(512, dtype=np.float32) / 1000,
        labels=(np.arange(18)[None, :] + k.astype(int)) % 2 == 0,
        failed_ids=list(failed),
        failed_reasons=[f"bad {f}" for f in failed],
    )


def check_row(emb, vid: str) -> None:
    i = emb.index()[vid]
    k = float(vid.split("_")[1])
    np.testing.assert_array_equal(emb.ct[i], k + np.arange(512, dtype=np.float32) / 1000)
    np.testing.assert_array_equal(emb.report[i], -k - np.arange(512, dtype=np.float32) / 1000)
    np.testing.assert_array_equal(emb.labels[i], (np.arange(18) + int(k)) % 2 == 0)


def test_layout_and_attributes(tmp_path):
    out = tmp_path / "emb.h5"
    ident, head = identity(), header(identity())
    with EmbeddingCache.open(out, ident) as cache:
        assert not cache.exists
        cache.create(head)
        cache.commit(make_rows(0, 5, failed=("valid_99_a_1",)))
        cache.commit(make_rows(5, 3))
    emb = load_embeddings(out)
    assert emb.ids == [f"valid_{i}_a_1" for i in range(8)] and emb.scan_ids[7] == "valid_7_a"
    for vid in emb.ids:
        check_row(emb, vid)
    assert emb.failures == {"valid_99_a_1": "bad valid_99_a_1"}
    assert emb.temperature == pytest.approx(4.6052)
    with h5py.File(out, "r") as f:
        assert f["ct"].dtype == np.float32 and f["labels"].dtype == np.uint8
        assert f["ct"].chunks == (ROW_CHUNK, 512) and f["ct"].compression == "gzip"
        assert list(f["label_names"].asstr()[:]) == list(CT_RATE_LABELS)
        for s, (pos, neg) in PROMPT_TEMPLATES.items():
            g = f[f"prompts/{s}"]
            assert (g.attrs["template_positive"], g.attrs["template_negative"]) == (pos, neg)
            np.testing.assert_array_equal(g["positive"][:], head.prompts[s]["positive"])
            assert list(g["negative_text"].asstr()[:]) == prompt_texts(s)["negative"]
        assert f.attrs["checkpoint_sha256"] == "a" * 64
        assert json.loads(f.attrs["preprocessing"])["ct_load"] == {"hu_policy": "header"}
        assert f.attrs["manifest_sha256"] == "m" * 64 and f.attrs["software_version"] == "0.1.0"
        assert f.attrs["created"] and json.loads(f.attrs["provenance"])["stage"] == "embed-ct"
    assert prompt_texts("x2ct_clip")["negative"][2] == "There is no Cardiomegaly."
    assert prompt_texts("ct_clip")["positive"][0] == "Medical material is present."
    assert not list((tmp_path / "emb.h5.parts").glob("*.npz"))


def test_rerun_with_another_checkpoint_is_refused(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 2))
    with pytest.raises(CacheMismatchError, match="checkpoint_sha256.*--overwrite"):
        EmbeddingCache.open(out, identity("c" * 64))
    with EmbeddingCache.open(out, identity("c" * 64), overwrite=True) as cache:  # --overwrite starts again
        assert not cache.exists and cache.done_ids() == set()


def test_overwrite_replaces_the_file_only_when_the_new_one_is_created(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.merge_min_rows = 10
        cache.commit(make_rows(0, 2))
        cache.merge()
        cache.commit(make_rows(2, 2))
        cache._pending = []  # as if killed: rows 2, 3 only in a shard
    refused = EmbeddingCache.open(out, identity("c" * 64), overwrite=True)
    assert not refused.exists and refused.done_ids() == set()
    refused.close()  # e.g. the new checkpoint failed to load: nothing was created
    with EmbeddingCache.open(out, identity()) as cache:  # the old cache and its shard are intact
        assert cache.done_ids() == {f"valid_{i}_a_1" for i in range(4)}
    with EmbeddingCache.open(out, identity("c" * 64), overwrite=True) as cache:
        cache.create(header(identity("c" * 64)))
        assert cache.exists and cache.done_ids() == set() and not cache.shards.files()
    emb = load_embeddings(out)
    assert emb.ids == [] and emb.identity.checkpoint_sha256 == "c" * 64


def test_failure_cleared_when_the_item_later_succeeds(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 2, failed=("valid_5_a_1", "valid_6_a_1")))
    with EmbeddingCache.open(out, identity()) as cache:
        assert cache.done_ids() == {"valid_0_a_1", "valid_1_a_1"}
        cache.commit(make_rows(5, 1))
    assert load_embeddings(out).failures == {"valid_6_a_1": "bad valid_6_a_1"}


def test_one_writer_at_a_time(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()):
        with pytest.raises(OutputBusyError, match="being written by another embed-ct run"):
            EmbeddingCache.open(out, identity())


def test_merges_when_pending_rows_reach_the_threshold(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.merge_min_rows = 4
        cache.commit(make_rows(0, 3))
        assert cache.n_pending == 3 and len(cache.shards.files()) == 1
        cache.commit(make_rows(3, 1))  # 4 pending >= max(4, 0.25 * 0): merged
        assert cache.n_pending == 0 and not cache.shards.files()
        assert len(load_embeddings(out).ids) == 4


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.embed.test_cache import identity, header, make_rows
    from pipeline.embed.cache import EmbeddingCache
    cache = EmbeddingCache.open({out!r}, identity())
    cache.create(header(identity()))
    cache.merge_min_rows = 3
    cache.commit(make_rows(0, 2))
    cache.commit(make_rows(2, 2))   # merged into the HDF5 file
    cache.commit(make_rows(4, 2))   # only in a shard
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkill_keeps_every_committed_row(tmp_path):
    out = tmp_path / "emb.h5"
    script = KILLER.format(root=str(ROOT), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with h5py.File(out, "r") as f:  # readable as it stands, holding the rows merged before the kill
        assert sorted(f["ids"].asstr()[:]) == [f"valid_{i}_a_1" for i in range(4)]
    with pytest.warns(UserWarning, match="interrupted"):
        assert len(load_embeddings(out, include_pending=False).ids) == 4
    pending = load_embeddings(out)  # the reader folds the pending commit in, without writing
    assert sorted(pending.ids) == sorted(f"valid_{i}_a_1" for i in range(6))
    for vid in pending.ids:
        check_row(pending, vid)
    with EmbeddingCache.open(out, identity()) as cache:  # the next run folds the shard in
        assert cache.done_ids() == {f"valid_{i}_a_1" for i in range(6)}
    emb = load_embeddings(out)
    assert sorted(emb.ids) == sorted(f"valid_{i}_a_1" for i in range(6))
    for vid in emb.ids:
        check_row(emb, vid)


def test_kill_during_merge_leaves_no_duplicates_or_junk(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 3))
        shard = cache.shards.files()[0]
        saved = shard.read_bytes()
    # The state of a kill after the merged file was renamed into place but before the shard was
    # deleted, with a half-written temporary copy and a half-written shard lying around.
    shard.write_bytes(saved)
    # Leftovers named as runtime.atomic_path names its temporaries, and as older versions did.
    (tmp_path / ".emb.h5.tmp-0123abcd.h5").write_bytes(b"\x89HDF half")
    (tmp_path / ".emb.h5.tmp-12345").write_bytes(b"\x89HDF half")
    (shard.parent / ".00000009.npz.tmp-0123abcd.npz").write_bytes(b"PK half")
    (shard.parent / ".00000009.npz.tmp").write_bytes(b"PK half")
    with EmbeddingCache.open(out, identity()) as cache:
        assert cache.n_pending == 0 and cache.done_ids() == {f"valid_{i}_a_1" for i in range(3)}
    assert sorted(os.listdir(tmp_path)) == ["emb.h5", "emb.h5.lock", "emb.h5.parts"]
    assert os.listdir(shard.parent) == []
    assert len(load_embeddings(out).ids) == 3


def test_damaged_shard_is_set_aside_and_its_rows_redone(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 2))
        cache.commit(make_rows(2, 2))
        files = cache.shards.files()
        cache._pending = []  # as if killed: nothing merged
    files[1].write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unusable commit file"):
        cache = EmbeddingCache.open(out, identity())
    assert cache.done_ids() == {"valid_0_a_1", "valid_1_a_1"}
    cache.close()
    assert (files[1].parent / (files[1].name + ".bad")).exists()


def test_datasets_carry_dimension_scales_through_merges(tmp_path):
    out = tmp_path / "emb.h5"
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 5, failed=("valid_99_a_1",)))
        cache.merge()  # a copy of the file, resized: the scales must follow
        cache.commit(make_rows(5, 3))
    with h5py.File(out, "r") as f:
        ids = list(f["ids"].asstr()[:])
        assert ids == [f"valid_{i}_a_1" for i in range(8)]
        for name in ("scan_ids", "ct", "report", "labels"):
            assert f[name].dims[0].label == "item" and f[name].dims[0][0].name == "/ids"
        assert [d.label for d in f["ct"].dims] == ["item", "latent"]
        assert list(f["labels"].dims[1][0].asstr()[:]) == list(CT_RATE_LABELS)
        assert f["failures/reasons"].dims[0][0].name == "/failures/ids"
        assert list(f["failures/reasons"].dims[0][0].asstr()[:]) == ["valid_99_a_1"]
        assert f["prompts/x2ct_clip/positive"].dims[0][0].name == "/label_names"


def test_a_cache_made_before_the_dimension_scales_is_continued(tmp_path, monkeypatch):
    import pipeline.embed.cache as cache_mod

    out = tmp_path / "emb.h5"
    monkeypatch.setattr(cache_mod, "_name_dimensions", lambda f: None)  # as before the scales existed
    with EmbeddingCache.open(out, identity()) as cache:
        cache.create(header(identity()))
        cache.commit(make_rows(0, 2))
    monkeypatch.undo()
    with EmbeddingCache.open(out, identity()) as cache:
        cache.commit(make_rows(2, 2))
    assert load_embeddings(out).ids == [f"valid_{i}_a_1" for i in range(4)]
    with h5py.File(out, "r") as f:
        assert f["ct"].dims[0].label == ""  # still none: a cache is not rewritten to add them
