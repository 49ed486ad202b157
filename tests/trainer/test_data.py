"""The store + cache join on the chain's real stage outputs, its refusals, and the scan sampler."""

from __future__ import annotations

import shutil
from collections import Counter

import h5py
import numpy as np
import pytest
import zarr

from trainer.data import DataError, ScanBatchSampler, TrainDataset, join_split, patient_of


def test_join_keeps_items_done_in_store_and_present_in_cache(chain):
    split = join_split(chain.drr["train"], chain.embeddings["train"], ["pa", "lateral"])
    group = zarr.open_group(str(chain.drr["train"]), mode="r")
    with h5py.File(chain.embeddings["train"], "r") as f:
        cache_ids = list(f["ids"].asstr()[:])
        ct = f["ct"][:]
    store_ids = [str(v) for v in group["ids"][:]]
    assert sorted(split.volume_ids) == sorted(set(store_ids) & set(cache_ids))
    for i, vid in enumerate(split.volume_ids):  # latents and pixels belong to the same volume
        np.testing.assert_array_equal(split.ct[i], ct[cache_ids.index(vid)])
        raw = np.asarray(group["images"][store_ids.index(vid), 1])
        np.testing.assert_array_equal(split.read_image(i, "lateral"), raw.astype(np.float32) / 65535)
    assert split.latent_dim == 32 and split.prompts["x2ct_clip"]["positive"].shape == (18, 32)
    assert patient_of("train_12_a") == "train_12" and patient_of("scan7") == "scan7"


def test_pair_from_different_manifests_refused(chain):
    with pytest.raises(DataError, match="different manifests") as e:
        join_split(chain.drr["train"], chain.embeddings["valid"], ["pa"])
    assert str(chain.drr["train"]) in str(e.value) and str(chain.embeddings["valid"]) in str(e.value)


def test_pair_without_common_ids_refused(chain, tmp_path):
    cache = tmp_path / "valid-claims-train-manifest.h5"
    shutil.copy(chain.embeddings["valid"], cache)
    store_manifest = zarr.open_group(str(chain.drr["train"]), mode="r").attrs["provenance"]["manifest_sha256"]
    with h5py.File(cache, "r+") as f:  # same manifest on paper, but not one volume id in common
        f.attrs["manifest_sha256_history"] = f'["{store_manifest}"]'
    with pytest.raises(DataError, match="no volume ids in common") as e:
        join_split(chain.drr["train"], cache, ["pa"])
    assert str(cache) in str(e.value)


def test_store_without_finished_items_refused(chain, tmp_path):
    store = tmp_path / "pending.zarr"
    shutil.copytree(chain.drr["train"], store)
    group = zarr.open_group(str(store), mode="r+")
    group["status"][:] = 0
    group["status_snapshot"][:] = 0
    with pytest.raises(DataError, match="no finished items"):
        join_split(store, chain.embeddings["train"], ["pa"])


def test_cache_without_latents_and_missing_view_refused(chain, tmp_path):
    cache = tmp_path / "no-ct.h5"
    shutil.copy(chain.embeddings["train"], cache)
    with h5py.File(cache, "r+") as f:
        del f["ct"]
    from pipeline.embed.reader import NotACacheError

    with pytest.raises(NotACacheError, match="no-ct.h5 is not an embed-ct cache.*'ct'"):
        join_split(chain.drr["train"], cache, ["pa"])
    with pytest.raises(DataError, match="views"):
        join_split(chain.drr["train"], chain.embeddings["train"], ["ap"])


def test_sampler_one_sample_per_scan_per_epoch():
    # 9 scans; scan s has s % 3 + 1 reconstructions, each with 2 views -> samples numbered per scan
    groups, n = [], 0
    for s in range(9):
        k = 2 * (s % 3 + 1)
        groups.append(list(range(n, n + k)))
        n += k
    scan_of = {sample: s for s, g in enumerate(groups) for sample in g}
    sampler = ScanBatchSampler(groups, batch_size=4, seed=3)
    assert sampler.steps_per_epoch == 2
    seen = Counter()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 2
        drawn = [scan_of[key[0]] for b in batches for key in b]
        assert len(drawn) == len(set(drawn))  # no scan twice in an epoch, so never twice in a batch
        seen.update(key[0] for b in batches for key in b)
    assert set(seen) == set(range(n))  # across epochs every reconstruction and view is drawn
    sampler.set_epoch(7)
    again = list(sampler)
    sampler.set_epoch(7, start_step=1)
    assert list(sampler) == again[1:]  # a resumed epoch continues with the same batches


def test_sampler_splits_global_batch_over_ranks_and_micro_batches():
    groups = [[i] for i in range(24)]
    whole = ScanBatchSampler(groups, batch_size=8, seed=1)
    whole.set_epoch(2)
    full = list(whole)
    parts = []
    for rank in range(2):
        s = ScanBatchSampler(groups, batch_size=8, grad_accum=2, rank=rank, world_size=2, seed=1)
        s.set_epoch(2)
        parts.append(list(s))
    for step in range(3):
        for m in range(2):  # micro-batch m of the step = rank 0's slice then rank 1's
            got = parts[0][step * 2 + m] + parts[1][step * 2 + m]
            assert got == full[step][m * 4 : (m + 1) * 4]
    with pytest.raises(DataError, match="not divisible"):
        ScanBatchSampler(groups, batch_size=6, grad_accum=4)


def test_dataset_augmentation_is_a_function_of_the_key(chain):
    from schemas.train import AugmentConfig
    from trainer.encoder import resolve_encoder
    from trainer.transforms import TrainTransform

    split = join_split(chain.drr["train"], chain.embeddings["train"], ["pa"])
    ds = TrainDataset(split, TrainTransform(resolve_encoder("tiny", 32), AugmentConfig(clahe_p=0.5)))
    a, b, c = ds[(3, 11)], ds[(3, 11)], ds[(3, 12)]
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    np.testing.assert_array_equal(a["ct"].numpy(), split.ct[3])
