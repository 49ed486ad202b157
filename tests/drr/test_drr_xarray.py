"""The simulate-drr store in the xarray ecosystem: one Dataset with named dimensions and coordinates;
stores made before the dimension names keep working with the pipeline's readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.drr.preview import contact_sheet
from pipeline.drr.stage import run_stage
from pipeline.drr.store import failures, read_status
from schemas.drr import ItemStatus, PreviewConfig, SimulateDRRConfig
from schemas.labels import CT_RATE_LABELS

RENDER = {"views": ["pa", "lateral"], "geometry": {"size": 32, "detector_mm": 140.0, "sid_mm": 500.0, "sod_mm": 400.0}}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def _cfg(manifest, out, **kw) -> SimulateDRRConfig:
    return SimulateDRRConfig.model_validate({"manifest": manifest, "out": out, "render": RENDER, **kw})


def test_xarray_opens_the_store_as_one_dataset(tiny_set, client):
    cfg = _cfg(tiny_set, tiny_set.parent / "x.zarr", line_integrals=True)
    run_stage(cfg, client=client)
    group = zarr.open_group(str(cfg.out), mode="r")
    ds = xr.open_zarr(cfg.out, consolidated=False)
    assert dict(ds.sizes) == {"item": 5, "view": 2, "row": 32, "column": 32, "label": 18}
    assert ds["images"].dims == ("item", "view", "row", "column") and ds["images"].dtype == np.uint16
    assert ds["line_integrals"].dims == ("item", "view", "row", "column")
    assert ds["labels"].dims == ("item", "label") and ds["labels"].dtype == np.int8  # -1 stays -1, no NaN
    assert list(ds["view"].values) == ["pa", "lateral"] and list(ds["label"].values) == list(CT_RATE_LABELS)
    assert "ids" in ds.coords and list(ds["ids"].values) == [f"valid_{n}_a_1" for n in range(5)]
    # The same numbers as the pipeline's own reader, including the per-item status and error chunks.
    np.testing.assert_array_equal(ds["images"].values, group["images"][:])
    np.testing.assert_array_equal(ds["labels"].values, group["labels"][:])
    np.testing.assert_array_equal(ds["status"].values, read_status(group))
    assert {i: e for i, e in zip(ds["ids"].values, ds["errors"].values) if e} == dict(failures(group))
    # Selection by name: the lateral view of one volume, found by its id.
    lateral = ds.set_xindex("ids")["images"].sel(ids="valid_1_a_1", view="lateral")
    np.testing.assert_array_equal(lateral.values, group["images"][1, 1])


def _strip_dimension_names(store) -> None:
    """Make a store look like one written before the dimension names (and the name arrays) existed."""
    import shutil

    for name in ("view", "label"):
        shutil.rmtree(store / name)
    for meta in store.glob("*/zarr.json"):
        doc = json.loads(meta.read_text())
        doc.pop("dimension_names", None)
        doc.get("attributes", {}).pop("coordinates", None)
        meta.write_text(json.dumps(doc))


def test_a_store_made_before_the_dimension_names_still_works(tiny_set, client, tmp_path):
    cfg = _cfg(tiny_set, tiny_set.parent / "old.zarr", limit=2)
    run_stage(cfg, client=client)
    _strip_dimension_names(cfg.out)
    with pytest.raises(KeyError, match="dimension_names"):  # what xarray says of such a store
        xr.open_zarr(cfg.out, consolidated=False)
    summary = run_stage(cfg.model_copy(update={"limit": None}), client=client)  # continued, not refused
    assert (summary.done_before, summary.done, summary.failed) == (2, 1, 2)
    group = zarr.open_group(str(cfg.out), mode="r")
    np.testing.assert_array_equal(read_status(group), [1, 1, 1, 2, 2])
    assert "dimension_names" not in json.loads((cfg.out / "images" / "zarr.json").read_text())
    assert contact_sheet(PreviewConfig(store=cfg.out, out=tmp_path / "p.png", n=3, thumb=32)) == 3
    assert read_status(group).tolist().count(ItemStatus.DONE) == 3
