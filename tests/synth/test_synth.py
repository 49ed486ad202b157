"""The synthetic miniature CT-RATE: layout, determinism, loading, label-anatomy consistency, labels, reports."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import label as cc_label
from scipy.ndimage import median_filter

from pipeline.ct_io import AirCheckError, load_ct
from pipeline.manifests.ct_rate import build_ct_rate
from pipeline.runtime import TMP_MARK
from pipeline.synth.abnormalities import nodule_centers
from pipeline.synth.findings import LABEL_MODEL, Findings, draw_details
from pipeline.synth.plan import build_plan
from pipeline.synth.writer import records, render_volume, synthesize, volume_path
from schemas.ct import CTLoadConfig
from schemas.labels import CT_RATE_LABELS
from schemas.stages import CTRateManifestConfig, SynthConfig

# seed 4 at n=8 gives both splits, both storage conventions, and positives and negatives for the checked labels
SEED, N, SIZE = 4, 8, 64


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    cfg = SynthConfig(out=tmp_path_factory.mktemp("synth") / "ct-rate", n=N, size=SIZE, seed=SEED, workers=2)
    recs = synthesize(cfg, progress=False)
    plan = build_plan(cfg)
    vols = [(p, s, r) for p in plan for s in p.scans for r in s.recons]
    return cfg, plan, vols, recs


def _phantom_axes(vol, table_offset):
    """Patient-frame mm of the voxel centres, from the loaded affine (RAS) and the scan's table position."""
    a, n = vol.affine, vol.hu.shape
    x = -(a[0, 0] * np.arange(n[0]) + a[0, 3]) - table_offset[0]
    y = -(a[1, 1] * np.arange(n[1]) + a[1, 3]) - table_offset[1]
    z = a[2, 2] * np.arange(n[2]) + a[2, 3] - table_offset[2]
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _grid_axes(grid):
    return grid.coords()


# ---- measurements (thresholds on HU inside regions recomputed from the phantom's normal geometry) -------------
def effusion_fraction(hu, chest, X, Y, Z, side) -> float:
    """Share of the posterior lung base of ``side`` that is fluid-dense (-10..30 HU after an in-plane 3x3 median).

    The median removes noise and thin vessels; collapsed or consolidated lung (~35-55 HU, with air bronchograms)
    and liver (~58 HU) stay outside the window.
    """
    region = chest.posterior_base_region(side, X, Y, Z) & chest.lung_mask(side, X, Y, Z)
    assert region.sum() > 20
    med = median_filter(hu, size=(3, 3, 1))[region]
    return float(((med >= -10) & (med <= 30)).mean())


def emphysema_fraction(hu, chest, X, Y, Z) -> float:
    lungs = chest.lung_mask("right", X, Y, Z) | chest.lung_mask("left", X, Y, Z)
    return float((hu[lungs] < -950).mean())


def cardiothoracic_ratio(hu, chest, X, Y, Z) -> float:
    """Widest soft-tissue run through the heart's centre column / widest span of the lungs, over the heart's slices.

    Lungs are found by threshold (< -400 HU, not connected to the outside air); only the heart's position comes
    from the phantom, to pick the slices (above the right dome, where the liver does not border the heart) and
    the column to measure along.
    """
    hc, hr, _ = chest.heart
    xs, ys, zs = X[:, 0, 0], Y[0, :, 0], Z[0, 0, :]
    i0 = int(np.argmin(np.abs(xs - hc[0])))
    best_heart = best_thorax = 0
    slices = (zs > chest.dome_z("right") + 15.0) & (zs < hc[2] + 0.6 * hr[2])
    for k in np.nonzero(slices)[0]:
        air = median_filter(hu[:, :, k], size=3) < -400
        lab, _ = cc_label(air)
        outside = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        lung = air & ~np.isin(lab, outside)
        cols = np.nonzero(lung.any(axis=1))[0]
        if len(cols) < 2:
            continue
        best_thorax = max(best_thorax, cols.max() - cols.min() + 1)
        for j in np.nonzero(np.abs(ys - hc[1]) < 0.4 * hr[1])[0]:
            row = lung[:, j]
            if row[i0]:
                continue
            left = np.nonzero(row[i0:])[0]
            right = np.nonzero(row[:i0][::-1])[0]
            if len(left) and len(right):
                best_heart = max(best_heart, left[0] + right[0] + 1)
    return best_heart / best_thorax


def _voxel(grid_axes, point):
    return tuple(int(np.argmin(np.abs(ax.ravel() - c))) for ax, c in zip(grid_axes, point))


# ---- layout, determinism, manifest -----------------------------------------------------------------------------
def test_layout_and_tables(dataset):
    cfg, plan, vols, recs = dataset
    root = cfg.out
    assert len(vols) == N == len(recs)
    for p, s, r in vols:
        path = volume_path(root, p, s, r)
        assert path.is_file()
        assert path.relative_to(root).parts[:3] == (
            p.split,
            f"{p.split}_{p.number}",
            f"{p.split}_{p.number}_{s.scan_id}",
        )
    assert {p.split for p in plan} == {"train", "valid"}
    assert any(len(s.recons) == 2 for p in plan for s in p.scans)
    for rel, columns in {
        "radiology_text_reports/validation_reports.csv": ["VolumeName", "Findings_EN", "Impressions_EN"],
        "multi_abnormality_labels/valid_predicted_labels.csv": ["VolumeName", *CT_RATE_LABELS],
        "metadata/validation_metadata.csv": ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"],
    }.items():
        with (root / rel).open(encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == columns
        assert all(r[0].startswith("valid_") and r[0].endswith(".nii.gz") for r in rows[1:])
    assert not list(root.rglob(f"*{TMP_MARK}*")), "no temporaries left"
    log = root.with_name(root.name + ".log").read_text()  # the run's log, beside the folder
    assert f"wrote {N} volumes" in log


def test_same_config_same_bytes(dataset, tmp_path):
    cfg, *_ = dataset
    again = cfg.model_copy(update={"out": tmp_path / "again", "workers": 1})
    synthesize(again, progress=False)
    files = sorted(
        p.relative_to(cfg.out) for p in cfg.out.rglob("*") if p.is_file() and p.name != "synth_provenance.json"
    )
    assert files == sorted(
        p.relative_to(again.out) for p in again.out.rglob("*") if p.is_file() and p.name != "synth_provenance.json"
    )
    for rel in files:
        assert (cfg.out / rel).read_bytes() == (again.out / rel).read_bytes(), rel


def test_different_seed_differs(dataset):
    cfg, plan, *_ = dataset
    other = build_plan(cfg.model_copy(update={"seed": SEED + 1}))
    assert [s.findings.labels for p in other for s in p.scans] != [s.findings.labels for p in plan for s in p.scans]


def test_ct_rate_manifest_reads_output_unchanged(dataset, tmp_path):
    cfg, plan, vols, recs = dataset
    by_name = {r.name: r for r in recs}
    total = 0
    for split in ("train", "valid"):
        result = build_ct_rate(CTRateManifestConfig(root=cfg.out, split=split, out=tmp_path / f"{split}.jsonl"))
        assert result.problems == []
        for row in result.rows:
            rec = by_name[row.volume_id]
            assert row.split == split == rec.split
            assert row.labels == rec.labels
            assert row.findings == rec.findings and row.impressions == rec.impressions
            assert row.slope == 1.0 and row.intercept == -1024.0
            assert row.spacing == pytest.approx(rec.spacing, abs=1e-6)
        total += len(result.rows)
    assert total == N
    # reconstructions of one scan share report and labels
    for p in plan:
        for s in p.scans:
            texts = {
                (by_name[p.volume_name(s, r)].findings, tuple(by_name[p.volume_name(s, r)].labels)) for r in s.recons
            }
            assert len(texts) == 1


# ---- loading: HU policy, orientation, padding -------------------------------------------------------------------
def test_volumes_load_with_default_policy_and_both_storages(dataset):
    cfg, plan, vols, recs = dataset
    storages = set()
    for p, s, r in vols:
        path = volume_path(cfg.out, p, s, r)
        img = nib.load(str(path))
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        inter = float(img.dataobj.inter)
        assert inter == (-1024.0 if r.storage == "offset" else 0.0)
        storages.add(r.storage)
        vol = load_ct(path)  # default: hu_policy 'header' with the air check
        assert vol.hu_scaling == ("header" if r.storage == "offset" else "none")
        assert vol.spacing == pytest.approx((s.fov_mm / SIZE, s.fov_mm / SIZE, r.slice_mm), rel=1e-5)
        assert vol.hu.min() >= -1024 and vol.hu.max() <= 3071
        # the scanner's padding outside the circular field of view: stored -2048 HU, loaded as air
        raw = np.asarray(img.get_fdata())
        assert raw[0, 0, :].max() == -2048 and np.all(vol.hu[0, 0, :] == -1000)
        # with the CSV's slope/intercept forced, files storing plain HU read 1024 too low: the air check refuses them
        csv_cfg = CTLoadConfig(hu_policy="csv")
        if r.storage == "offset":
            np.testing.assert_array_equal(load_ct(path, csv_cfg, slope=1.0, intercept=-1024.0).hu, vol.hu)
        else:
            with pytest.raises(AirCheckError):
                load_ct(path, csv_cfg, slope=1.0, intercept=-1024.0)
    assert storages == {"offset", "direct"}


def test_tissue_densities(dataset):
    """Air, fat, lung and bone read what an unenhanced chest CT shows."""
    cfg, plan, vols, recs = dataset
    p, s, r = vols[0]
    vol = load_ct(volume_path(cfg.out, p, s, r))
    chest = p.chest(s)
    X, Y, Z = _phantom_axes(vol, s.table_offset)
    hu = median_filter(vol.hu, size=3)
    lungs = chest.lung_mask("right", X, Y, Z) | chest.lung_mask("left", X, Y, Z)
    assert -900 < np.median(hu[lungs]) < -750
    spine = (X**2 + (Y - chest.spine_y) ** 2 < (0.5 * p.anatomy.spine_radius) ** 2) & (Z > 10) & (Z < 250)
    assert np.median(hu[np.broadcast_to(spine, hu.shape)]) > 120
    body_r = np.sqrt((X / p.anatomy.body_rx) ** 2 + (Y / p.anatomy.body_ry) ** 2)
    outside = np.broadcast_to((body_r > 1.08) & (body_r < 1.3), hu.shape)
    assert np.median(hu[outside]) == pytest.approx(-1000, abs=30)


# ---- label-anatomy consistency on the written data set ----------------------------------------------------------
def _loaded(dataset):
    cfg, plan, vols, recs = dataset
    for p, s, r in vols:
        vol = load_ct(volume_path(cfg.out, p, s, r))
        yield p, s, r, vol, p.chest(s), _phantom_axes(vol, s.table_offset)


def test_pleural_effusion_matches_label(dataset):
    seen = set()
    for p, s, r, vol, chest, (X, Y, Z) in _loaded(dataset):
        d = s.findings.details.get("Pleural effusion")
        sides = {"bilateral": ("right", "left")}.get(d["side"], (d["side"],)) if d else ()
        for side in ("right", "left"):
            frac = effusion_fraction(vol.hu, chest, X, Y, Z, side)
            if side in sides:
                assert frac > 0.35, (p.volume_name(s, r), side, frac)
            else:
                assert frac < 0.2, (p.volume_name(s, r), side, frac)
            seen.add(side in sides)
    assert seen == {True, False}


def test_emphysema_and_medical_material_match_labels(dataset):
    seen = set()
    for p, s, r, vol, chest, (X, Y, Z) in _loaded(dataset):
        name = p.volume_name(s, r)
        emph = emphysema_fraction(vol.hu, chest, X, Y, Z)
        metal = int((vol.hu > 2000).sum())
        # thick soft-kernel slices blur mild emphysema (as in real CT); normal lung stays well below 1 %
        if s.findings.has("Emphysema"):
            assert emph > 0.015, (name, emph)
        else:
            assert emph < 0.01, (name, emph)
        assert (metal > 0) == s.findings.has("Medical material"), (name, metal)
        seen.add((s.findings.has("Emphysema"), s.findings.has("Medical material")))
    assert {e for e, _ in seen} == {True, False} and {m for _, m in seen} == {True, False}


# ---- label-anatomy consistency: one finding switched on and off in the same patient -----------------------------
_TOGGLES: dict = {}


def _toggle(dataset, label: str, seed: int = 0):
    """The thinnest-slice volume of the data set rendered with no finding and with only ``label`` (details drawn)."""
    return {False: _render_with(dataset, None, 0), True: _render_with(dataset, label, seed)}


def _render_with(dataset, label, seed):
    key = (str(dataset[0].out), label, seed)
    if key not in _TOGGLES:
        cfg, plan, vols, recs = dataset
        p, s, r = min(vols, key=lambda v: v[2].slice_mm)
        labels = [int(n == label) for n in CT_RATE_LABELS]
        f = Findings(labels, draw_details(np.random.default_rng(seed), labels))
        scan = dataclasses.replace(s, findings=f)
        hu = render_volume(p, scan, r, SIZE)
        _TOGGLES[key] = (np.where(hu < -1500, -1000.0, hu), p.chest(scan), p.grid(scan, r, SIZE), scan)
    return _TOGGLES[key]


@pytest.mark.parametrize("seed", [0, 1])
def test_toggle_effusion_layers_posteriorly(dataset, seed):
    t = _toggle(dataset, "Pleural effusion", seed)
    side = t[True][3].findings.details["Pleural effusion"]["side"]
    for on in (False, True):
        hu, chest, grid, _ = t[on]
        X, Y, Z = grid.coords()
        for s in ("right", "left"):
            frac = effusion_fraction(hu, chest, X, Y, Z, s)
            expect = on and (side == "bilateral" or side == s)
            assert (frac > 0.4) if expect else (frac < 0.2), (on, s, frac)


def test_toggle_cardiomegaly_enlarges_the_heart(dataset):
    t = _toggle(dataset, "Cardiomegaly")
    ratios = {}
    for on in (False, True):
        hu, chest, grid, _ = t[on]
        ratios[on] = cardiothoracic_ratio(hu, chest, *grid.coords())
    assert ratios[False] < 0.52 < ratios[True], ratios
    assert ratios[True] > ratios[False] + 0.06


def test_toggle_pericardial_effusion_is_a_fluid_rim(dataset):
    t = _toggle(dataset, "Pericardial effusion")
    counts = {}
    for on in (False, True):
        hu, chest, grid, _ = t[on]
        X, Y, Z = grid.coords()
        from pipeline.synth.geometry import ellipsoid_level

        hc, hr, rot = chest.heart
        # a shell 3-9 mm outside the heart muscle, measured with the *normal* heart size
        lev = ellipsoid_level(X, Y, Z, hc, hr + 6.0, rot)
        shell = (lev > 0.94) & (lev < 1.06)
        med = median_filter(hu, size=3)[shell]
        counts[on] = float(((med > -10) & (med < 30)).mean())
    assert counts[True] > counts[False] + 0.25, counts


def test_toggle_emphysema_lowers_lung_density(dataset):
    t = _toggle(dataset, "Emphysema")
    frac = {on: emphysema_fraction(t[on][0], t[on][1], *t[on][2].coords()) for on in (False, True)}
    assert frac[False] < 0.02 and frac[True] > 0.04, frac


def test_toggle_medical_material_is_metal(dataset):
    t = _toggle(dataset, "Medical material")
    assert (t[False][0] > 2000).sum() == 0
    assert (t[True][0] > 2000).sum() >= 3


def test_toggle_nodule_is_a_solid_round_lesion(dataset):
    t = _toggle(dataset, "Lung nodule")
    hu_off, _, grid, _ = t[False]
    hu_on, chest, _, scan = t[True]
    n0 = scan.findings.details["Lung nodule"]["nodules"][0]
    center = nodule_centers(chest, scan.findings, scan.scan_seed)[0]
    X, Y, Z = grid.coords()
    inside = ((X - center[0]) ** 2 + (Y - center[1]) ** 2 + (Z - center[2]) ** 2) < (0.4 * n0["diameter_mm"]) ** 2
    if not inside.any():  # smaller than a voxel: take the nearest voxel
        inside = np.zeros(hu_on.shape, bool)
        inside[_voxel(grid.coords(), center)] = True
    assert hu_on[inside].mean() > hu_off[inside].mean() + 200
    assert chest.lung_mask(n0["side"], *center)


def test_toggle_consolidation_is_dense(dataset):
    t = _toggle(dataset, "Consolidation")
    hu_off, _, grid, _ = t[False]
    hu_on, chest, _, scan = t[True]
    d = scan.findings.details["Consolidation"]
    lung = chest.lung_mask(d["side"], *grid.coords())
    denser = (hu_on - hu_off > 300) & lung  # same noise in both: the difference is the lesion
    assert denser.sum() >= 30
    assert np.median(hu_on[denser]) > -200
    lobes = chest.lobe_of(d["side"], *[np.broadcast_to(a, hu_on.shape)[denser] for a in grid.coords()])
    assert np.mean(lobes == {"upper": 0, "middle": 1, "lower": 2}[d["lobe"]]) > 0.8


def test_toggle_hiatal_hernia_puts_gas_behind_the_heart(dataset):
    t = _toggle(dataset, "Hiatal hernia")
    gas = {}
    for on in (False, True):
        hu, chest, grid, _ = t[on]
        X, Y, Z = grid.coords()
        lungs = chest.lung_mask("right", X, Y, Z) | chest.lung_mask("left", X, Y, Z)
        behind_heart = (
            (np.abs(X - 10) < 35)
            & (Y > chest.heart[0][1])
            & (Y < chest.spine_y)
            & (Z > chest.dome_z("left") - 5)
            & (Z < chest.dome_z("left") + 60)
        )
        gas[on] = int(((hu < -700) & behind_heart & ~lungs).sum())
    assert gas[True] > gas[False] + 5, gas


@pytest.mark.parametrize("label", ["Arterial wall calcification", "Coronary artery wall calcification"])
def test_toggle_calcification_is_dense(dataset, label):
    """Calcified plaques: small and partial-volumed on a 64-voxel grid, yet hundreds of HU above the wall."""
    t = _toggle(dataset, label)
    diff = t[True][0] - t[False][0]
    assert (diff > 80).sum() >= 5
    assert diff.max() > 250 and t[True][0][diff > 80].max() > 300


LUNG_LABELS = (
    "Emphysema",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
    "Pleural effusion",
    "Atelectasis",
)


@pytest.mark.parametrize("label", CT_RATE_LABELS)
def test_every_label_changes_its_own_compartment(dataset, label):
    """Only ``label`` switched on, same patient and same noise: the voxels that change lie where the label says."""
    from scipy.ndimage import binary_dilation

    from pipeline.synth.mediastinum import station_center

    t = _toggle(dataset, label)
    hu_off, _, grid, _ = t[False]
    hu_on, chest, _, scan = t[True]
    changed = np.abs(hu_on - hu_off) > 25  # the noise is the same in both: any change is the finding
    assert changed.sum() >= 3, label
    X, Y, Z = grid.coords()
    shape = hu_on.shape
    if label in LUNG_LABELS:
        normal = _toggle(dataset, "Lymphadenopathy")[False][1]  # the chest without findings: normal lungs
        lungs = normal.lung_mask("right", X, Y, Z) | normal.lung_mask("left", X, Y, Z)
        where = binary_dilation(lungs, iterations=2)
        if label == "Atelectasis":  # lobar collapse also raises the hemidiaphragm
            where |= np.broadcast_to(Z < chest.dome_z("right") + 15, shape)
    elif label in ("Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"):
        from pipeline.synth.geometry import ellipsoid_level

        hc, hr, rot = chest.heart
        where = ellipsoid_level(X, Y, Z, hc, chest.heart_sac_radii() + 2 * grid.h, rot) < 1.0
    elif label == "Arterial wall calcification":
        line = chest.aorta_centerline
        d = np.min([np.sqrt((X - q[0]) ** 2 + (Y - q[1]) ** 2 + (Z - q[2]) ** 2) for q in line], axis=0)
        where = d < chest.p.aorta_radius + 3 * grid.h
    elif label == "Lymphadenopathy":
        centres = [station_center(chest, n) for n in scan.findings.details[label]["stations"]]
        d = np.min([np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) for c in centres], axis=0)
        where = d < 20.0 + 2 * grid.h
    elif label == "Hiatal hernia":  # behind the heart, in front of the spine, just above the diaphragm
        where = (Y > chest.heart[0][1]) & (Y < chest.spine_y) & (np.abs(Z - chest.dome_z("left") - 20) < 50)
    else:  # medical material: chest wall, mediastinum and heart, not the lungs
        normal = _toggle(dataset, "Lymphadenopathy")[False][1]
        lungs = normal.lung_mask("right", X, Y, Z) | normal.lung_mask("left", X, Y, Z)
        where = ~lungs
    inside = np.broadcast_to(where, shape)[changed].mean()
    assert inside > 0.85, (label, inside, int(changed.sum()))


def test_every_label_is_visible_whatever_its_details(dataset):
    """No drawn detail (side, lobe, size, kind) may leave a positive label without a change in the volume."""
    missing = []
    for label in CT_RATE_LABELS:
        for seed in (1, 2, 3):
            t = _toggle(dataset, label, seed)
            if (np.abs(t[True][0] - t[False][0]) > 25).sum() < 3:
                missing.append((label, t[True][3].findings.details[label]))
    assert missing == []


# ---- labels and reports ----------------------------------------------------------------------------------------
def test_label_prevalence_and_co_occurrence():
    plan = build_plan(SynthConfig(out=Path("unused"), n=4000, size=64, seed=11))
    L = np.array([s.findings.labels for p in plan for s in p.scans], float)
    prevalence = dict(zip(CT_RATE_LABELS, L.mean(axis=0)))
    for name, (p, _) in LABEL_MODEL.items():
        assert prevalence[name] == pytest.approx(p, abs=0.035), name
    corr = np.corrcoef(L.T)
    idx = CT_RATE_LABELS.index
    assert corr[idx("Arterial wall calcification"), idx("Coronary artery wall calcification")] > 0.3
    assert corr[idx("Pleural effusion"), idx("Atelectasis")] > 0.15
    assert corr[idx("Consolidation"), idx("Lung opacity")] > 0.15
    assert abs(corr[idx("Hiatal hernia"), idx("Consolidation")]) < 0.1
    # follow-up scans keep most findings of the first scan
    pairs = [(p.scans[0].findings.labels, p.scans[1].findings.labels) for p in plan if len(p.scans) == 2]
    a, b = np.array(pairs, float).transpose(1, 0, 2)
    assert (a == b).mean() > 0.8
    # a finding seen on both scans is the same lesion: same details, placed by the same (patient's) seed
    for p in plan:
        if len(p.scans) == 2:
            first, second = p.scans
            assert first.scan_seed == second.scan_seed
            for name in set(first.findings.positives()) & set(second.findings.positives()):
                assert first.findings.details[name] == second.findings.details[name]


def test_body_lies_inside_the_field_of_view(dataset):
    """The scanner's circular field of view never cuts the patient: the outermost ring inside it is air."""
    cfg, plan, vols, recs = dataset
    for p, s, r in vols:
        raw = np.asarray(nib.load(str(volume_path(cfg.out, p, s, r))).get_fdata(), np.float32)
        inside = raw > -1500
        from scipy.ndimage import binary_erosion

        ring = inside & ~binary_erosion(inside, np.ones((3, 3, 1), bool))
        ring[:, int(0.75 * ring.shape[1]) :, :] = False  # the couch may run out of the field at the back
        assert np.median(raw[ring]) < -950 and np.mean(raw[ring] > -500) < 0.01, p.volume_name(s, r)
    # the same for the widest bodies of many patients, analytically (the breasts included)
    plan = build_plan(SynthConfig(out=Path("unused"), n=2000, size=96, seed=5))
    t = np.linspace(0.0, 2.0 * np.pi, 720)
    c, s_ = np.cos(t), np.sin(t)
    for p in plan:
        a = p.anatomy
        x = a.body_rx * np.sign(c) * np.abs(c) ** (2 / 2.4)  # the body's superellipse (exponent 2.4)
        y = a.body_ry * np.sign(s_) * np.abs(s_) ** (2 / 2.4)
        reach = np.sqrt((x + a.fov_offset[0]) ** 2 + (y + a.fov_offset[1]) ** 2).max()
        bx, by = 0.45 * a.body_rx, 0.96 * a.body_ry + a.breast_mm
        reach = max(reach, np.hypot(bx + abs(a.fov_offset[0]), by + abs(a.fov_offset[1])))
        for scan in p.scans:
            assert reach < scan.fov_mm / 2.0 - 2.0, (p.index, reach, scan.fov_mm)


KEYWORDS = {
    "Medical material": None,
    "Arterial wall calcification": "aorta",
    "Cardiomegaly": "cardiomegaly",
    "Pericardial effusion": "pericardial effusion",
    "Coronary artery wall calcification": "coronary",
    "Hiatal hernia": "hiatal hernia",
    "Lymphadenopathy": "lymphadenopathy",
    "Emphysema": "emphysema",
    "Atelectasis": "atelectasis",
    "Lung nodule": "nodule",
    "Lung opacity": "ground-glass",
    "Pulmonary fibrotic sequela": "fibrotic",
    "Pleural effusion": "pleural effusion",
    "Mosaic attenuation pattern": "mosaic",
    "Peribronchial thickening": "peribronchial",
    "Consolidation": "consolidation",
    "Bronchiectasis": "bronchiectasis",
    "Interlobular septal thickening": "septal thickening",
}


def test_impressions_name_exactly_the_positive_findings():
    cfg = SynthConfig(out=Path("unused"), n=300, size=64, seed=3)
    recs = records(cfg, build_plan(cfg))
    phrasings = set()
    for rec in recs:
        text = rec.impressions.lower()
        for name, value in zip(CT_RATE_LABELS, rec.labels):
            key = KEYWORDS[name]
            if key is not None:
                assert (key in text) == bool(value), (rec.name, name, rec.impressions)
        if not any(rec.labels):
            assert "no " in text or "normal" in text
        phrasings.add(rec.findings.split(".")[0])
    assert len(phrasings) >= 3  # varied wording, not one template


def test_rerun_resumes_and_keeps_finished_volumes(dataset, tmp_path):
    import shutil

    cfg, plan, vols, recs = dataset
    copy = tmp_path / "copy"
    shutil.copytree(cfg.out, copy)
    p, s, r = vols[-1]
    gone = volume_path(copy, p, s, r)
    gone.unlink()  # as if the run had been killed while writing it
    half = gone.with_name(f".{gone.name}{TMP_MARK}0123abcd.nii.gz")
    half.write_bytes(b"half a volume")
    shutil.rmtree(copy / "metadata")
    kept = volume_path(copy, *vols[0])
    before = kept.stat().st_mtime_ns
    synthesize(cfg.model_copy(update={"out": copy, "workers": 1}), progress=False)
    assert kept.stat().st_mtime_ns == before  # not redone
    assert gone.read_bytes() == volume_path(cfg.out, p, s, r).read_bytes()
    assert not half.exists(), "the killed run's temporary is removed"
    for rel in ("metadata/train_metadata.csv", "metadata/validation_metadata.csv"):
        assert (copy / rel).read_bytes() == (cfg.out / rel).read_bytes()
    with pytest.raises(ValueError, match="not empty"):
        synthesize(cfg.model_copy(update={"out": copy, "seed": SEED + 1}), progress=False)


def test_cli_refuses_non_empty_folder_unless_overwrite(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "d"
    out.mkdir()
    (out / "train").mkdir()
    args = ["synth", "--out", str(out), "--n", "2", "--size", "32", "--no-progress", "--workers", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = CliRunner().invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("*.nii.gz"))) == 2
    (out / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(app, args + ["--overwrite"])
    assert res.exit_code == 2 and "notes.txt" in res.output


# ---- geometry primitives against reference computations ---------------------------------------------------------
def test_sample_field_is_trilinear_interpolation():
    from scipy.ndimage import map_coordinates

    from pipeline.synth.geometry import Grid, sample_field, smooth_noise_field

    grid = Grid((20, 17, 9), (3.9, 3.9, 7.1), (-40.0, -30.0, 2.0))
    spec = smooth_noise_field(np.random.default_rng(0), 4.0, (-50, -50, -10), (50, 50, 80), 1.0)
    field, lo, cell = spec
    idx = np.meshgrid(*[(grid.axis(a) - lo[a]) / cell for a in range(3)], indexing="ij")
    ref = map_coordinates(field, idx, order=1, mode="nearest")
    np.testing.assert_allclose(sample_field(spec, grid), ref, atol=1e-5)
    box = (slice(2, 9), slice(0, 5), slice(3, 9))
    np.testing.assert_allclose(sample_field(spec, grid, box), ref[box], atol=1e-5)


def test_thin_tube_splatting_matches_exact_segment_distance():
    from pipeline.synth.geometry import Grid, Tubes, _paint_thick, _splat_thin

    grid = Grid((24, 24, 12), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))
    rng = np.random.default_rng(1)
    tubes = Tubes(
        rng.uniform(8, 40, (6, 3)), rng.uniform(8, 40, (6, 3)), rng.uniform(0.5, 2.5, 6), rng.uniform(0.5, 2.5, 6)
    )
    exact, splat = np.zeros(grid.shape, np.float32), np.zeros(grid.shape, np.float32)
    _paint_thick(grid, tubes, exact)
    _splat_thin(grid, tubes, splat)
    # points every half voxel along the axis: the distance error is at most a quarter voxel
    assert np.abs(exact - splat).max() < 0.2
    assert abs(exact.sum() - splat.sum()) < 0.05 * exact.sum()


def test_sparse_blend_equals_dense_blend():
    from pipeline.synth.canvas import Canvas
    from pipeline.synth.geometry import Grid

    rng = np.random.default_rng(0)
    grid = Grid((16, 12, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    hu = rng.normal(-500, 300, grid.shape).astype(np.float32)
    frac = np.where(rng.random(grid.shape) < 0.05, rng.random(grid.shape), 0.0).astype(np.float32)
    canvas = Canvas(grid, hu.copy())
    canvas.blend(frac, 40.0)  # sparse path: 5 % of the voxels
    np.testing.assert_array_equal(canvas.hu, hu + frac * (np.float32(40.0) - hu))
    sub = canvas.sub((2.0, 2.0, 2.0), (9.0, 7.0, 9.0))  # a view: painting it paints the canvas
    sub.blend(np.ones(sub.grid.shape, np.float32), 7.0)
    np.testing.assert_allclose(canvas.hu[2:10, 2:8, 1:5], 7.0, atol=1e-3)
    assert sub.grid.origin == (2.0, 2.0, 2.0) and sub.grid.shape == (8, 6, 4)
