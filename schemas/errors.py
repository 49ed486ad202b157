"""The one base class of expected errors, at the bottom of the house.

Every error that means "the input or the request is wrong, and here is what to
do" derives from :class:`PipelineError`, whatever stage raises it. The command
line catches this class alone: it prints the message on one line and exits with
the error's ``exit_code``. Anything else is a bug and keeps its traceback.

Exit statuses of every command:

* 0: success.
* 1: the run worked through its items but some failed beyond ``--max-failures``, or all
  of them failed (:class:`ItemsFailedError`). Finished items are kept.
* 2: refused before any work (bad input, a mismatch, a busy output): nothing changed.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure whose message names the item and the fix."""

    exit_code: int = 2


class ItemsFailedError(PipelineError):
    """A run that stopped on, or ended with, too many failed items (finished items are kept)."""

    exit_code = 1


class InputMissingError(PipelineError, FileNotFoundError):
    """An input file or folder the run needs does not exist."""
