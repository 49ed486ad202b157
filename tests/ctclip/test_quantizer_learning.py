"""The quantiser's opt-in learning mode: straight-through gradients, EMA codebook, commitment loss, restarts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.ctclip.quantizer import QuantizerLearning, VectorQuantizer
from tests.helpers.ctclip import tiny_model, tiny_volume


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _two_code_quantiser(decay=0.5, threshold=0.0):
    vq = VectorQuantizer(dim=2, codebook_size=2)
    vq._codebook.embed.copy_(_unit([1.0, 0.0], [0.0, 1.0])[None])
    vq.start_learning(QuantizerLearning(decay=decay, commitment_weight=1.0, dead_code_threshold=threshold))
    return vq.train()


def test_ema_update_by_hand():
    vq = _two_code_quantiser(decay=0.5)
    # Two tokens near code 0 (directions 0.1 and -0.3 rad) and one on code 1, scaled: only directions count.
    a, b = 0.1, -0.3
    tokens = torch.tensor(
        [
            [2 * torch.cos(torch.tensor(a)), 2 * torch.sin(torch.tensor(a))],
            [torch.cos(torch.tensor(b)), torch.sin(torch.tensor(b))],
            [0.0, 5.0],
        ],
        requires_grad=True,
    )
    rows, idx = vq(tokens)
    assert idx.tolist() == [0, 0, 1]
    # Output value: the rows stored before the update.
    assert torch.equal(rows.detach(), _unit([1.0, 0.0], [1.0, 0.0], [0.0, 1.0]))
    mean0 = F.normalize(
        torch.tensor(
            [
                torch.cos(torch.tensor(a)) + torch.cos(torch.tensor(b)),
                torch.sin(torch.tensor(a)) + torch.sin(torch.tensor(b)),
            ]
        ),
        dim=0,
    )
    expected0 = F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * mean0, dim=0)
    assert torch.allclose(vq.codebook[0], expected0, atol=1e-6)
    assert torch.allclose(vq.codebook[1], torch.tensor([0.0, 1.0]))  # its one token points exactly at it
    assert torch.allclose(vq._codebook.cluster_size, torch.tensor([[1.0, 0.5]]))  # 0.5*0 + 0.5*counts
    # Commitment: mean over tokens and dims of (unit token - row)^2.
    unit = F.normalize(tokens.detach(), dim=-1)
    assert torch.allclose(vq.commit_loss, ((unit - rows.detach()) ** 2).mean())


def test_straight_through_gradient_is_the_identity():
    vq = _two_code_quantiser()
    tokens = torch.randn(6, 2, requires_grad=True)
    rows, _ = vq(tokens)
    weights = torch.randn(6, 2)
    (rows * weights).sum().backward()
    assert torch.equal(tokens.grad, weights)


def test_dead_codes_restart_on_batch_tokens():
    vq = _two_code_quantiser(decay=0.5, threshold=0.3)
    tokens = torch.tensor([[1.0, 0.1], [1.0, -0.2], [2.0, 0.0]])  # all pick code 0; code 1 gets usage 0
    vq(tokens.requires_grad_())
    assert vq.restarted_codes == 1
    unit = F.normalize(tokens.detach(), dim=-1)
    assert any(torch.allclose(vq.codebook[1], u) for u in unit)
    assert vq._codebook.cluster_size[0, 1] == 1.0


def test_learning_only_in_train_mode_with_autograd():
    vq = _two_code_quantiser()
    before = vq.codebook.clone()
    tokens = torch.randn(5, 2)
    with torch.no_grad():
        vq(tokens)
    vq.eval()
    vq(tokens)
    assert torch.equal(vq.codebook, before)
    vq.stop_learning()
    vq.train()
    vq(tokens)
    assert torch.equal(vq.codebook, before)


def test_gradients_reach_every_encoder_parameter_on_the_latent_path():
    model = tiny_model(seed=1)
    model.visual_transformer.vq.start_learning()
    model.train()
    out = model.visual_features(tiny_volume(model, batch=2, seed=2))
    latent = model.latent_from_quantized(out.quantized)
    (latent[:, 0].sum() + model.visual_transformer.vq.commit_loss).backward()
    unused = ("to_patch_emb_first_frame", "to_pixels")  # decoder parts of the official VQ-VAE
    # context_norm exists in the official attention but is never applied; null_kv is empty (0 rows).
    idle = ("context_norm", "null_kv")
    params = [
        (n, p)
        for n, p in model.visual_transformer.named_parameters()
        if not n.startswith(unused) and not any(i in n for i in idle)
    ]
    assert params
    without = [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    # The frozen quantiser gives the encoder no gradient at all (what the learning mode fixes).
    frozen = tiny_model(seed=1).train()
    out = frozen.visual_features(tiny_volume(frozen, batch=2, seed=2))
    assert not frozen.latent_from_quantized(out.quantized).requires_grad or all(
        p.grad is None for p in frozen.visual_transformer.to_patch_emb.parameters()
    )


def test_bad_learning_settings_are_refused():
    with pytest.raises(ValueError, match="decay"):
        QuantizerLearning(decay=1.0)


def test_a_config_without_the_quantiser_pools_the_tokens_themselves():
    from pipeline.ctclip.config import get_config
    from pipeline.ctclip.model import CTCLIP
    from schemas.ctclip import CTCLIPConfig

    base = get_config("tiny").model_dump(mode="json")
    base["visual"]["quantize"] = False
    torch.manual_seed(3)
    model = CTCLIP(CTCLIPConfig.model_validate(base)).eval()
    assert model.visual_transformer.vq is None
    assert not [k for k in model.state_dict() if ".vq." in k]  # no codebook to store or load
    volume = tiny_volume(model, batch=2, seed=4)
    tokens = model.visual_transformer.encode_tokens(volume)  # (b, t, h, w, dim)
    # by hand: mean over depth, flatten (h, w, dim), project, normalise
    pooled = tokens.mean(dim=1).reshape(2, -1)
    expected = F.normalize(pooled @ model.to_visual_latent.weight.T, dim=-1)
    assert torch.allclose(model.encode_ct(volume), expected, atol=1e-6)
    # and every encoder parameter on the latent path learns (no quantiser to pass through)
    model.train()
    model.latent_from_quantized(model.visual_features(volume).quantized)[:, 0].sum().backward()
    unused = ("to_patch_emb_first_frame", "to_pixels")
    idle = ("context_norm", "null_kv")
    without = [
        n
        for n, p in model.visual_transformer.named_parameters()
        if not n.startswith(unused) and not any(i in n for i in idle) and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert without == []
