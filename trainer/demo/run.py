"""The demo's stages, each one or more ``x2ct-pipeline`` commands run in this process.

A stage that finishes writes ``<out>/.stages/<name>.json`` (its wall time); a rerun
skips finished stages, and a stage that was interrupted is simply run again: every
command it calls resumes its own output (synth keeps finished volumes, simulate-drr
and embed-ct keep finished items, train continues from its latest checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from schemas.demo import DemoConfig
from schemas.errors import InputMissingError, PipelineError

logger = logging.getLogger(__name__)

BUNDLED_TEACHER = "synth_small"
TEACHER_FILES = ("ctclip.pt", "model_config.json", "vocab.txt")  # what embed-ct is given from a teacher folder


class DemoStageError(PipelineError):
    """A stage's command failed; the message names the command."""

    exit_code = 1


def check_teacher_folder(cfg: DemoConfig) -> None:
    """A teacher folder without its files would fail only at embed-ct, after synth and simulate-drr:
    refuse it before the first stage (an in-run teacher, --pretrain-teacher, is made by the run)."""
    if cfg.pretrain_teacher:
        return
    folder = cfg.teacher or bundled_teacher()
    missing = [name for name in TEACHER_FILES if not (folder / name).is_file()]
    if missing:
        whose = "the bundled teacher's folder" if cfg.teacher is None else "the --teacher folder"
        raise InputMissingError(
            f"{folder} ({whose}) has no {', '.join(missing)}; give --teacher a folder holding "
            f"{', '.join(TEACHER_FILES)}, or pass --pretrain-teacher to make one in the run"
        )


def bundled_teacher() -> Path:
    """The folder of the teacher shipped with the package (see docs/teacher.md)."""
    return Path(str(resources.files("pipeline.ctclip").joinpath("teachers").joinpath(BUNDLED_TEACHER)))


@dataclass
class DemoPaths:
    root: Path

    def __getattr__(self, name: str) -> Path:  # a small fixed layout, named in one place
        layout = {
            "ct_rate": "ct-rate",
            "train_manifest": "manifests/train.jsonl",
            "test_manifest": "manifests/test.jsonl",
            "drr_train": "drr/train.zarr",
            "drr_test": "drr/test.zarr",
            "emb_train": "embeddings/train.h5",
            "emb_test": "embeddings/test.h5",
            "teacher_vocab": "teacher/vocab",
            "teacher_run": "teacher/run",
            "student": "student",
            "evaluate": "evaluate",
            "stages": ".stages",
            "summary_json": "summary.json",
            "report": "report.html",
        }
        if name not in layout:
            raise AttributeError(name)
        return self.root / layout[name]


def command(args: list[str]) -> None:
    """Run ``x2ct-pipeline ARGS`` in this process; a non-zero exit becomes a DemoStageError."""
    from typer.main import get_command

    from pipeline.cli import app

    logger.info("x2ct-pipeline %s", " ".join(args))
    try:
        get_command(app).main(args=args, prog_name="x2ct-pipeline", standalone_mode=False)
    except SystemExit as e:
        if e.code not in (0, None):
            raise DemoStageError(f"stage command failed (exit {e.code}): x2ct-pipeline {' '.join(args)}") from None


class Demo:
    def __init__(self, cfg: DemoConfig, echo: Callable[[str], None]):
        self.cfg = cfg
        self.p = DemoPaths(cfg.out)
        self.echo = echo

    @property
    def teacher(self) -> Path:
        if self.cfg.pretrain_teacher:
            return self.p.teacher_run / "export"
        return self.cfg.teacher or bundled_teacher()

    def stages(self) -> list[tuple[str, Callable[[], None]]]:
        out = [("synth", self.synth), ("manifests", self.manifests)]
        if self.cfg.pretrain_teacher:
            out.append(("pretrain-ctclip", self.pretrain))
        out += [
            ("simulate-drr", self.simulate),
            ("embed-ct", self.embed),
            ("train", self.train),
            ("evaluate", self.evaluate),
            ("summary", self.summary),
        ]
        return out

    def run(self) -> dict:
        from pipeline.runtime import atomic_write_text

        stages = self.stages()
        self.p.stages.mkdir(parents=True, exist_ok=True)
        walls = {}
        for i, (name, fn) in enumerate(stages, 1):
            marker = self.p.stages / f"{name}.json"
            if marker.is_file():
                walls[name] = json.loads(marker.read_text())["wall_s"]
                self.echo(f"[{i}/{len(stages)}] {name}: finished earlier ({walls[name]:.0f} s), skipped")
                continue
            self.echo(f"[{i}/{len(stages)}] {name} ...")
            t0 = time.perf_counter()
            fn()
            walls[name] = time.perf_counter() - t0
            atomic_write_text(marker, json.dumps({"wall_s": walls[name]}))
            self.echo(f"[{i}/{len(stages)}] {name}: done in {walls[name]:.0f} s")
        return walls

    # --- stages ------------------------------------------------------------------------------------------
    def synth(self) -> None:
        c = self.cfg
        command(
            [
                "synth",
                "--out",
                str(self.p.ct_rate),
                "--n",
                str(c.n),
                "--size",
                str(c.size),
                "--seed",
                str(c.seed),
                "--valid-fraction",
                str(c.test_fraction),
                "--workers",
                str(c.workers),
                "--no-progress",
            ]
        )

    def manifests(self) -> None:
        for split, path in (("train", self.p.train_manifest), ("valid", self.p.test_manifest)):
            command(["manifest", "ct-rate", "--root", str(self.p.ct_rate), "--split", split, "--out", str(path)])

    def pretrain(self) -> None:
        command(["ctclip", "vocab", "--manifest", str(self.p.train_manifest), "--out", str(self.p.teacher_vocab)])
        command(
            [
                "pretrain-ctclip",
                "--manifest",
                str(self.p.train_manifest),
                "--tokenizer",
                str(self.p.teacher_vocab),
                "--out",
                str(self.p.teacher_run),
                "--epochs",
                str(self.cfg.teacher_epochs),
                "--anchor-epochs",
                str(max(1, self.cfg.teacher_epochs // 2)),
                "--no-progress",
            ]
        )

    def simulate(self) -> None:
        for manifest, store in ((self.p.train_manifest, self.p.drr_train), (self.p.test_manifest, self.p.drr_test)):
            command(
                [
                    "simulate-drr",
                    "--manifest",
                    str(manifest),
                    "--out",
                    str(store),
                    "--views",
                    "pa",
                    "--size",
                    str(self.cfg.drr_size),
                    "--workers",
                    str(self.cfg.workers),
                    "--threads",
                    "1",
                    "--no-progress",
                ]
            )

    def embed(self) -> None:
        t = self.teacher
        for manifest, cache in ((self.p.train_manifest, self.p.emb_train), (self.p.test_manifest, self.p.emb_test)):
            command(
                [
                    "embed-ct",
                    "--manifest",
                    str(manifest),
                    "--checkpoint",
                    str(t / "ctclip.pt"),
                    "--tokenizer",
                    str(t),
                    "--model",
                    str(t / "model_config.json"),
                    "--out",
                    str(cache),
                    "--workers",
                    "0",
                    "--no-progress",
                ]
            )

    def train(self) -> None:
        c = self.cfg
        args = [
            "train",
            "--drr",
            str(self.p.drr_train),
            "--embeddings",
            str(self.p.emb_train),
            "--out",
            str(self.p.student),
            "--encoder",
            c.encoder,
            "--epochs",
            str(c.epochs),
            "--batch-size",
            str(c.batch_size),
            "--lr",
            str(c.lr),
            "--schedule",
            "cosine",
            "--warmup-steps",
            "20",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ]
        if (self.p.student / "checkpoints" / "latest.pt").is_file():
            args.append("--resume")
        command(args)

    def evaluate(self) -> None:
        command(
            [
                "evaluate",
                "--run",
                str(self.p.student),
                "--drr",
                str(self.p.drr_test),
                "--emb",
                str(self.p.emb_test),
                "--out",
                str(self.p.evaluate),
                "--n-resamples",
                "200",
                "--overwrite",
                "--no-progress",
            ]
        )

    def summary(self) -> None:
        from trainer.demo.summary import write_summary

        write_summary(self.p, self.teacher, self.cfg)


def run_demo(cfg: DemoConfig, echo: Callable[[str], None]) -> dict:
    """All stages under the demo folder's lock, logging to ``<out>/demo.log``; returns the summary."""
    from pipeline.runtime import log_to_file, make_folder, output_lock, refuse_foreign_folder, refuse_non_folder

    refuse_non_folder(cfg.out, "a demo folder")
    refuse_foreign_folder(cfg.out, (DemoPaths(cfg.out).stages.name, "demo.log"), "a demo folder")
    check_teacher_folder(cfg)
    make_folder(cfg.out, cfg.out)
    t0 = time.perf_counter()
    with output_lock(cfg.out, "demo"), log_to_file(cfg.out / "demo.log"):
        walls = Demo(cfg, echo).run()
    summary = json.loads((cfg.out / "summary.json").read_text())
    summary["stage_wall_s"] = walls
    summary["this_run_wall_s"] = time.perf_counter() - t0
    return summary
