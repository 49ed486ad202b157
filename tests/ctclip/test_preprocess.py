"""preprocess_ct on small hand-worked examples (the official inference loader's steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.ct_io import CTVolume
from pipeline.ctclip.preprocess import crop_or_pad, preprocess_array, preprocess_ct, resampled_shape
from schemas.ctclip import CTCLIPPreprocessConfig


def _cfg(shape, spacing=(1.0, 1.0, 2.0)):
    return CTCLIPPreprocessConfig(spacing_mm=spacing, shape=shape)


def test_clip_scale_crop_pad_and_axis_order_by_hand():
    # x = 4 (kept), y = 6 (cropped to 4: start (6-4)//2 = 1), z = 2 (padded to 4: 1 before, 1 after)
    hu = np.zeros((4, 6, 2), np.float32)
    hu[0, 1, 0] = 1500.0  # clipped to 1000 -> 1.0
    hu[3, 4, 1] = -3000.0  # clipped to -1000 -> -1.0
    hu[2, 3, 0] = 250.0  # -> 0.25
    hu[1, 0, 0] = 999.0  # y = 0 is cropped away
    out = preprocess_array(hu, (1.0, 1.0, 2.0), _cfg((4, 4, 4)))
    assert out.shape == (1, 4, 4, 4) and out.dtype == torch.float32  # (1, z, x, y)
    expected = torch.zeros(1, 4, 4, 4)
    expected[0, 0] = -1.0  # padded slice before
    expected[0, 3] = -1.0  # padded slice after
    expected[0, 1, 0, 0] = 1.0  # z 0 -> 1, x 0, y 1 -> 0
    expected[0, 2, 3, 3] = -1.0  # z 1 -> 2, x 3, y 4 -> 3
    expected[0, 1, 2, 2] = 0.25  # z 0 -> 1, x 2, y 3 -> 2
    assert torch.equal(out, expected)


def test_trilinear_resampling_by_hand():
    # a ramp along x at 0.5 mm becomes 1 mm: 4 voxels -> int(4 * 0.5) = 2, each the mean of a pair
    # (align_corners=False: output i samples input position 2i + 0.5)
    hu = np.broadcast_to(np.array([0.0, 100.0, 200.0, 300.0], np.float32)[:, None, None], (4, 2, 2)).copy()
    out = preprocess_array(hu, (0.5, 1.0, 2.0), _cfg((2, 2, 2)))
    assert torch.allclose(out[0, :, :, 0], torch.tensor([[0.05, 0.25], [0.05, 0.25]]), atol=1e-7)


def test_resampled_shape_truncates_like_the_official_loader():
    assert resampled_shape((512, 512, 300), (0.7, 0.7, 1.25), (0.75, 0.75, 1.5)) == (477, 477, 250)
    assert resampled_shape((5, 5, 5), (0.7, 1.0, 3.0), (1.0, 1.0, 1.5)) == (3, 5, 10)


def test_odd_crop_and_pad_put_the_extra_voxel_after():
    x = torch.arange(5.0)
    assert crop_or_pad(x, (2,), -1.0).tolist() == [1.0, 2.0]  # start (5-2)//2 = 1
    assert crop_or_pad(x, (8,), -1.0).tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, -1.0, -1.0]


def test_preprocess_ct_reads_spacing_from_the_affine():
    hu = np.full((4, 4, 4), -1000.0, np.float32)
    affine = np.diag([-2.0, -2.0, 4.0, 1.0])  # LPS voxels, 2 x 2 x 4 mm
    vol = CTVolume(hu=hu, affine=affine, source="x.nii.gz", hu_scaling="header", air_hu=-1000.0)
    cfg = type("C", (), {"preprocess": _cfg((8, 8, 8), (1.0, 1.0, 2.0))})()
    out = preprocess_ct(vol, cfg)
    assert out.shape == (1, 8, 8, 8) and torch.all(out == -1.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3-D"):
        preprocess_array(np.zeros((4, 4), np.float32), (1, 1, 1), _cfg((4, 4, 4)))
    with pytest.raises(ValueError, match="spacing"):
        preprocess_array(np.zeros((4, 4, 4), np.float32), (1, 0, 1), _cfg((4, 4, 4)))


def test_reorient_moves_axes_and_spacing():
    from pipeline.ctclip.preprocess import reorient

    hu = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # LPS
    out, spacing = reorient(hu, (1.0, 2.0, 3.0), "LPS", "PLI")  # swap the first two axes, flip the third
    assert out.shape == (3, 2, 4) and spacing == (2.0, 1.0, 3.0)
    assert out[2, 1, 0] == hu[1, 2, 3]
    same, sp = reorient(hu, (1.0, 2.0, 3.0), "LPS", "lps")
    assert same is hu and sp == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="orientation"):
        CTCLIPPreprocessConfig(orientation="LPX")


def test_preprocess_ct_errors_name_the_file():
    vol = CTVolume(
        hu=np.zeros((4, 4), np.float32), affine=np.eye(4), source="broken.nii.gz", hu_scaling="header", air_hu=None
    )
    cfg = type("C", (), {"preprocess": _cfg((4, 4, 4))})()
    with pytest.raises(ValueError, match="broken.nii.gz: expected a 3-D"):
        preprocess_ct(vol, cfg)


def test_csv_spacing_decides_truncation_like_the_official_loader():
    """500 slices of 0.6 mm: the official loader (CSV, float64) keeps int(500 * 0.4) = 199 slices at 1.5 mm;
    the header's float32 0.6000000238 would give 200. With the manifest's CSV spacing we give 199 too."""
    from pipeline.ctclip.preprocess import csv_spacing_or_header

    header_z = float(np.float32(0.6))
    assert resampled_shape((2, 2, 500), (1.5, 1.5, header_z), (1.5, 1.5, 1.5))[2] == 200
    assert resampled_shape((2, 2, 500), (1.5, 1.5, 0.6), (1.5, 1.5, 1.5))[2] == 199  # 500 * (0.6 / 1.5) in float64
    vol = CTVolume(
        hu=np.zeros((2, 2, 500), np.float32),
        affine=np.diag([-1.5, -1.5, header_z, 1.0]),
        source="z06.nii.gz",
        hu_scaling="header",
        air_hu=None,
    )
    cfg = type("C", (), {"preprocess": _cfg((2, 2, 240), (1.5, 1.5, 1.5))})()
    content = lambda out: int((out[0, :, 0, 0] != -1.0).sum())  # noqa: E731 (slices that are not padding)
    assert content(preprocess_ct(vol, cfg)) == 200
    assert content(preprocess_ct(vol, cfg, csv_spacing=(1.5, 1.5, 0.6))) == 199
    # A CSV that does not describe these axes (another order, another volume) is not used.
    assert csv_spacing_or_header((0.75, 0.75, 1.5), (1.5, 0.75, 0.75)) == (0.75, 0.75, 1.5)
    assert csv_spacing_or_header((0.75, 0.75, 1.5), None) == (0.75, 0.75, 1.5)


def test_channel_windows_map_each_window_onto_minus_one_to_one_by_hand():
    hu = np.array([-3000.0, -850.0, -560.0, 0.0, 3071.0], np.float32).reshape(5, 1, 1)
    cfg = CTCLIPPreprocessConfig(
        spacing_mm=(1.0, 1.0, 1.0),
        shape=(5, 1, 3),
        hu_max=3000.0,
        channel_windows=((-1000.0, -400.0), (-160.0, 240.0), (200.0, 3000.0)),
    )
    out = preprocess_array(hu, (1.0, 1.0, 1.0), cfg)
    assert out.shape == (3, 3, 5, 1)  # (C, z, x, y)
    # lung window: clip to [-1000, -400], (v + 700) / 300
    assert torch.allclose(out[0, 1, :, 0], torch.tensor([-1.0, -0.5, 140 / 300, 1.0, 1.0]), atol=1e-6)
    # mediastinal window: clip to [-160, 240], (v - 40) / 200
    assert torch.allclose(out[1, 1, :, 0], torch.tensor([-1.0, -1.0, -1.0, -0.2, 1.0]), atol=1e-6)
    # high window: metal (clipped first at hu_max 3000) at the top, everything below 200 HU at the bottom
    assert torch.allclose(out[2, 1, :, 0], torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    # padding is air, the bottom of every window
    assert torch.all(out[:, 0] == -1.0) and torch.all(out[:, 2] == -1.0)


def test_channel_windows_are_checked():
    with pytest.raises(ValueError, match="low < high"):
        CTCLIPPreprocessConfig(channel_windows=((-400.0, -1000.0),))
    assert CTCLIPPreprocessConfig(channel_windows=((-1000.0, -400.0), (-160.0, 240.0))).n_channels == 2


def test_channel_count_must_match_the_encoder():
    from schemas.ctclip import CTCLIPConfig

    base = CTCLIPConfig().model_dump()
    base["preprocess"]["channel_windows"] = ((-1000.0, -400.0), (-160.0, 240.0))
    with pytest.raises(ValueError, match="visual.channels"):
        CTCLIPConfig.model_validate(base)
    base["visual"]["channels"] = 2
    assert CTCLIPConfig.model_validate(base).preprocess.n_channels == 2
