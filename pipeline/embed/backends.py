"""Where embed-ct's tasks run: a Dask cluster (CPU decode workers + one model worker per GPU) or this process.

Both backends give the runner the same four operations: submit a decode, submit
a model batch whose inputs are earlier decode handles, wait for any handle, and
read a handle's outcome. With Dask, a batch's volumes travel from the decode
workers straight to the model worker; the calling process only ever receives
latents (2 KiB a row), so it can stay the single writer of the cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_threads
from typing import Any


class ThreadBackend:
    """In-process (``--workers 0``): one decode thread overlapping one model thread."""

    def __init__(self, n_model: int = 1):
        self.n_model = 1
        self.dashboard = None
        self._decode = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._model = ThreadPoolExecutor(1, thread_name_prefix="model")

    def decode(self, fn: Callable, *args) -> Any:
        return self._decode.submit(fn, *args)

    def embed(self, fn: Callable, spec, handles: list, texts: list[str]) -> Any:
        return self._model.submit(lambda: fn(spec, [h.result() for h in handles], texts))

    def call_model(self, fn: Callable, *args) -> Any:
        return self._model.submit(fn, *args).result()

    def wait_any(self, handles, timeout: float = 1.0) -> set:
        return set(wait_threads(list(handles), timeout=timeout, return_when=FIRST_COMPLETED).done)

    @staticmethod
    def result(handle) -> Any:
        return handle.result()

    @staticmethod
    def error(handle) -> BaseException | None:
        return handle.exception()

    def cancel(self, handles) -> None:
        for h in handles:
            h.cancel()

    def close(self) -> None:
        self._decode.shutdown(wait=True, cancel_futures=True)
        self._model.shutdown(wait=True, cancel_futures=True)


class DaskBackend:
    """Tasks go to workers by resource: ``decode=1`` (CPU) and ``model=1`` (one per GPU, or one on CPU)."""

    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster
        try:
            self.n_model = count_workers(client.scheduler_info()["workers"].values())
        except Exception:
            client.close()
            raise
        self.dashboard = getattr(client, "dashboard_link", None) if _has_bokeh() else None
        from distributed import as_completed

        # Model results (latents, small) are fetched in the client's event loop as soon as a task ends, so
        # the runner never waits a network round trip per batch; decoded volumes are never fetched here.
        self._arrivals = as_completed(with_results=True, raise_errors=False)
        self._results: dict = {}
        self._model_futures: set = set()  # submitted model tasks whose result has not been taken

    def decode(self, fn: Callable, *args) -> Any:
        return self.client.submit(fn, *args, resources={"decode": 1}, pure=False)

    def embed(self, fn: Callable, spec, handles: list, texts: list[str]) -> Any:
        future = self.client.submit(fn, spec, handles, texts, resources={"model": 1}, pure=False)
        self._arrivals.add(future)
        self._model_futures.add(future)
        return future

    def call_model(self, fn: Callable, *args) -> Any:
        return self.client.submit(fn, *args, resources={"model": 1}, pure=False).result()

    def wait_any(self, handles, timeout: float = 1.0) -> set:
        """Handles that are done: decodes finished or failed, model tasks whose result is here or that failed."""
        deadline = time.monotonic() + timeout
        while True:
            if self._arrivals.has_ready():
                for future, result in self._arrivals.next_batch(block=False):
                    if future in self._model_futures:  # not one already reported as failed
                        self._results[future] = result
            done = {
                h
                for h in handles
                if h in self._results
                or h.status in ("error", "cancelled", "lost")
                or (h.status == "finished" and h not in self._model_futures)
            }
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.01)  # status changes arrive from the scheduler in the background; polling is cheap

    def result(self, handle) -> Any:
        self._model_futures.discard(handle)
        return self._results.pop(handle)

    def error(self, handle) -> BaseException | None:
        if handle.status == "finished":
            return None
        self._model_futures.discard(handle)
        self._results.pop(handle, None)
        try:
            return handle.exception()
        except Exception as e:  # cancelled or lost: the exception itself is unavailable
            return e

    def cancel(self, handles) -> None:
        if handles:
            self.client.cancel(list(handles))

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def count_workers(workers) -> int:
    """The number of model workers, after checking that there are model and decode workers at all."""
    n_model = sum(1 for w in workers if w.get("resources", {}).get("model"))
    n_decode = sum(1 for w in workers if w.get("resources", {}).get("decode"))
    if not n_model or not n_decode:
        from pipeline.embed.errors import EmbedError

        raise EmbedError(
            f"the Dask cluster has {n_model} model and {n_decode} decode worker(s); embed-ct needs at least one "
            "of each: start them with `dask worker ADDRESS --resources model=1 --nthreads 1` (one per GPU, "
            "CUDA_VISIBLE_DEVICES set) and `dask worker ADDRESS --resources decode=1 --nthreads 1`"
        )
    return n_model


def local_cluster(n_decode: int, n_gpus: int, model_threads: int):
    """A SpecCluster on this machine: ``n_decode`` single-threaded decode workers and one model worker per GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # Worker processes log at INFO by default (about 36 lines per run), and every failed task (a bad volume,
    # a refused checkpoint) as an ERROR with its traceback. The runner records and reports each of those
    # failures on one line itself, so the workers stay silent: a user sees the progress bar, the result
    # and the errors.
    quiet = {"silence_logs": logging.CRITICAL}
    workers = {
        f"decode-{i}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "resources": {"decode": 1}, "env": one_thread, **quiet},
        }
        for i in range(n_decode)
    }
    for g in range(max(n_gpus, 1)):
        env = {"OMP_NUM_THREADS": str(model_threads)}
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(g)
        workers[f"model-{g}"] = {
            "cls": Nanny,
            "options": {"nthreads": 1, "resources": {"model": 1}, "env": env, **quiet},
        }
    scheduler = {
        "cls": Scheduler,
        "options": {"dashboard_address": ":0"},
    }  # any free port: never clash with another cluster
    return SpecCluster(workers=workers, scheduler=scheduler, name="embed-ct", silence_logs=logging.ERROR)


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(workers: int, scheduler: str | None, n_gpus: int, model_threads: int | None):
    if scheduler:
        from pipeline.runtime import connect_scheduler

        return DaskBackend(connect_scheduler(scheduler))
    if workers == 0:
        return ThreadBackend()
    from distributed import Client

    # On CPU, decoding and the forward pass share the cores: the model gets those the decode workers leave.
    cluster = local_cluster(workers, n_gpus, model_threads or max(1, (os.cpu_count() or 1) - workers))
    return DaskBackend(Client(cluster), cluster)
