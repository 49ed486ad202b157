"""Turn the project's expected errors into one clear line and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import typer


def expected_errors() -> tuple[type[BaseException], ...]:
    from pipeline.config_file import ConfigError
    from pipeline.ct_io import CTLoadError
    from pipeline.ctclip.checkpoint import CheckpointError
    from pipeline.ctclip.text import TokenizerError
    from pipeline.embed.cache import CacheBusyError, CacheMismatchError
    from pipeline.embed.errors import EmbedError
    from pipeline.manifests.tables import TableError
    from schemas.errors import PipelineError
    from schemas.manifest import ManifestError

    return (
        PipelineError,
        ConfigError,
        ManifestError,
        TableError,
        CTLoadError,
        CheckpointError,
        TokenizerError,
        FileNotFoundError,
        CacheMismatchError,
        CacheBusyError,
        EmbedError,
    )


def friendly_errors(fn):
    """Decorator for command bodies: expected errors print as ``error: ...`` (one line) and exit with
    the error's ``exit_code`` (2, refused before work, unless the class says otherwise)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except expected_errors() as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(getattr(e, "exit_code", 2))

    return wrapper
