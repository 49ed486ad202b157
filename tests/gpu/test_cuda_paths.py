"""The CUDA paths give the CPU results: the DRR projector and post-processing, CT-CLIP's encoders.

Marked ``gpu``: skipped where torch sees no CUDA device (``tests/conftest.py``). TF32 is turned
off for the comparison, so both devices compute in float32 and differ only by summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.ct_io import affine_from_spacing
from pipeline.drr.render import render_volume
from schemas.drr import DRRRenderConfig
from tests.helpers.ctclip import tiny_model, tiny_volume
from tests.helpers.phantoms import chest_like

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


RENDERS = {
    "cone": {
        "views": ["pa", "lateral"],
        "geometry": {"size": 96, "detector_mm": 160.0, "sid_mm": 500.0, "sod_mm": 400.0},
    },
    "parallel": {"views": ["ap", "lateral"], "geometry": {"projection": "parallel", "size": 96, "detector_mm": 160.0}},
    "mean-hu": {"mode": "mean-hu", "views": ["pa"], "geometry": {"size": 96, "detector_mm": 160.0}},
    "noise+clahe": {
        "views": ["pa"],
        "geometry": {"size": 96, "detector_mm": 160.0, "sid_mm": 500.0, "sod_mm": 400.0},
        "post": {"noise_photons": 5000.0, "clahe": True, "gamma": 0.8},
        "slab": 5,
    },
}


@pytest.mark.parametrize("name", list(RENDERS))
def test_drr_on_cuda_equals_cpu(name):
    spacing = (2.0, 2.5, 3.0)
    hu = chest_like(spacing=spacing, seed=1)
    affine = affine_from_spacing(spacing, "LPS")
    cfg = DRRRenderConfig.model_validate(RENDERS[name])
    cpu = render_volume(hu, affine, cfg, device="cpu", volume_id="v")
    gpu = render_volume(hu, affine, cfg, device=CUDA, volume_id="v")
    scale = np.abs(cpu.line_integrals).max()
    assert scale > 0
    np.testing.assert_allclose(gpu.line_integrals, cpu.line_integrals, rtol=0, atol=1e-4 * scale)
    # display images: the same window and noise (the generator is on the CPU for both); a pixel
    # may land one uint16 step away, and CLAHE's histogram bins a few more
    diff = np.abs(gpu.images.astype(np.int64) - cpu.images.astype(np.int64))
    assert np.median(diff) <= 1 and diff.max() <= 0.01 * 65535


def test_ctclip_encoders_on_cuda_equal_cpu(tmp_path):
    from pipeline.ctclip.text import load_tokenizer, tokenize
    from tests.helpers.ctclip import write_vocab

    model = tiny_model(seed=3).eval()
    x = tiny_volume(model, batch=2, seed=4)
    with torch.no_grad():
        ref = model.visual_features(x)
    ref_ct = model.encode_ct(x)
    model.to(CUDA)
    with torch.no_grad():
        got = model.visual_features(x.to(CUDA))
    tokens, tokens_gpu = ref.tokens, got.tokens.cpu()
    np.testing.assert_allclose(tokens_gpu, tokens, rtol=0, atol=1e-4 * tokens.abs().max().item())
    # the codebook choice is an argmax: a near-tie may flip, but nearly all tokens agree
    assert (got.indices.cpu() == ref.indices).float().mean() >= 0.95
    got_ct = model.encode_ct(x.to(CUDA)).cpu()
    assert torch.nn.functional.cosine_similarity(got_ct, ref_ct).min() > 0.99

    tok = load_tokenizer(write_vocab(tmp_path), vocab_size=model.cfg.text.vocab_size)
    ids, mask = tokenize(tok, ["there is no lung nodule.", "the heart size is normal."])
    model.cpu()
    ref_txt = model.encode_text(ids, mask)
    model.to(CUDA)
    got_txt = model.encode_text(ids.to(CUDA), mask.to(CUDA)).cpu()
    np.testing.assert_allclose(got_txt, ref_txt, rtol=0, atol=1e-5)


def test_ctclip_bf16_autocast_runs_on_cuda():
    model = tiny_model(seed=5).eval()
    x = tiny_volume(model, batch=1, seed=6)
    ref = model.encode_ct(x)
    got = model.to(CUDA).encode_ct(x.to(CUDA), precision="bf16").cpu()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    np.testing.assert_allclose(got.norm(dim=-1), 1.0, atol=1e-5)
    # random weights: bf16 moves a few tokens to another codebook row (cosine 0.97-0.99 on the CPU)
    assert torch.nn.functional.cosine_similarity(got, ref).item() > 0.9
