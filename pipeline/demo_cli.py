"""``x2ct-pipeline demo``: the whole method end to end on fresh synthetic patients (options here; the work
is ``trainer.demo``, imported inside the command body so that ``--help`` stays instant)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors


@friendly_errors
def demo(
    out: Path | None = typer.Option(
        None, help="Folder of the whole demo; the same command again resumes it (default: out/demo)."
    ),
    n: int | None = typer.Option(None, help="Synthetic CT volumes to make (default: 1400)."),
    epochs: int | None = typer.Option(None, help="Student training epochs (default: 60)."),
    pretrain_teacher: bool | None = typer.Option(
        None,
        "--pretrain-teacher",
        help="Pretrain the teacher in the run (pretrain-ctclip) instead of using the bundled one.",
    ),
    teacher: Path | None = typer.Option(
        None, help="Teacher folder (ctclip.pt, model_config.json, vocab.txt) to use instead."
    ),
    workers: int | None = typer.Option(None, help="Processes for synth and simulate-drr (default: 2)."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or JSON file with the demo's options; flags override it."
    ),
) -> None:
    """Run synth -> manifests -> simulate-drr -> embed-ct (bundled teacher) -> train -> evaluate and print the summary."""
    from pipeline.config_file import build_config
    from schemas.demo import DemoConfig
    from trainer.demo.run import run_demo

    cfg = build_config(
        DemoConfig,
        config,
        {
            "out": out,
            "n": n,
            "epochs": epochs,
            "pretrain_teacher": pretrain_teacher,
            "teacher": teacher,
            "workers": workers,
        },
    )
    summary = run_demo(cfg, typer.echo)
    typer.echo("")
    typer.echo("\n".join(summary["table"]))
    typer.echo(
        f"\nreport: {summary['report']}\nevaluate's report: {summary['evaluate_report']}\nfigures: {cfg.out / 'summary.json'}"
    )
    typer.echo(f"wall time of this run: {summary['this_run_wall_s']:.0f} s")
