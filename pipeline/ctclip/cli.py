"""``x2ct-pipeline ctclip ...``: look at CT-CLIP checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.cli_errors import friendly_errors

ctclip_app = typer.Typer(help="CT-CLIP (the frozen CT/report teacher): checkpoint tools.", no_args_is_help=True)


@ctclip_app.command("inspect")
@friendly_errors
def inspect(
    ckpt: Path = typer.Argument(..., help="CT-CLIP checkpoint (state dict .pt), e.g. CT-CLIP_v2.pt."),
    model: str = typer.Option(
        "official", help="CT-CLIP model config (name or JSON path) to check keys against (default: official)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Parameter counts per part, temperature, which parts are present, and whether it loads strictly."""
    from pipeline.ctclip.inspect_ckpt import format_summary, inspect_checkpoint

    summary = inspect_checkpoint(ckpt, model)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if summary["missing"] or summary["unexpected"] or summary["shape_mismatch"] or not summary["parts"]:
        raise typer.Exit(code=1)


@ctclip_app.command("vocab")
@friendly_errors
def vocab(
    manifest: list[Path] = typer.Option(..., help="Manifest(s) (.jsonl) whose reports the vocabulary is learnt from."),
    out: Path = typer.Option(..., help="Folder to write vocab.txt (and vocab_provenance.json) into."),
    vocab_size: int = typer.Option(4000, min=64, help="Most tokens to learn, special tokens included."),
    min_frequency: int = typer.Option(2, min=1, help="A merge must occur this many times in the reports."),
) -> None:
    """Learn a lower-case WordPiece vocabulary (BERT special tokens) from the reports of MANIFEST, offline."""
    from pipeline.ctclip.vocab import build_vocab

    record = build_vocab(list(manifest), out, vocab_size=vocab_size, min_frequency=min_frequency)
    typer.echo(f"{out / 'vocab.txt'}: {record['tokens']} tokens from {record['distinct_reports']} distinct reports")


@ctclip_app.command("export")
@friendly_errors
def export(
    run: Path = typer.Argument(..., help="pretrain-ctclip run folder."),
    checkpoint: str = typer.Option("best", help="best, latest or step_N: which checkpoint to export."),
) -> None:
    """Write RUN/export/ (ctclip.pt, model_config.json, vocab.txt, provenance.json) from a checkpoint, e.g. of a
    run still training or cut short; pretrain-ctclip does this itself at the end."""
    from trainer.teacher.pretrain import export_run

    folder = export_run(run, checkpoint)
    typer.echo(f"{folder}: ctclip.pt, model_config.json, vocab.txt, provenance.json")
