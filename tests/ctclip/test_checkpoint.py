"""Strict loading of CT-CLIP checkpoints: round trip, clear errors, allow-list, partial checkpoints, inspect."""

from __future__ import annotations

import pytest
import torch

from pipeline.ctclip.checkpoint import CheckpointError, load_ctclip, save_ctclip
from tests.helpers.ctclip import tiny_model, tiny_volume


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_ctclip(model, path)
    return model, path


def _write(state, tmp_path, name="x.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_round_trip_gives_the_same_latents(saved):
    model, path = saved
    loaded = load_ctclip(path, "tiny")
    vol = tiny_volume(model, batch=2)
    ids = torch.tensor([[2, 8, 9, 3], [2, 10, 3, 0]])
    mask = (ids != 0).long()
    assert torch.equal(loaded.encode_ct(vol), model.encode_ct(vol))
    assert torch.equal(loaded.encode_text(ids, mask), model.encode_text(ids, mask))
    assert loaded.loaded_parts == {"visual", "text"}
    assert not any(p.requires_grad for p in loaded.parameters())


def test_missing_unexpected_and_shape_mismatch_are_all_listed(saved, tmp_path):
    state = dict(saved[0].state_dict())
    del state["visual_transformer.to_patch_emb.2.weight"]
    state["visual_transformer.surprise"] = torch.zeros(3)
    state["to_text_latent.weight"] = torch.zeros(7, 7)
    with pytest.raises(CheckpointError) as e:
        load_ctclip(_write(state, tmp_path), "tiny")
    msg = str(e.value)
    assert "x.pt" in msg
    assert "missing keys (1)" in msg and "visual_transformer.to_patch_emb.2.weight" in msg
    assert "unexpected keys (1)" in msg and "visual_transformer.surprise" in msg
    assert "to_text_latent.weight" in msg and "(7, 7)" in msg and "(32, 32)" in msg


def test_position_ids_of_older_files_are_allowed(saved, tmp_path):
    state = dict(saved[0].state_dict())
    state["text_transformer.embeddings.position_ids"] = torch.arange(64)[None]
    model = load_ctclip(_write(state, tmp_path), "tiny")
    assert model.loaded_parts == {"visual", "text"}


def test_visual_only_and_text_only_checkpoints(saved, tmp_path):
    full, _ = saved
    state = full.state_dict()
    vol = tiny_volume(full)
    ids, mask = torch.tensor([[2, 8, 3]]), torch.ones(1, 3, dtype=torch.long)

    visual = {k: v for k, v in state.items() if k.startswith(("visual_transformer.", "to_visual_latent"))}
    m = load_ctclip(_write(visual, tmp_path, "v.pt"), "tiny")
    assert m.loaded_parts == {"visual"}
    assert torch.equal(m.encode_ct(vol), full.encode_ct(vol))
    with pytest.raises(RuntimeError, match="without the text part"):
        m.encode_text(ids, mask)
    assert torch.isnan(m.temperature)

    text = {k: v for k, v in state.items() if k.startswith(("text_transformer.", "to_text_latent"))}
    m = load_ctclip(_write(text, tmp_path, "t.pt"), "tiny")
    assert m.loaded_parts == {"text"}
    assert torch.equal(m.encode_text(ids, mask), full.encode_text(ids, mask))
    with pytest.raises(RuntimeError, match="without the visual part"):
        m.encode_ct(vol)


def test_a_partial_part_is_still_strict(saved, tmp_path):
    visual = {k: v for k, v in saved[0].state_dict().items() if k.startswith("visual_transformer.")}
    with pytest.raises(CheckpointError, match="to_visual_latent.weight"):
        load_ctclip(_write(visual, tmp_path), "tiny")


def test_truncated_wrong_and_absent_files(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch state dict"):
        load_ctclip(truncated, "tiny")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_ctclip(_write([torch.zeros(2)], tmp_path, "list.pt"), "tiny")
    with pytest.raises(CheckpointError, match="not found"):
        load_ctclip(tmp_path / "absent.pt", "tiny")
    with pytest.raises(CheckpointError, match="holds no CT-CLIP weights"):
        load_ctclip(_write({"something.else": torch.zeros(1)}, tmp_path, "other.pt"), "tiny")


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a file that needs arbitrary unpickling is never executed."""
    path = _write({"temperature": _NotATensor()}, tmp_path, "pickle.pt")
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        load_ctclip(path, "tiny")


def test_a_checkpoint_for_another_config_is_refused(saved):
    with pytest.raises(CheckpointError, match="does not match the CT-CLIP config 'official'"):
        load_ctclip(saved[1], "official")


def test_inspect_command(saved, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["ctclip", "inspect", str(saved[1]), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert "strict load  OK" in result.output and "parts        text, visual" in result.output
    n_params = sum(p.numel() for p in saved[0].text_transformer.parameters())
    assert f"{n_params:,}" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["ctclip", "inspect", str(bad)])
    assert result.exit_code == 2 and "bad.pt" in result.output


def test_non_finite_weights_are_found_and_large_finite_ones_pass():
    """The fast path (a finite sum) may overflow on large finite values: the exact test must then pass them."""
    from pathlib import Path

    import pytest
    import torch

    from pipeline.ctclip.checkpoint import CheckpointError, check_finite_weights

    big = torch.full((4,), 60000.0, dtype=torch.float16)  # finite, but the float16 sum overflows to inf
    assert not torch.isfinite(big.sum())
    check_finite_weights(Path("ok.pt"), {"a": big, "b": torch.zeros(0), "c": torch.arange(3)})
    nan, inf = torch.ones(5), torch.ones(5)
    nan[2], inf[4] = float("nan"), -float("inf")
    with pytest.raises(CheckpointError, match=r"bad.pt: 2 tensor\(s\) hold NaN or infinite values \(n, i\)"):
        check_finite_weights(Path("bad.pt"), {"n": nan, "ok": big, "i": inf})
