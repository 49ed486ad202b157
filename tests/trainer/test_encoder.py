"""Encoder towers, normalisation from the tower's own config, initial weights, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.train import AugmentConfig
from trainer.encoder import EncoderError, build_encoder, resolve_encoder
from trainer.transforms import EvalTransform, TrainTransform


def test_tiny_encoder_outputs_unit_latents_of_the_teacher_width():
    spec = resolve_encoder("tiny", 32)
    enc = build_encoder(spec)
    z = enc(torch.randn(3, 3, spec.image_size, spec.image_size))
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    assert enc.proj.bias is None


def test_resnet_mini_is_open_clips_modified_resnet_at_the_demos_radiograph_size():
    from open_clip.modified_resnet import ModifiedResNet

    from schemas.demo import DemoConfig

    spec = resolve_encoder("resnet-mini", 128)
    enc = build_encoder(spec)
    assert isinstance(enc.tower, ModifiedResNet)
    # the same tower built by hand from the preset's numbers: 1 bottleneck per stage, width 16 (512 channels out,
    # 32 heads of 16), attention pool to 128
    torch.manual_seed(0)
    direct = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=128, heads=32, image_size=128, width=16)
    assert {k: v.shape for k, v in enc.tower.state_dict().items()} == {
        k: v.shape for k, v in direct.state_dict().items()
    }
    # the demo feeds its radiographs at their simulated size: no resampling between simulate-drr and the encoder
    demo = DemoConfig()
    assert demo.encoder == "resnet-mini" and spec.image_size == demo.drr_size == 128
    z = enc(torch.randn(2, 3, 128, 128))
    assert z.shape == (2, 128)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))


def test_normalisation_comes_from_the_encoder_config():
    import open_clip
    import timm
    from open_clip.constants import OPENAI_DATASET_MEAN

    tiny = resolve_encoder("tiny", 32)  # its JSON says 0.5 / 0.5
    assert tiny.mean == (0.5, 0.5, 0.5) and tiny.std == (0.5, 0.5, 0.5)
    vit = resolve_encoder("ViT-B-32", 512)  # open_clip config without preprocess_cfg: open_clip's defaults
    assert (
        vit.mean == tuple(OPENAI_DATASET_MEAN)
        and vit.feature_dim == open_clip.get_model_config("ViT-B-32")["embed_dim"]
    )
    res = resolve_encoder("timm:resnet18", 512)  # timm: the model's pretrained_cfg
    cfg = timm.create_model("resnet18", pretrained=False).pretrained_cfg
    assert res.mean == tuple(cfg["mean"]) and res.std == tuple(cfg["std"]) and res.feature_dim == 512
    assert resolve_encoder("tiny", 32, mean=(0.1, 0.2, 0.3)).mean == (0.1, 0.2, 0.3)  # explicit override
    with pytest.raises(EncoderError, match="unknown encoder"):
        resolve_encoder("no-such-model", 32)
    with pytest.raises(EncoderError, match="timm has no model"):
        resolve_encoder("timm:no_such_net", 32)


def test_init_from_open_clip_timm_and_run_weights(tmp_path):
    spec = resolve_encoder("tiny", 32)
    torch.manual_seed(1)
    source = build_encoder(spec)
    # open_clip: a whole-model state dict, the tower under "visual."
    path = tmp_path / "open_clip.pt"
    torch.save({f"visual.{k}": v for k, v in source.tower.state_dict().items()} | {"logit_scale": torch.ones(())}, path)
    torch.manual_seed(2)
    loaded = build_encoder(spec, init=path)
    for k, v in source.tower.state_dict().items():
        torch.testing.assert_close(loaded.tower.state_dict()[k], v)
    assert not torch.equal(loaded.proj.weight, source.proj.weight)  # the projection stays new
    # one of our runs: the whole encoder
    run = tmp_path / "run.pt"
    torch.save({"model": source.state_dict(), "encoder_spec": spec.to_json()}, run)
    torch.testing.assert_close(build_encoder(spec, init=run).proj.weight, source.proj.weight)
    with pytest.raises(EncoderError, match="latent width"):
        build_encoder(resolve_encoder("tiny", 16), init=run)
    # timm: the trunk's state dict plus the classifier our trunk drops
    rspec = resolve_encoder("timm:resnet18", 8)
    trunk = build_encoder(rspec).tower.trunk.state_dict()
    tpath = tmp_path / "timm.pth"
    torch.save({**trunk, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, tpath)
    got = build_encoder(rspec, init=tpath).tower.trunk.state_dict()
    assert all(torch.equal(got[k], v) for k, v in trunk.items())
    bad = tmp_path / "bad.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(EncoderError, match="do not fit"):
        build_encoder(spec, init=bad)


def test_eval_transform_is_deterministic_and_normalises():
    spec = resolve_encoder("tiny", 32)
    ev = EvalTransform(spec)
    img = np.full((100, 80), 0.5, np.float32)
    out = ev(img)
    assert out.shape == (3, 64, 64)
    torch.testing.assert_close(out, torch.zeros_like(out))  # (0.5 - 0.5) / 0.5
    ramp = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    torch.testing.assert_close(ev(ramp), ev(ramp))
    # resize 128 -> 64: column means of the ramp stay a ramp from about -1 to 1
    row = ev(ramp)[0, 32].numpy()
    assert row[0] < -0.95 and row[-1] > 0.95 and np.all(np.diff(row) > 0)


def test_train_transform_augments_within_range():
    spec = resolve_encoder("tiny", 32)
    tr = TrainTransform(spec, AugmentConfig(clahe_p=1.0))
    rng = np.random.default_rng(0)
    img = rng.random((96, 96), dtype=np.float32)
    torch.manual_seed(0)
    a = tr(img)
    torch.manual_seed(0)
    b = tr(img)
    torch.manual_seed(1)
    c = tr(img)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (3, 64, 64) and float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])  # gray, repeated
