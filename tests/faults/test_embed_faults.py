"""embed-ct and ctclip inspect given bad input: exit status, one line naming the item, finished work unchanged."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.embed.reader import load_embeddings
from schemas.embed import embed_row_sha256
from tests.faults.conftest import cli, embed_args, tree_digest


def _folder_listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["jsonl", "txt", "nifti", "hdf5", "folder", "fifo"])
def test_overwrite_refuses_what_is_not_an_embed_ct_cache(embed_inputs, tmp_path, kind):
    """--overwrite replaces only a cache of this stage: other files, folders and device-like nodes are left alone."""
    target = {
        "jsonl": tmp_path / "manifest.jsonl",
        "txt": tmp_path / "notes.txt",
        "nifti": tmp_path / "ct.nii.gz",
        "hdf5": tmp_path / "other.h5",
        "folder": tmp_path / "results",
        "fifo": tmp_path / "pipe",
    }[kind]
    if kind == "jsonl":
        target.write_bytes(embed_inputs.manifest.read_bytes())
    elif kind == "txt":
        target.write_text("my notes\n")
    elif kind == "nifti":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(target))
    elif kind == "hdf5":
        import h5py

        with h5py.File(target, "w") as f:
            f["x"] = np.arange(3)
    elif kind == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    else:
        os.mkfifo(target)  # stands for a device node such as /dev/null: not a regular file
    before = tree_digest(tmp_path) if kind != "fifo" else {}
    listing = _folder_listing(tmp_path)
    res = cli(*embed_args(embed_inputs, target, "--overwrite"))
    assert res.exit_code == 2
    assert str(target) in res.error_line and (
        "not an embed-ct cache" in res.error_line or "not a regular file" in res.error_line
    )
    if kind != "fifo":
        assert tree_digest(tmp_path) == before
    assert _folder_listing(tmp_path) == listing  # no lock file, no temporary file or folder left beside it


def test_empty_manifest_is_an_error_and_leaves_the_cache(embed_inputs, cache_copy, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    before = tree_digest(cache_copy)
    for extra in ((), ("--overwrite",)):
        res = cli(*embed_args(embed_inputs, cache_copy, *extra, manifest=empty))
        assert res.exit_code == 2 and "empty.jsonl" in res.error_line and "no rows" in res.error_line
        assert tree_digest(cache_copy) == before


def test_latin1_manifest_is_one_line(embed_inputs, cache_copy, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    text = embed_inputs.manifest.read_text().replace("The heart", "Th\u00e9 heart", 1)
    bad.write_bytes(text.encode("latin-1"))
    res = cli(*embed_args(embed_inputs, cache_copy, manifest=bad))
    assert res.exit_code == 2 and "latin1.jsonl:1: not UTF-8" in res.error_line


@pytest.fixture(scope="module")
def bad_checkpoints(embed_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-ckpt")
    state = torch.load(embed_inputs.checkpoint, weights_only=True)
    key = "visual_transformer.to_patch_emb_first_frame.1.weight"
    assert key in state
    nan = dict(state)
    nan[key] = state[key].clone()
    nan[key][0] = float("nan")
    torch.save(nan, folder / "nan.pt")
    inf = dict(state, temperature=torch.tensor(float("inf")))
    torch.save(inf, folder / "inf.pt")
    (folder / "empty.pt").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "name, why", [("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("empty", "not a readable")]
)
def test_bad_checkpoint_refused_by_inspect_and_embed_ct(embed_inputs, bad_checkpoints, cache_copy, tmp_path, name, why):
    ckpt = bad_checkpoints / f"{name}.pt"
    res = cli("ctclip", "inspect", ckpt, "--model", "tiny")
    assert res.exit_code == 2 and f"{name}.pt" in res.error_line and why in res.error_line
    before = tree_digest(cache_copy)
    args = embed_args(embed_inputs, tmp_path / "new.h5")
    args[args.index("--checkpoint") + 1] = ckpt
    res = cli(*args)
    assert res.exit_code == 2 and f"{name}.pt" in res.error_line and why in res.error_line
    assert not (tmp_path / "new.h5").exists()
    args[args.index("--out") + 1] = cache_copy
    assert cli(*args, "--overwrite").exit_code == 2
    assert tree_digest(cache_copy) == before  # --overwrite with a refused checkpoint keeps the old cache


def test_nan_volume_is_a_failed_item_not_a_latent(embed_inputs, tmp_path):
    """A volume of NaN voxels passes every air-check comparison; it must be recorded failed, with the count."""
    manifest = tmp_path / "m.jsonl"
    rows = [json.loads(line) for line in embed_inputs.manifest.read_text().splitlines()]
    img = nib.load(str(embed_inputs.root / rows[0]["ct_path"]))
    nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine), str(tmp_path / "nan.nii.gz"))
    rows[0]["ct_path"] = str(tmp_path / "nan.nii.gz")
    for r in rows[1:]:
        r["ct_path"] = str(embed_inputs.root / r["ct_path"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "emb.h5"
    res = cli(*embed_args(embed_inputs, out, manifest=manifest))
    assert res.exit_code == 0, res.stderr  # the other volume was embedded
    emb = load_embeddings(out)
    n = int(np.prod(img.shape))
    assert rows[0]["volume_id"] not in emb.ids and f"non-finite voxels: {n}" in emb.failures[rows[0]["volume_id"]]
    assert np.isfinite(emb.ct).all() and np.isfinite(emb.report).all()


def test_non_finite_latent_is_never_committed(embed_inputs, tmp_path, monkeypatch):
    """Should the model itself give NaN (overflow in bf16, a damaged GPU), the row fails instead of being stored."""
    from pipeline.embed import model as model_mod

    real, calls = model_mod.LoadedModel.encode_volumes, []

    def nan_on_first_call(self, volumes):
        z = real(self, volumes)
        calls.append(len(volumes))
        if len(calls) == 1:
            z[0] = np.nan
        return z

    monkeypatch.setattr(model_mod.LoadedModel, "encode_volumes", nan_on_first_call)
    monkeypatch.setattr(model_mod, "_LOADED", {})
    out = tmp_path / "emb.h5"
    res = cli(*embed_args(embed_inputs, out, "--batch-size", "1"))
    assert res.exit_code == 0, res.stderr
    emb = load_embeddings(out)
    assert calls[0] == 1 and len(emb.failures) == 1 and "non-finite" in next(iter(emb.failures.values()))
    assert len(emb.ids) == len(embed_inputs.rows) - 1 and np.isfinite(emb.ct).all()


def test_changed_rows_are_refused_by_name(embed_inputs, cache_copy, tmp_path):
    """Same ids pointing at other files (or other reports) must not be answered 'already there'."""
    rows = [json.loads(line) for line in embed_inputs.manifest.read_text().splitlines()]
    rows[0]["ct_path"], rows[1]["ct_path"] = rows[1]["ct_path"], rows[0]["ct_path"]
    swapped = embed_inputs.root / "swapped.jsonl"
    swapped.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = tree_digest(cache_copy)
    res = cli(*embed_args(embed_inputs, cache_copy, manifest=swapped))
    assert res.exit_code == 2 and "2 manifest row(s) changed" in res.error_line
    assert rows[0]["volume_id"] in res.error_line and rows[1]["volume_id"] in res.error_line
    assert tree_digest(cache_copy) == before
    # The cache records what each row was made from, in the file and as read back.
    emb = load_embeddings(cache_copy)
    assert emb.row_sha256 == [
        embed_row_sha256(r) for r in sorted(embed_inputs.rows, key=lambda r: emb.ids.index(r.volume_id))
    ]
    # --overwrite embeds the edited manifest afresh.
    assert cli(*embed_args(embed_inputs, cache_copy, "--overwrite", manifest=swapped)).exit_code == 0


@pytest.mark.parametrize("bad_id", ["valid_0_a\u0000_1", "valid_0_a\u001b_1", "valid_0_a\ud800_1"])
def test_unstorable_id_is_refused_and_the_store_stays_usable(embed_inputs, cache_copy, tmp_path, bad_id):
    rows = [json.loads(line) for line in embed_inputs.manifest.read_text().splitlines()]
    rows.append(dict(rows[0], volume_id=bad_id))
    manifest = embed_inputs.root / "bad_id.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = tree_digest(cache_copy)
    res = cli(*embed_args(embed_inputs, cache_copy, manifest=manifest))
    assert res.exit_code == 2 and f"bad_id.jsonl:{len(rows)}" in res.error_line and "volume_id" in res.error_line
    assert tree_digest(cache_copy) == before
    res = cli(*embed_args(embed_inputs, cache_copy))  # the next run into the same --out works
    n = len(embed_inputs.rows)
    assert res.exit_code == 0 and "0 done, 0 failed in this run" in res.stderr and f"{n} done before" in res.stderr


def test_every_item_failed_exits_1(embed_inputs, tmp_path):
    rows = [json.loads(line) for line in embed_inputs.manifest.read_text().splitlines()]
    for r in rows:
        r["ct_path"] = str(tmp_path / "missing.nii.gz")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli(*embed_args(embed_inputs, tmp_path / "emb.h5", manifest=manifest))
    assert res.exit_code == 1 and "every volume this run tried failed (2)" in res.error_line
    res = cli(*embed_args(embed_inputs, tmp_path / "emb2.h5", "--max-failures", "0", manifest=manifest))
    assert res.exit_code == 1 and "--max-failures 0" in res.error_line
