"""The chain's outputs agree with each other and with the files they were made from.

Each stage's output is checked against its inputs read another way: the manifest against the
synthetic set's CSVs and folders, the DRR store and the embedding cache against the manifest,
the provenance against the sha256 of the files, one cached latent against CT-CLIP run directly.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr

from pipeline.embed.reader import load_embeddings
from schemas.drr import ItemStatus
from schemas.embed import LABEL_MISSING
from schemas.labels import CT_RATE_LABELS, N_LABELS
from schemas.manifest import manifest_sha256, read_manifest
from schemas.provenance import file_sha256
from tests.helpers.chain import SPLITS, Chain


def _csv_labels(chain: Chain, split: str) -> dict[str, list[int]]:
    (path,) = (chain.synth / "multi_abnormality_labels").glob(f"{split}_*.csv")
    with path.open(newline="") as f:
        return {r["VolumeName"].removesuffix(".nii.gz"): [int(r[n]) for n in CT_RATE_LABELS] for r in csv.DictReader(f)}


@pytest.mark.parametrize("split", SPLITS)
def test_manifest_holds_every_synthetic_volume_with_its_csv_labels(chain, split):
    rows = read_manifest(chain.manifests[split])
    on_disk = sorted(p.name.removesuffix(".nii.gz") for p in (chain.synth / split).rglob("*.nii.gz"))
    assert sorted(r.volume_id for r in rows) == on_disk
    assert {r.split for r in rows} == {split}
    labels = _csv_labels(chain, split)
    assert {r.volume_id: r.labels for r in rows} == labels
    assert all(r.report.strip() for r in rows)
    assert not chain.manifests[split].with_name(chain.manifests[split].name + ".problems.jsonl").exists()


def test_splits_are_disjoint_by_patient_and_large_enough_to_train(chain):
    train, valid = (read_manifest(chain.manifests[s]) for s in SPLITS)
    assert not {r.patient_id for r in train} & {r.patient_id for r in valid}
    assert len(train) >= 16 and len(valid) >= 8


@pytest.mark.parametrize("split", SPLITS)
def test_drr_store_matches_its_manifest(chain, split):
    rows = read_manifest(chain.manifests[split])
    g = zarr.open_group(str(chain.drr[split]), mode="r")
    assert list(g["ids"][:]) == [r.volume_id for r in rows]  # items are manifest positions
    expected = np.array([[-1 if v is None else v for v in r.labels] for r in rows], np.int8)
    np.testing.assert_array_equal(g["labels"][:], expected)
    assert (g["status"][:] == ItemStatus.DONE).all()
    images = g["images"][:]
    assert images.shape == (len(rows), 2, 64, 64) and images.dtype == np.uint16
    # each image is windowed to the full uint16 range; two different patients never render alike
    assert (images.reshape(len(rows) * 2, -1).max(axis=1) > 60000).all()
    assert not np.array_equal(images[0], images[-1])
    prov = g.attrs["provenance"]
    assert prov["manifest_sha256"] == manifest_sha256(chain.manifests[split]) == file_sha256(chain.manifests[split])
    assert g.attrs["layout"]["views"] == ["pa", "lateral"]


@pytest.mark.parametrize("split", SPLITS)
def test_embedding_cache_matches_its_manifest_and_checkpoint(chain, split):
    rows = {r.volume_id: r for r in read_manifest(chain.manifests[split])}
    emb = load_embeddings(chain.embeddings[split])
    assert sorted(emb.ids) == sorted(rows) and not emb.failures
    for i, vid in enumerate(emb.ids):
        want = [LABEL_MISSING if v is None else v for v in rows[vid].labels]
        assert emb.labels[i].tolist() == want
        assert emb.scan_ids[i] == rows[vid].scan_id
    assert emb.labels.shape == (len(rows), N_LABELS)
    np.testing.assert_allclose(np.linalg.norm(emb.ct, axis=1), 1.0, atol=1e-5)
    # reconstructions of one scan share a report, hence a report latent; different reports differ
    by_report: dict[str, list[int]] = {}
    for i, vid in enumerate(emb.ids):
        by_report.setdefault(rows[vid].report, []).append(i)
    for idx in by_report.values():
        np.testing.assert_array_equal(emb.report[idx], np.repeat(emb.report[idx[:1]], len(idx), axis=0))
    firsts = emb.report[[idx[0] for idx in by_report.values()]]
    assert len(np.unique(firsts.round(5), axis=0)) == len(by_report)
    assert emb.provenance.manifest_sha256 == file_sha256(chain.manifests[split])
    assert emb.provenance.checkpoint_sha256 == file_sha256(chain.checkpoint)
    assert emb.identity.checkpoint_sha256 == file_sha256(chain.checkpoint)


def test_a_cached_ct_latent_equals_ctclip_run_directly(chain):
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.ctclip.checkpoint import load_ctclip
    from pipeline.ctclip.preprocess import preprocess_ct

    emb = load_embeddings(chain.embeddings["valid"])
    row = read_manifest(chain.manifests["valid"])[-1]
    model = load_ctclip(chain.checkpoint, "tiny")
    x = preprocess_ct(load_ct(row.ct_path), model.cfg)[None]
    with torch.no_grad():
        direct = model.encode_ct(x)[0].numpy()
    np.testing.assert_allclose(emb.ct[emb.index()[row.volume_id]], direct, atol=1e-5)
