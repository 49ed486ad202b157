"""The ``x2ct-pipeline`` command line.

Each command lives beside the code it runs (``pipeline/<stage>/cli.py``) and
imports its heavy dependencies (torch, dask, ...) inside the command body, so
that ``--help`` stays instant. This module only assembles them.
"""

from __future__ import annotations

import typer

from pipeline._version import __version__
from pipeline.ctclip.cli import ctclip_app
from pipeline.ctclip.pretrain_cli import pretrain_ctclip
from pipeline.demo_cli import demo
from pipeline.drr.cli import preview, simulate_drr
from pipeline.embed.cli import embed_ct
from pipeline.eval_cli import evaluate, fewshot, predict
from pipeline.manifests.cli import manifest_app
from pipeline.synth.cli import synth

app = typer.Typer(
    name="x2ct-pipeline",
    help="X2CT-CLIP: CT-level abnormality detection from chest radiographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"x2ct-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show DEBUG messages too (the <out>.log has them)."),
) -> None:
    """X2CT-CLIP pipeline: manifests, synthetic data, DRRs, CT-CLIP embeddings, training."""
    from pipeline.runtime import setup_logging

    setup_logging(verbose)


app.add_typer(manifest_app, name="manifest")
app.command("synth")(synth)
app.command("simulate-drr")(simulate_drr)
app.command("preview")(preview)
app.add_typer(ctclip_app, name="ctclip")
app.command("embed-ct")(embed_ct)
app.command("evaluate")(evaluate)
app.command("fewshot")(fewshot)
app.command("predict")(predict)
app.command("pretrain-ctclip")(pretrain_ctclip)
app.command("demo")(demo)


@app.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
def _train(ctx: typer.Context) -> None:
    """Train the CXR encoder on DRRs against the cached CT-CLIP latents (`train --help` for options)."""
    # Lazy: pipeline never imports trainer at module level; trainer.cli parses the arguments itself.
    from trainer.cli import main

    main(list(ctx.args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
