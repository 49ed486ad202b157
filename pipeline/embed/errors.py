"""Errors of embed-ct that the command line reports as one clear line."""

from schemas.errors import ItemsFailedError, PipelineError


class EmbedError(PipelineError, ValueError):
    """A problem with the run's inputs or workers, found before any volume is read."""


class TooManyFailures(ItemsFailedError, RuntimeError):
    """More items failed than --max-failures allows; the rows finished before are committed."""
