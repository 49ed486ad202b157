"""Errors of embed-ct that the command line reports as one clear line."""

from schemas.errors import ItemsFailedError


class EmbedError(ValueError):
    """A problem with the run's inputs or workers, found before any volume is read."""


class TooManyFailures(ItemsFailedError):
    """More items failed than --max-failures allows; the rows finished before are committed."""
