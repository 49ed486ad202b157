"""Turn the project's expected errors into one clear line and the error's exit status.

Every expected error derives from :class:`schemas.errors.PipelineError` (whatever stage
raises it), so this is the only place the command line catches anything; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

from schemas.errors import PipelineError


def friendly_errors(fn):
    """Decorator for command bodies: a PipelineError prints as ``error: ...`` and exits with its exit_code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            import typer

            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(e.exit_code)

    return wrapper
