"""Training on the chain's synthetic set: learning happens, the run directory, a real SIGKILL
and an exact resume, refusals before any step, and the stop on a non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from schemas.train import TrainConfig
from tests.helpers.train_run import NO_AUGMENT
from tests.helpers.train_run import tiny_train_config as config
from trainer.data import join_split
from trainer.encoder import build_encoder, resolve_encoder
from trainer.metrics import recall_at_k
from trainer.run import load_run
from trainer.train import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    """Bitwise-reproducible CPU runs (and no thread oversubscription on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def args(cfg: TrainConfig) -> list[str]:
    """The same run as command-line arguments of ``x2ct-pipeline train``."""
    out = []
    for name in (
        "drr", "embeddings", "valid_drr", "valid_embeddings", "out", "encoder", "batch_size", "epochs",
        "max_steps", "workers", "checkpoint_every", "keep_checkpoints", "log_every", "lr",
    ):  # fmt: skip
        value = getattr(cfg, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out + ["--no-progress"]


def x2c_recall(encoder, transform, split) -> dict[int, float]:
    with torch.no_grad():
        z = encoder.eval()(torch.stack([transform(split.read_image(i, 0)) for i in range(len(split))])).numpy()
    return recall_at_k(z @ split.ct.T, np.arange(len(split)), [1, 5])


def test_training_learns(chain, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = config(chain, out, max_steps=60, lr=2e-3, augment=NO_AUGMENT, checkpoint_every=60, log_every=10)
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["loss_xc"] < 0.5 * rows[0]["loss_xc"]  # the loss falls
    # X->C retrieval on the training volumes, trained vs the untrained encoder of the same seed (chance: 5/19)
    split = join_split(chain.drr["train"], chain.embeddings["train"], ["pa"])
    run = load_run(out)  # no validation split: latest.pt
    assert run.checkpoint.name == "latest.pt" and run.step == 60
    torch.manual_seed(cfg.seed)
    untrained = x2c_recall(build_encoder(resolve_encoder("tiny", 32)), run.eval_transform, split)
    trained = x2c_recall(run.encoder, run.eval_transform, split)
    assert trained[5] >= 0.9 and trained[5] >= untrained[5] + 0.4, (untrained, trained)
    assert trained[1] >= untrained[1] + 0.3, (untrained, trained)


def test_validation_and_the_run_directory(chain, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = config(
        chain,
        out,
        valid_drr=chain.drr["valid"],
        valid_embeddings=chain.embeddings["valid"],
        epochs=3,
        checkpoint_every=2,
        keep_checkpoints=2,
    )
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    assert [(r["step"], r["epoch"]) for r in valid] == [(2, 0), (4, 1), (6, 2)]  # one validation per epoch
    assert {"x2c_recall@5", "x2c_recall@100", "x2r_recall@5", "auroc", "loss", "loss_cr"} <= set(valid[0])
    assert valid[0]["x2c_recall@100"] == 1.0  # K beyond the 9 volumes
    for name in ("config.json", "out.log", "loss.png", "prompts.npz", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == ["step_4.pt", "step_6.pt"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    meta = json.loads((out / "config.json").read_text())
    assert meta["inputs"]["train"]["cache"]["identity_sha256"] and meta["provenance"]["stage"] == "train"

    best = load_run(out)  # best.pt: the step with the highest zero-shot AUROC
    top = max(valid, key=lambda r: r["auroc"])
    assert best.checkpoint.name == "best.pt" and best.step == top["step"]
    split = join_split(chain.drr["train"], chain.embeddings["train"], ["pa"])
    assert best.temperature == pytest.approx(split.temperature) and best.label_names == split.label_names
    np.testing.assert_array_equal(best.prompts["x2ct_clip"]["positive"], split.prompts["x2ct_clip"]["positive"])
    assert best.config == cfg

    # refusals on the finished run: no --resume, or a resume with another config
    from pipeline.cli import app

    runner = CliRunner()
    again = runner.invoke(app, ["train", *args(cfg)])
    assert again.exit_code == 2 and "already holds a run" in again.output
    other = runner.invoke(app, ["train", *args(cfg.model_copy(update={"lr": 1e-3})), "--resume"])
    assert other.exit_code == 2 and "lr: checkpoint 5e-05, now 0.001" in other.output, other.output
    # a moved run directory still resumes (paths are not part of a run's identity); finished: no step
    moved = tmp_path / "moved"
    out.rename(moved)
    train(cfg.model_copy(update={"out": moved, "resume": True}))
    assert torch.load(moved / "checkpoints" / "latest.pt", weights_only=True)["step"] == 6


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import trainer.train as tt
from pipeline.runtime import atomic_path
real, calls = tt.save_checkpoint, [0]

def save_then_die(path, payload):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_SAVE"]):
        with atomic_path(path) as tmp:  # SIGKILL half-way through writing this checkpoint
            tmp.write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    real(path, payload)

tt.save_checkpoint = save_then_die
from trainer.cli import main
main(sys.argv[1:])
"""


def test_sigkill_then_resume_ends_with_the_same_weights(chain, tmp_path, one_thread):
    # default augmentation on, so the resumed batches must get the same random crops, CLAHE and jitter
    killed = config(chain, tmp_path / "killed", max_steps=8, checkpoint_every=2, lr=1e-3, workers=1)
    env = dict(os.environ, KILL_AT_SAVE="3", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, *args(killed)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = killed.out / "checkpoints"
    assert torch.load(ckpts / "latest.pt", weights_only=True)["step"] == 4  # the kill hit the step-6 write
    assert list(ckpts.glob(".step_6.pt.tmp-*"))  # ... and left its temporary behind
    lines = (killed.out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 6  # steps 5-6 were logged before the kill

    resumed = killed.model_copy(update={"resume": True, "workers": 0})  # workers may differ on resume
    train(resumed)
    whole = config(chain, tmp_path / "whole", max_steps=8, checkpoint_every=2, lr=1e-3)
    train(whole)

    a = torch.load(killed.out / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(whole.out / "checkpoints" / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert not list(ckpts.glob(".*.tmp-*"))  # the killed write's temporary is gone
    steps = [json.loads(line)["step"] for line in (killed.out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]  # the lines after the checkpoint were cut, then written again once


def test_refusals_before_any_step(chain, tmp_path):
    with pytest.raises(Exception, match="latent width") as e:
        train(config(chain, tmp_path / "wide", latent_dim=512))
    assert "512" in str(e.value) and "32" in str(e.value)
    with pytest.raises(Exception, match="exceeds the 14 scans"):
        train(config(chain, tmp_path / "big", batch_size=16))
    with pytest.raises(Exception, match="different manifests"):
        train(config(chain, tmp_path / "mixed", embeddings=chain.embeddings["valid"]))
    assert not (tmp_path / "wide").exists() and not (tmp_path / "big").exists()  # nothing written
    with pytest.raises(Exception, match="no checkpoints/latest.pt to resume"):
        train(config(chain, tmp_path / "none", resume=True))


def test_non_finite_loss_stops_naming_step_and_volumes(chain, tmp_path, monkeypatch):
    import trainer.train as tt

    calls = [0]
    real = tt.TriModalLoss.forward

    def poisoned(self, x, ct, report, scale):
        calls[0] += 1
        total, parts = real(self, x, ct, report, scale)
        return (total * float("nan") if calls[0] == 3 else total), parts

    monkeypatch.setattr(tt.TriModalLoss, "forward", poisoned)
    cfg = config(chain, tmp_path / "nan", max_steps=6, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3; batch volumes: train_") as e:
        train(cfg)
    assert e.value.exit_code == 1
    ckpt = torch.load(cfg.out / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 2  # the last good checkpoint is kept
    assert len(str(e.value).split("batch volumes: ")[1].split(". Stopped")[0].split(", ")) == 7
