"""The CT-CLIP model on the tiny config, checked against plain re-computations of the official arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.ct_io import CTVolume
from pipeline.ctclip.preprocess import preprocess_ct
from tests.helpers.ctclip import tiny_model, tiny_volume


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


# --- plain reference of the official encoder (einsum attention, all-pairs position bias) ---------------


def ref_layernorm(x, gamma, beta):
    return F.layer_norm(x, x.shape[-1:], gamma, beta)


def ref_peg(peg, x, shape):
    grid = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)
    grid = F.conv3d(F.pad(grid, (1, 1, 1, 1, 2, 0)), peg.dsconv.weight, peg.dsconv.bias, groups=grid.shape[1])
    return grid.permute(0, 2, 3, 4, 1).reshape(shape[0], -1, x.shape[-1]).reshape(x.shape)


def ref_attention(attn, x, bias):
    n, length, _ = x.shape
    h = attn.heads
    q = attn.to_q(ref_layernorm(x, attn.norm.gamma, attn.norm.beta))
    k, v = attn.to_kv(x).chunk(2, dim=-1)  # k and v from the *un-normed* input
    q, k, v = (t.reshape(n, length, h, -1).transpose(1, 2) for t in (q, k, v))
    q = F.normalize(q, dim=-1) * attn.q_scale
    k = F.normalize(k, dim=-1) * attn.k_scale
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * 8
    if bias is not None:
        sim = sim + bias
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
    return attn.to_out(out.transpose(1, 2).reshape(n, length, -1))


def ref_transformer(tr, x, shape, bias=None):
    for block in tr.layers:
        peg, attn, ff = getattr(block, "0"), getattr(block, "1"), getattr(block, "3")
        x = ref_peg(peg, x, shape) + x
        x = ref_attention(attn, x, bias) + x
        hid = getattr(ff, "1")(getattr(ff, "0")(x))
        a, gate = hid.chunk(2, dim=-1)
        x = getattr(ff, "4")(a * F.gelu(gate)) + x
    return ref_layernorm(x, tr.norm_out.gamma, tr.norm_out.beta)


def ref_position_bias(cpb, h, w):
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).reshape(2, -1).T
    rel = (grid[:, None, :] - grid[None, :, :]).float()  # all (h*w)^2 pairs, as the official code
    rel = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in cpb.net:
        rel = layer(rel)
    return rel.permute(2, 0, 1)


def ref_tokens(vit, video):
    c = vit.cfg
    b, t, h, w = (
        video.shape[0],
        c.num_slices // c.temporal_patch_size,
        c.image_size // c.patch_size,
        c.image_size // c.patch_size,
    )
    pt, p = c.temporal_patch_size, c.patch_size
    patches = video.reshape(b, 1, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, -1)
    emb = vit.to_patch_emb
    x = getattr(emb, "3")(getattr(emb, "2")(getattr(emb, "1")(patches)))
    x = ref_transformer(
        vit.enc_spatial_transformer,
        x.reshape(b * t, h * w, -1),
        (b, t, h, w),
        ref_position_bias(vit.spatial_rel_pos_bias, h, w),
    )
    x = x.reshape(b, t, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, -1)  # '(b h w) t d'
    x = ref_transformer(vit.enc_temporal_transformer, x, (b, t, h, w))  # scrambled reshape inside the PEG
    return x.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)


# --- tests --------------------------------------------------------------------------------------------


def test_encoder_tokens_match_the_plain_reference(model):
    vol = tiny_volume(model, batch=2, seed=1)
    with torch.no_grad():
        ours = model.visual_features(vol, "fp32")
        ref = ref_tokens(model.visual_transformer, vol)
    assert torch.allclose(ours.tokens, ref, atol=1e-5)


def test_position_bias_equals_the_all_pairs_computation(model):
    cpb = model.visual_transformer.spatial_rel_pos_bias
    with torch.no_grad():
        for h, w in [(4, 4), (3, 5)]:
            assert torch.allclose(cpb(h, w, torch.device("cpu"))[0], ref_position_bias(cpb, h, w), atol=1e-6)


def test_position_bias_cache_follows_weight_changes(model):
    cpb = model.visual_transformer.spatial_rel_pos_bias
    with torch.no_grad():
        before = cpb(4, 4, torch.device("cpu")).clone()
        cpb.net[2].bias.add_(1.0)
        after = cpb(4, 4, torch.device("cpu"))
        cpb.net[2].bias.sub_(1.0)
    assert torch.allclose(after, before + 1.0, atol=1e-6)


def test_quantiser_picks_the_nearest_code_by_cosine_and_returns_the_stored_row(model):
    vq = model.visual_transformer.vq
    tokens = torch.randn(3, 5, model.cfg.visual.dim)
    rows, idx = vq(tokens)
    book = vq.codebook
    for n, tok in enumerate(tokens.reshape(-1, tokens.shape[-1])):
        cos = torch.stack([F.cosine_similarity(tok, row, dim=0) for row in book])
        assert idx.reshape(-1)[n] == cos.argmax()
    assert torch.equal(rows, book[idx])


def test_bf16_candidate_search_equals_the_fp32_search(model):
    vq = model.visual_transformer.vq
    tokens = torch.randn(4000, model.cfg.visual.dim)
    assert torch.equal(vq(tokens, fast_bf16=True)[1], vq(tokens)[1])


def test_codebook_never_changes_even_in_train_mode(model):
    vq_state = {k: v.clone() for k, v in model.visual_transformer.vq.state_dict().items()}
    model.train()
    try:
        model.visual_features(tiny_volume(model, seed=5))
        model.encode_ct(tiny_volume(model, seed=6))
    finally:
        model.eval()
    for k, v in model.visual_transformer.vq.state_dict().items():
        assert torch.equal(v, vq_state[k]), k


def test_end_to_end_from_a_ct_volume(model):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 1200, (70, 60, 90)).astype(np.float32)  # 3 x 3 x 2 mm voxels, LPS
    vol = CTVolume(hu=hu, affine=np.diag([-3.0, -3.0, 2.0, 1.0]), source="synthetic", hu_scaling="header", air_hu=None)
    x = preprocess_ct(vol, model.cfg)
    assert x.shape == (1, 16, 32, 32)
    img = model.encode_ct(x[None])
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = (ids != 0).long()
    txt = model.encode_text(ids, mask)
    assert img.shape == (1, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(1)) and torch.allclose(txt.norm(dim=-1), torch.ones(2))
    logits = model(x[None], ids, mask)
    assert torch.allclose(logits, model.temperature.exp() * F.cosine_similarity(img[:, None], txt[None], dim=-1))


def test_text_latent_is_the_projected_cls_token(model):
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = model.text_transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = F.normalize(hidden[:, 0] @ model.to_text_latent.weight.T, dim=-1)
    assert torch.allclose(model.encode_text(ids, mask), expected, atol=1e-6)


def test_latents_can_enter_a_training_graph(model):
    img = model.encode_ct(tiny_volume(model))
    w = torch.ones(img.shape[-1], requires_grad=True)
    (img * w).sum().backward()  # an inference tensor here would raise
    assert torch.allclose(w.grad, img[0])


def test_bf16_path_is_close_to_fp32(model):
    vol = tiny_volume(model, batch=2, seed=7)
    fp32 = model.visual_features(vol, "fp32")
    bf16 = model.visual_features(vol, "bf16")
    rel = (bf16.tokens - fp32.tokens).norm(dim=-1) / fp32.tokens.norm(dim=-1)
    assert rel.max() < 0.05
    # on the same codebook indices the rest of the path is fp32: latents then agree exactly
    rows = model.visual_transformer.vq.codebook[bf16.indices]
    assert torch.allclose(model.latent_from_quantized(rows), model.encode_ct(vol, "bf16"), atol=1e-6)


def test_wrong_volume_shape_is_refused_before_work(model):
    with pytest.raises(ValueError, match=r"expects a volume tensor of shape \(B, 1, 16, 32, 32\)"):
        model.encode_ct(torch.zeros(1, 1, 16, 32, 30))
    with pytest.raises(ValueError, match="precision"):
        model.encode_ct(tiny_volume(model), precision="fp16")


def test_bf16_search_handles_tokens_that_tie_with_every_code(model):
    vq = model.visual_transformer.vq
    tokens = torch.randn(300, model.cfg.visual.dim)
    tokens[::3] = 0.0  # a constant region gives zero tokens after the final LayerNorm: all codes tie
    assert torch.equal(vq(tokens, fast_bf16=True)[1], vq(tokens)[1])
    assert (vq(tokens)[1][::3] == 0).all()  # argmax of all-equal scores: the first code, as the official


def test_bf16_search_falls_back_to_fp32_for_crowded_tokens():
    from pipeline.ctclip.quantizer import MAX_CANDIDATES, VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4 * MAX_CANDIDATES)
    tokens = torch.randn(200, 16)
    tokens[:50] = 0.0  # ties with all 256 codes: more than MAX_CANDIDATES candidates
    assert torch.equal(vq(tokens, fast_bf16=True)[1], vq(tokens)[1])


def _patch_embedding(norm: bool):
    from pipeline.ctclip.ctvit import PatchEmbedding

    torch.manual_seed(0)
    return PatchEmbedding(1, 2, 4, 8, norm=norm).eval()


def test_patch_norm_hides_a_patchs_density_and_its_absence_keeps_it():
    # One (2, 4, 4) patch; the same patch brighter by a uniform offset (denser tissue, same texture).
    patch = torch.randn(1, 1, 2, 4, 4)
    denser = patch + 0.3
    with torch.no_grad():
        official, small = _patch_embedding(True), _patch_embedding(False)
        # LayerNorm over the patch's voxels subtracts their mean: an offset cannot reach the projection.
        torch.testing.assert_close(official(patch), official(denser), rtol=1e-5, atol=1e-5)
        assert (small(patch) - small(denser)).abs().max() > 1e-2
        # Without it the first step is the plain projection of the voxels (then the token LayerNorm).
        flat = patch.reshape(1, -1)
        by_hand = getattr(small, "3")(getattr(small, "2")(flat))
        torch.testing.assert_close(small(patch).reshape(1, -1), by_hand)


def test_patch_norm_off_leaves_its_parameters_out_of_the_state_dict():
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.model import CTCLIP

    cfg = get_config("tiny")
    off = cfg.model_copy(update={"visual": cfg.visual.model_copy(update={"patch_norm": False})})
    keys_on, keys_off = set(CTCLIP(cfg).state_dict()), set(CTCLIP(off).state_dict())
    modules = ("to_patch_emb", "to_patch_emb_first_frame")
    assert keys_on - keys_off == {f"visual_transformer.{m}.1.{p}" for m in modules for p in ("weight", "bias")}
    assert not keys_off - keys_on


def test_windowed_config_runs_from_a_ct_volume():
    """channel_windows: preprocessing makes one channel per window and the CTViT's patches take them all."""
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.model import CTCLIP
    from schemas.ctclip import CTCLIPConfig

    base = get_config("tiny").model_dump(mode="json")
    base["preprocess"]["channel_windows"] = [[-1000.0, -400.0], [-160.0, 240.0]]
    base["visual"]["channels"] = 2
    model = CTCLIP(CTCLIPConfig.model_validate(base))
    hu = np.random.default_rng(1).uniform(-1000, 1000, (40, 40, 30)).astype(np.float32)
    vol = CTVolume(hu=hu, affine=np.diag([-6.0, -6.0, 12.0, 1.0]), source="synthetic", hu_scaling="header", air_hu=None)
    x = preprocess_ct(vol, model.cfg)
    assert x.shape == (2, 16, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # the two windows disagree where only one of them resolves the density: lung-range voxels
    lung = (x[0] > -1.0) & (x[0] < 1.0)
    assert lung.any() and torch.all(x[1][lung] == -1.0)
    z = model.encode_ct(x[None])
    assert z.shape == (1, 32) and torch.isfinite(z).all()
