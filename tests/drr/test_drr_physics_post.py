"""HU -> attenuation, the mean-HU mode, and the display pipeline against hand-worked values."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.ct_io import affine_from_spacing
from pipeline.drr.physics import hu_to_mu_
from pipeline.drr.postprocess import clahe, noise_generator, poisson_noise, to_uint16, window
from pipeline.drr.render import line_integrals, render_volume
from schemas.drr import DRRRenderConfig, GeometryConfig, PhysicsConfig, PostConfig

SPACING = (2.0, 2.0, 2.0)


def test_hu_to_mu_hand_worked():
    hu = torch.tensor([-1000.0, -1200.0, 0.0, 1000.0, 300.0, 1300.0])
    mu = hu_to_mu_(hu.clone(), 0.02, 300.0, 1.0)
    torch.testing.assert_close(mu, torch.tensor([0.0, 0.0, 0.02, 0.04, 0.026, 0.046]))
    boosted = hu_to_mu_(hu.clone(), 0.02, 300.0, 2.0)  # 1300 HU -> 300 + 2 * 1000 = 2300 HU
    torch.testing.assert_close(boosted, torch.tensor([0.0, 0.0, 0.02, 0.04 + 0.014, 0.026, 0.066]))


def test_water_slab_line_integral_is_mu_times_thickness():
    hu = np.full((20, 30, 16), -1000.0, np.float32)
    hu[:, 5:25, :] = 0.0  # 20 voxels of water along the A-P axis: 40 mm
    cfg = DRRRenderConfig(
        views=["pa"],
        geometry=GeometryConfig(projection="parallel", size=16, detector_mm=20),
        physics=PhysicsConfig(mu_water_per_mm=0.02),
    )
    img = line_integrals(torch.from_numpy(hu), affine_from_spacing(SPACING), cfg)[0]
    torch.testing.assert_close(img, torch.full_like(img, 0.02 * 40.0))


def test_mean_hu_mode_is_the_mean_of_clipped_hu_along_the_beam():
    hu = np.full((20, 30, 16), -1000.0, np.float32)
    hu[:, 0:15, :] = 200.0
    hu[:, 15:20, :] = 3000.0  # clipped to 1000
    cfg = DRRRenderConfig(mode="mean-hu", views=["pa"], geometry=GeometryConfig(size=16, detector_mm=20))
    assert cfg.geometry.projection == "parallel"
    img = line_integrals(torch.from_numpy(hu), affine_from_spacing(SPACING), cfg)[0]
    expected = (15 * 200.0 + 5 * 1000.0 + 10 * -1000.0) / 30
    torch.testing.assert_close(img, torch.full_like(img, expected), rtol=1e-5, atol=1e-3)


def test_window_maps_percentiles_to_0_and_1():
    x = torch.arange(1001, dtype=torch.float32)
    w = window(x, 10.0, 90.0)
    assert float(w[100]) == 0.0 and float(w[900]) == 1.0
    assert abs(float(w[500]) - 0.5) < 1e-6


def test_uint16_mapping():
    np.testing.assert_array_equal(to_uint16(torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1])), [0, 32768, 65535, 65535, 0])


def test_poisson_noise_is_seeded_and_unbiased():
    line = torch.full((128, 128), 1.5)
    a = poisson_noise(line, 1e5, noise_generator(0, "v1", "pa"))
    b = poisson_noise(line, 1e5, noise_generator(0, "v1", "pa"))
    c = poisson_noise(line, 1e5, noise_generator(0, "v2", "pa"))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert abs(float(a.mean()) - 1.5) < 1e-3
    # relative std of counts is 1/sqrt(N) with N = 1e5 * exp(-1.5); in -log units the same
    assert abs(float(a.std()) - 1 / np.sqrt(1e5 * np.exp(-1.5))) < 2e-4


def test_clahe_leaves_a_uniform_histogram_unchanged_and_equalises_a_skewed_one():
    ramp = torch.linspace(0, 1, 256 * 256).view(256, 256)
    out = clahe(ramp, clip_limit=100.0, tiles=1)
    assert float((out - ramp).abs().max()) < 2.0 / 255
    skewed = ramp**2  # 71% of pixels below 0.5
    eq = clahe(skewed, clip_limit=100.0, tiles=1)
    # equalised: about half below 0.5 (up to the largest bin, 4% of the pixels)
    assert abs(float((eq < 0.5).float().mean()) - 0.5) < 0.05
    assert float(eq.min()) >= 0.0 and float(eq.max()) <= 1.0


def test_render_volume_is_deterministic_with_noise_and_clahe():
    hu = np.random.default_rng(0).normal(0, 300, (24, 24, 20)).astype(np.float32)
    cfg = DRRRenderConfig(
        views=["pa", "lateral"],
        geometry=GeometryConfig(size=32, detector_mm=60, sid_mm=400, sod_mm=300),
        post=PostConfig(noise_photons=1e4, clahe=True, gamma=0.8),
    )
    a = render_volume(hu, affine_from_spacing(SPACING), cfg, volume_id="x")
    b = render_volume(hu, affine_from_spacing(SPACING), cfg, volume_id="x")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.dtype == np.uint16 and a.images.shape == (2, 32, 32)
    assert a.images.max() > 60000 and a.images.min() < 5000


def test_device_choice():
    from pipeline.devices import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        import pytest

        with pytest.raises(RuntimeError, match="--device cpu"):
            resolve_device("cuda")
