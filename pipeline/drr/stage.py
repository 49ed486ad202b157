"""The simulate-drr stage: one Dask task per volume, each writing its own item of the store.

The driver (this process) reads the manifest, creates or checks the store, and keeps a bounded
number of tasks in flight on a Dask cluster: a LocalCluster of worker processes sized to the
machine, or an existing scheduler (``--scheduler tcp://...``, e.g. started by dask-jobqueue
or on Kubernetes; its workers need this package installed and the store path visible).
Each task loads its CT, renders, and writes its item's images, error text and status; the
driver only writes for items whose worker died (the task can no longer write then).
A rerun skips items whose status is done; a killed run loses only the items in flight.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest_index import ManifestIndex
from pipeline.runtime import RunSummary
from pipeline.task_driver import TaskDriver, dask_wait_any
from schemas.drr import DRRStoreLayout, ItemStatus, SimulateDRRConfig
from schemas.manifest import ManifestRow, manifest_sha256
from schemas.provenance import Provenance

log = logging.getLogger(__name__)


@dataclass(slots=True)  # one per finished item is kept in the summary: 50k of them
class ItemResult:
    index: int
    volume_id: str
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    load_seconds: float = 0.0
    peak_rss_mb: float = 0.0  # of the worker process so far (high-water mark)
    cpu_seconds: float = 0.0  # CPU time of the task (all its threads): robust to a busy machine
    cpu_load_seconds: float = 0.0  # of which reading and decoding the CT


def render_item(store: str, index: int, row_json: str, manifest_dir: str, cfg_json: str, threads: int) -> ItemResult:
    """Dask task: load one CT, render its views, write its item. Never raises for bad input:
    the failure is written to the item's error chunk and returned."""
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.devices import resolve_device
    from pipeline.drr.render import render_volume
    from pipeline.drr.store import item_done, write_failure, write_item

    row = ManifestRow.model_validate_json(row_json)
    if item_done(store, index):  # a recomputed task (its first worker died after finishing): keep it
        return ItemResult(index, row.volume_id, True)
    torch.set_num_threads(threads)
    cfg = SimulateDRRConfig.model_validate_json(cfg_json)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        ct = load_ct(
            row.resolved_ct_path(Path(manifest_dir)),
            cfg.ct,
            spacing=row.spacing,
            orientation=row.orientation,
            slope=row.slope,
            intercept=row.intercept,
        )
        t1, c1 = time.perf_counter(), time.process_time()
        out = render_volume(ct.hu, ct.affine, cfg.render, resolve_device(cfg.device), row.volume_id)
        del ct
        write_item(store, index, out.images, out.line_integrals if cfg.line_integrals else None)
    except Exception as e:  # one bad volume must never stop the run; the reason is stored
        reason = f"{type(e).__name__}: {e}"
        write_failure(store, index, reason)
        return ItemResult(index, row.volume_id, False, reason, time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb())
    return ItemResult(
        index,
        row.volume_id,
        True,
        "",
        time.perf_counter() - t0,
        t1 - t0,
        _peak_rss_mb(),
        time.process_time() - c0,
        c1 - c0,
    )


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _provenance(cfg: SimulateDRRConfig, manifest_sha: str) -> Provenance:
    from pipeline._version import __version__

    return Provenance(
        stage="simulate-drr",
        software_version=__version__,
        config=cfg.model_dump(mode="json"),
        config_sha256=cfg.content_sha256(),
        manifest_sha256=manifest_sha,
    )


def default_workers(cores: int) -> int:
    """One single-threaded worker per core, as memory allows (about 3 GB per worker for a
    512x512x300 volume in flight). Inflating gzip is single-threaded, so processes beat
    threads; and two torch threads competing for one core stall each other at every barrier."""
    import psutil

    return max(1, min(cores, int(psutil.virtual_memory().total / 3e9)))


def _cluster(cfg: SimulateDRRConfig):
    """(client, threads per task, closer) of a local cluster sized to the machine (``--scheduler``
    is connected to by :func:`run_stage`, before anything is written)."""
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    workers = cfg.workers or default_workers(cores)
    threads = cfg.threads_per_worker or max(1, cores // workers)
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    )
    client = Client(cluster)

    def close():
        client.close()
        cluster.close()

    return client, threads, close


def run_stage(cfg: SimulateDRRConfig, client=None) -> RunSummary:
    """Render every pending item of the manifest into ``cfg.out``; the full log goes to ``<out>.log``.

    ``client``: an existing ``distributed.Client`` (tests pass an in-process one); otherwise a
    cluster is made from ``cfg``. ``extras`` of the summary: ``max_worker_rss_mb`` and ``items``
    (this run's :class:`ItemResult` in completion order).
    """
    from pipeline.devices import refuse_missing_gpu
    from pipeline.runtime import output_lock, refuse_non_folder

    t_start = time.perf_counter()
    rows = ManifestIndex(cfg.manifest)  # validates every row, refuses an empty manifest; holds 16 bytes a row
    if client is None and cfg.scheduler is None:  # a remote cluster's workers have their own devices
        refuse_missing_gpu(cfg.device)
    refuse_non_folder(cfg.out, "a Zarr store")  # before the lock file is made beside it
    with ExitStack() as stack:
        if client is None and cfg.scheduler is not None:  # an unreachable scheduler: refused before any write
            from pipeline.runtime import connect_scheduler

            client = stack.enter_context(connect_scheduler(cfg.scheduler))
        # one driver per store: two would render and write the same items
        stack.enter_context(output_lock(cfg.out, "simulate-drr"))
        summary = _render_pending(cfg, rows, client, t_start, stack.enter_context(ExitStack()))
        log.info(
            "%s: %s; peak worker memory %.0f MB; %d failed items recorded in %s/errors",
            cfg.out,
            summary.line(),
            summary.extras["max_worker_rss_mb"],
            len(summary.failures),
            cfg.out,
        )
        summary.log_failures(log)
        return summary


def _render_pending(cfg: SimulateDRRConfig, rows: ManifestIndex, client, t_start, log_file: ExitStack) -> RunSummary:
    from pipeline.drr.store import failures, open_or_create, read_status, write_status_snapshot
    from pipeline.runtime import log_path, log_to_file

    sha = manifest_sha256(cfg.manifest)
    layout = DRRStoreLayout(
        n_items=len(rows), views=cfg.render.views, size=cfg.render.geometry.size, line_integrals=cfg.line_integrals
    )
    group = open_or_create(cfg, layout, rows, _provenance(cfg, sha))
    log_file.enter_context(log_to_file(log_path(cfg.out)))  # the store is accepted
    status = read_status(group)
    n_candidates = len(rows) if cfg.limit is None else min(cfg.limit, len(rows))
    pending = np.flatnonzero(status[:n_candidates] != ItemStatus.DONE)
    summary = RunSummary(total=len(rows), done_before=int((status == ItemStatus.DONE).sum()))
    summary.extras.update(max_worker_rss_mb=0.0, items=[])
    log.info("%s: %d/%d done before this run, %d to render", cfg.out, summary.done_before, len(rows), len(pending))
    if not pending.size:
        summary.failures = dict(failures(group))
        summary.wall_s = time.perf_counter() - t_start
        return summary

    close = None
    if client is None:
        client, threads, close = _cluster(cfg)
    else:
        threads = cfg.threads_per_worker or 1
    try:
        log.info("Dask dashboard: %s", client.dashboard_link)
        driver = TaskDriver("simulate-drr", len(pending), cfg.max_failures, progress=cfg.progress)
        tasks = _RenderTasks(client, threads, cfg, rows, pending, status, summary, driver)
        driver.run(tasks)
    finally:
        if close is not None:
            close()
    summary.done, summary.failed, summary.stopped_early = driver.done, len(driver.failures), driver.stopped_early
    # ``status`` now holds each finished task's outcome (what its item's chunk says); a task cancelled
    # when the run stopped early may have written its item all the same: those chunks are read again.
    final = tasks.status
    unsettled = np.array(sorted(i for i, _ in tasks.futures.values()), dtype=np.int64)
    if unsettled.size:
        final[unsettled] = np.asarray(group["status"].oindex[unsettled], dtype=np.uint8)
    write_status_snapshot(group, final)
    summary.failures = dict(failures(group, final))
    summary.wall_s = time.perf_counter() - t_start
    group.attrs["summary"] = {
        "done": int((final == ItemStatus.DONE).sum()),
        "failed": len(summary.failures),
        "total": len(rows),
        "last_run_seconds": round(summary.wall_s, 2),
        "last_run_max_worker_rss_mb": round(summary.extras["max_worker_rss_mb"], 1),
    }
    return summary


class _RenderTasks:
    """One task per pending item, at most two per worker thread in flight (the scheduler's memory stays
    small for 50k items); the task writes its item, this side records the outcome in ``status``.
    Per item of the manifest it holds one status byte and the pending list (8 bytes); a row is read
    from the manifest when its task is submitted."""

    def __init__(
        self,
        client,
        threads,
        cfg: SimulateDRRConfig,
        rows: ManifestIndex,
        pending: np.ndarray,
        status: np.ndarray,
        summary,
        driver: TaskDriver,
    ):
        self.client, self.threads, self.rows, self.summary, self.driver = client, threads, rows, summary, driver
        self.status = status
        self.store, self.manifest_dir = str(cfg.out), str(cfg.manifest.parent.resolve())
        self.cfg_json = cfg.model_dump_json()
        self.n_slots = max(1, sum(client.nthreads().values())) * 2
        self.pending, self.next = pending, 0  # pending[next:] are still to submit, in manifest order
        self.futures: dict = {}  # future -> (item index, volume id)
        # Keys name this run: on a shared scheduler another run's task of the same item (another
        # store, or a previous run whose keys are not yet forgotten) would otherwise be taken for ours.
        self.run_token = uuid.uuid4().hex[:12]

    def has_work(self) -> bool:
        return self.next < len(self.pending) or bool(self.futures)

    def refill(self) -> None:
        while self.next < len(self.pending) and len(self.futures) < self.n_slots:
            i = int(self.pending[self.next])
            self.next += 1
            row = self.rows.row(i)
            fut = self.client.submit(
                render_item,
                self.store,
                i,
                row.model_dump_json(),
                self.manifest_dir,
                self.cfg_json,
                self.threads,
                key=f"drr-{i}-{self.run_token}-{row.volume_id}",
                pure=False,
                retries=0,
            )
            self.futures[fut] = (i, row.volume_id)

    def in_flight(self) -> list:
        return list(self.futures)

    def wait_any(self, handles: list) -> set:
        return dask_wait_any(handles)

    def finish(self, fut) -> None:
        from pipeline.drr.store import item_done, write_failure

        i, volume_id = self.futures.pop(fut)
        try:
            res: ItemResult = fut.result()
        except Exception as e:  # the worker died (e.g. killed for memory): record it for the item
            if item_done(self.store, i):  # it died after finishing the item: the item stays done
                res = ItemResult(i, volume_id, True)
            else:
                res = ItemResult(i, volume_id, False, f"worker lost: {type(e).__name__}: {e}")
                write_failure(self.store, i, res.reason)
        self.status[i] = ItemStatus.DONE if res.ok else ItemStatus.FAILED  # what the task (or we) wrote last
        extras = self.summary.extras
        extras["max_worker_rss_mb"] = max(extras["max_worker_rss_mb"], res.peak_rss_mb)
        extras["items"].append(res)
        if res.ok:
            self.driver.succeeded()
        else:
            self.driver.failed(res.volume_id, res.reason)

    def cancel(self, handles: list) -> None:
        self.client.cancel(handles)
