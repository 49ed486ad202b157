"""Bad input to the commands after embed-ct (train, evaluate, fewshot, predict): one line, the right exit, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.faults.conftest import cli, tree_digest
from tests.helpers.radiographs import chest_like, write_png


def train_args(chain, out: Path, *extra) -> list:
    return [
        "train", "--drr", chain.drr["train"], "--embeddings", chain.embeddings["train"], "--out", out,
        "--encoder", "tiny", "--max-steps", "2", "--batch-size", "7", "--workers", "0", "--device", "cpu",
        "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(chain, tmp_path_factory) -> Path:
    """A run of two steps on the chain (read-only: copy it before changing it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("faults-run") / "run"
    res = cli(*train_args(chain, out))
    torch.set_num_threads(before)
    assert res.exit_code == 0, res.stderr
    return out


def evaluate_args(chain, run: Path, out: Path) -> list:
    return [
        "evaluate", "--run", run, "--drr", chain.drr["valid"], "--emb", chain.embeddings["valid"], "--out", out,
        "--n-resamples", "0", "--no-progress",
    ]  # fmt: skip


def fewshot_args(chain, run: Path, out: Path) -> list:
    return [
        "fewshot", "--run", run, "--train-drr", chain.drr["train"], "--train-emb", chain.embeddings["train"],
        "--test-drr", chain.drr["valid"], "--test-emb", chain.embeddings["valid"], "--out", out,
        "--fractions", "1", "--seeds", "1", "--max-epochs", "2", "--no-progress",
    ]  # fmt: skip


def predict_args(run: Path, image: Path, out: Path) -> list:
    return ["predict", image, "--run", run, "--out", out]


@pytest.fixture
def png(tmp_path) -> Path:
    return write_png(tmp_path / "cxr.png", chest_like(64, seed=1), 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "evaluate", "fewshot", "predict"])
def test_cuda_without_a_gpu_is_refused_before_start(command, chain, run_dir, png, tmp_path):
    out = tmp_path / ("out.csv" if command == "predict" else "out")
    args = {
        "train": lambda: train_args(chain, out),
        "evaluate": lambda: evaluate_args(chain, run_dir, out),
        "fewshot": lambda: fewshot_args(chain, run_dir, out),
        "predict": lambda: predict_args(run_dir, png, out),
    }[command]()
    before = tree_digest(run_dir)
    res = cli(*args, "--device", "cuda")
    assert res.exit_code == 2 and "--device cuda" in res.error_line and "--device cpu" in res.error_line
    assert list(tmp_path.iterdir()) == [png], "nothing written, not even a lock file"
    assert tree_digest(run_dir) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_embed_ct_cuda_without_a_gpu_is_refused_with_the_shared_line(chain, tmp_path):
    res = cli(
        "embed-ct", "--manifest", chain.manifests["valid"], "--checkpoint", chain.checkpoint, "--tokenizer",
        chain.tokenizer, "--out", tmp_path / "e.h5", "--model", "tiny", "--device", "cuda", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 2 and "--device cuda but torch sees no CUDA GPU" in res.error_line
    assert not (tmp_path / "e.h5").exists()


def folder_command_args(command: str, chain, run: Path, out: Path) -> list:
    """Arguments of a command whose --out is a folder; each is refused before it reads its inputs."""
    return {
        "train": lambda: train_args(chain, out),
        "evaluate": lambda: [*evaluate_args(chain, run, out), "--overwrite"],
        "fewshot": lambda: [*fewshot_args(chain, run, out), "--overwrite"],
        "pretrain-ctclip": lambda: [
            "pretrain-ctclip",
            "--manifest",
            chain.manifests["train"],
            "--tokenizer",
            chain.tokenizer,
            "--out",
            out,
            "--no-progress",
        ],  # fmt: skip
        # --pretrain-teacher: the --out checks alone, whether or not the bundled teacher is in this checkout
        "demo": lambda: ["demo", "--out", out, "--n", "8", "--pretrain-teacher"],
    }[command]()


FOLDER_COMMANDS = ["train", "evaluate", "fewshot", "pretrain-ctclip", "demo"]


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_out_an_existing_regular_file_is_left_alone(command, chain, run_dir, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    res = cli(*folder_command_args(command, chain, run_dir, out))
    assert res.exit_code == 2 and str(out) in res.error_line and "not a folder" in res.error_line
    assert out.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"], "no lock or log file beside it"


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_out_below_a_regular_file_is_one_line(command, chain, run_dir, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    res = cli(*folder_command_args(command, chain, run_dir, tmp_path / "plain.txt" / "run"))
    assert res.exit_code == 2 and "plain.txt" in res.error_line
    assert (tmp_path / "plain.txt").read_text() == "x"


@pytest.mark.parametrize("command", ["train", "demo", "pretrain-ctclip"])
def test_out_a_users_folder_is_refused_not_mixed_into(command, chain, run_dir, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{}")
    (out / "metrics.jsonl").write_text('{"mine": 1}\n')  # train writes a file of this name
    before = tree_digest(out)
    res = cli(*folder_command_args(command, chain, run_dir, out))
    assert res.exit_code == 2 and str(out) in res.error_line and "not empty" in res.error_line
    assert tree_digest(out) == before and sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"], "no lock file beside it"


@pytest.fixture(scope="module")
def nan_run(run_dir, tmp_path_factory) -> Path:
    """A copy of the run whose checkpoints hold a NaN weight (as a damaged file or a diverged run would)."""
    import shutil

    out = tmp_path_factory.mktemp("faults-nan") / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    for ckpt in (out / "checkpoints").glob("*.pt"):
        if ckpt.is_symlink():
            continue
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name].view(-1)[0] = float("nan")
        torch.save(state, ckpt)
    return out


def test_load_run_refuses_non_finite_weights(nan_run):
    from pipeline.ctclip.checkpoint import CheckpointError
    from trainer.run import load_run

    with pytest.raises(CheckpointError, match="NaN or infinite.*another checkpoint of the run"):
        load_run(nan_run, checkpoint="latest")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_run_with_nan_weights_is_refused_not_scored(command, chain, nan_run, png, tmp_path):
    out = tmp_path / ("p.csv" if command == "predict" else "eval")
    args = evaluate_args(chain, nan_run, out) if command == "evaluate" else predict_args(nan_run, png, out)
    res = cli(*args, "--checkpoint", "latest", "--device", "cpu")
    assert res.exit_code == 2 and "NaN or infinite" in res.error_line and "latest.pt" in res.error_line
    assert not out.exists(), "no table of NaN scores"


def test_predict_never_writes_a_non_finite_score_as_ok(png):
    from tests.helpers.tiny_run import tiny_run
    from trainer.predict.stage import predict_files

    run = tiny_run()
    good = predict_files(run, [png])
    assert good[0]["status"] == "ok" and all(np.isfinite(list(good[0]["scores"].values())))
    run.prompts["x2ct_clip"]["positive"][3] = np.nan  # a NaN that reaches the scores, not the weights
    row = predict_files(run, [png])[0]
    assert row["status"] == "error" and "non-finite" in row["error"] and "scores" not in row


def test_empty_run_checkpoint_says_why(run_dir, tmp_path):
    from trainer.checkpoint import CheckpointMismatchError, load_checkpoint

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(empty)
    assert "()" not in str(e.value) and "cannot be read (" in str(e.value)


def test_predict_replaces_only_its_own_table(chain, run_dir, png, tmp_path):
    out = tmp_path / "p.json"
    first = cli(*predict_args(run_dir, png, out), "--device", "cpu")
    assert first.exit_code == 0, first.stderr
    again = cli(*predict_args(run_dir, png, out), "--device", "cpu")
    assert again.exit_code == 0, again.stderr  # an earlier predict table is replaced
    csv_out = tmp_path / "p.csv"
    assert cli(*predict_args(run_dir, png, csv_out), "--device", "cpu").exit_code == 0
    assert cli(*predict_args(run_dir, png, csv_out), "--device", "cpu").exit_code == 0
    for name, text in (("m.json", '{"volume_id": "x"}\n'), ("mine.csv", "file,status\na,b\n")):
        other = tmp_path / name
        other.write_text(text)
        res = cli(*predict_args(run_dir, png, other), "--device", "cpu")
        assert res.exit_code == 2 and str(other) in res.error_line and "not a table of predict" in res.error_line
        assert other.read_text() == text


def test_predict_out_below_a_file_is_refused_before_work(run_dir, png, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    res = cli(*predict_args(run_dir, png, tmp_path / "plain.txt" / "p.csv"), "--device", "cpu")
    assert res.exit_code == 2 and "plain.txt" in res.error_line


@pytest.mark.parametrize("content", [b"not hdf5 at all\n", b""])
def test_predict_emb_that_is_not_a_cache_is_one_line(run_dir, png, tmp_path, content):
    emb = tmp_path / "e.h5"
    emb.write_bytes(content)
    res = cli(*predict_args(run_dir, png, tmp_path / "p.csv"), "--emb", emb, "--device", "cpu")
    assert res.exit_code == 2 and str(emb) in res.error_line and "not an embed-ct cache" in res.error_line
    assert not (tmp_path / "p.csv").exists()


def test_reader_refuses_an_hdf5_file_of_another_kind(tmp_path):
    import h5py

    from pipeline.embed.reader import NotACacheError, load_embeddings

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(NotACacheError, match="other.h5 is not an embed-ct cache"):
        load_embeddings(tmp_path / "other.h5")


def test_pretrain_latin1_vocab_is_one_line_before_the_run_folder(chain, tmp_path):
    vocab = tmp_path / "tok" / "vocab.txt"
    vocab.parent.mkdir()
    vocab.write_bytes((chain.tokenizer / "vocab.txt").read_bytes() + "pleural_\xe9panchement\n".encode("latin-1"))
    out = tmp_path / "run"
    res = cli(
        "pretrain-ctclip", "--manifest", chain.manifests["train"], "--tokenizer", vocab.parent, "--out", out,
        "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 2 and str(vocab) in res.error_line and "unreadable vocabulary" in res.error_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"], "no run folder, no lock file"


def test_demo_without_its_teacher_is_refused_before_the_first_stage(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "vocab.txt").write_text("[PAD]\n")  # a folder missing ctclip.pt and model_config.json
    out = tmp_path / "demo"
    res = cli("demo", "--out", out, "--n", "8", "--teacher", teacher)
    assert res.exit_code == 2 and str(teacher) in res.error_line
    assert "ctclip.pt, model_config.json" in res.error_line and "--pretrain-teacher" in res.error_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"], "no stage ran, no demo folder"


def test_resuming_a_finished_run_says_what_it_has_not_none(chain, run_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    res = cli(*train_args(chain, out, "--resume"))
    assert res.exit_code == 0, res.stderr
    done = [line for line in res.stderr.splitlines() if line.startswith("done: 2 steps")]
    assert len(done) == 1 and "None" not in done[0] and "no validation result" in done[0], res.stderr
