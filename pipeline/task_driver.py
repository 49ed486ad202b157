"""The one task driver of the stages that farm items out to workers (simulate-drr, embed-ct).

The calling process keeps a bounded number of tasks in flight (a 50k-item run never puts
50k futures on the scheduler, and never holds more decoded volumes than memory allows),
hands each finished task to the stage, counts failed items against ``--max-failures``
and, once past it, stops submitting and cancels what is still in flight. Finished items
are written by then, so stopping loses nothing. One progress bar per run; failures are
logged one line each (``logging``), so they never tear the bar.

What a stage supplies is a :class:`TaskSource`: how to top up the window, which handles
are in flight, how to wait for some of them and what to do with a finished one. The
handles are whatever its executor returns (Dask futures, ``concurrent.futures`` futures).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TaskSource(Protocol):
    def has_work(self) -> bool:
        """Whether items remain: queued, in flight or waiting to be submitted."""

    def refill(self) -> None:
        """Submit tasks until the window is full (or nothing is left to submit)."""

    def in_flight(self) -> list[Any]:
        """Handles of the submitted tasks not yet handled."""

    def wait_any(self, handles: list[Any]) -> Iterable[Any]:
        """Some finished handles (at least one, unless it gives up after a timeout)."""

    def finish(self, handle: Any) -> None:
        """Handle one finished task: record its items with :meth:`TaskDriver.succeeded` / :meth:`TaskDriver.failed`."""

    def cancel(self, handles: list[Any]) -> None:
        """Cancel tasks still in flight when the run stops early."""


class TaskDriver:
    """Failure budget, progress bar and the wait-handle-refill loop of one run."""

    def __init__(self, stage: str, total: int, max_failures: int, unit: str = "vol", progress: bool = True):
        from tqdm import tqdm

        self.stage, self.max_failures = stage, max_failures
        self.done = 0
        self.failures: dict[str, str] = {}  # item -> reason, this run's
        self.stopped_early = False
        self.bar = tqdm(total=total, desc=stage, unit=unit, disable=not progress, dynamic_ncols=True)

    def succeeded(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)

    def failed(self, item: str, reason: str) -> None:
        """One failed item; past ``max_failures`` the run stops early (the loop cancels what is in flight)."""
        self.failures[item] = reason
        self.bar.update(1)
        log.warning("failed: %s: %s", item, reason[:300])
        if len(self.failures) > self.max_failures and not self.stopped_early:
            self.stopped_early = True
            log.error("more than %d failures: stopping (finished items are kept)", self.max_failures)

    def run(self, source: TaskSource) -> None:
        """Keep the window full and hand finished tasks to ``source`` until all is done or the run stops."""
        try:
            while source.has_work() and not self.stopped_early:
                source.refill()
                # Every finished handle is handed over, even after a failure stops the run: its work is done.
                for handle in source.wait_any(source.in_flight()):
                    source.finish(handle)
        finally:
            if self.stopped_early:
                source.cancel(source.in_flight())
            self.bar.close()


def dask_wait_any(futures: list[Any]) -> set[Any]:
    """Dask futures that are finished (or failed), waiting for at least one."""
    from distributed import wait

    return set(wait(futures, return_when="FIRST_COMPLETED").done)
