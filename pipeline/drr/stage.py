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

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from schemas.drr import DRRStoreLayout, ItemStatus, SimulateDRRConfig
from schemas.manifest import ManifestRow, manifest_sha256, read_manifest
from schemas.provenance import Provenance


@dataclass
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


@dataclass
class StageSummary:
    total: int
    done_before: int
    done: int = 0
    failed: int = 0
    aborted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    max_worker_rss_mb: float = 0.0
    items: list[ItemResult] = field(default_factory=list)  # this run's results, in completion order


def render_item(store: str, index: int, row_json: str, manifest_dir: str, cfg_json: str, threads: int) -> ItemResult:
    """Dask task: load one CT, render its views, write its item. Never raises for bad input:
    the failure is written to the item's error chunk and returned."""
    import torch

    from pipeline.ct_io import load_ct
    from pipeline.drr.render import render_volume, resolve_device
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
    """(client, threads per task, closer). A local cluster is sized to the machine."""
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    if cfg.scheduler is not None:
        from pipeline.runtime import connect_scheduler

        client = connect_scheduler(cfg.scheduler)
        return client, cfg.threads_per_worker or 1, client.close
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


def run_stage(cfg: SimulateDRRConfig, client=None, echo=print) -> StageSummary:
    """Render every pending item of the manifest into ``cfg.out``.

    ``client``: an existing ``distributed.Client`` (tests pass an in-process one); otherwise a
    cluster is made from ``cfg``.
    """
    from pipeline.drr.store import refuse_non_folder
    from pipeline.runtime import output_lock

    t_start = time.perf_counter()
    rows = read_manifest(cfg.manifest)  # refuses an empty manifest
    if client is None and cfg.scheduler is None:  # a remote cluster's workers have their own devices
        refuse_missing_gpu(cfg.device)
    refuse_non_folder(cfg.out)  # before the lock file is made beside it
    with output_lock(cfg.out, "simulate-drr"):  # one driver per store: two would render and write the same items
        return _render_pending(cfg, rows, client, echo, t_start)


def refuse_missing_gpu(device: str) -> None:
    """``--device cuda`` on a machine without a GPU would fail every item: refuse it before starting."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        from schemas.errors import PipelineError

        raise PipelineError("--device cuda but torch sees no CUDA GPU on this machine; use --device cpu or auto")


def _render_pending(cfg: SimulateDRRConfig, rows: list[ManifestRow], client, echo, t_start: float) -> StageSummary:
    from distributed import as_completed
    from tqdm import tqdm

    from pipeline.drr.store import failures, open_or_create, read_status, write_failure, write_status_snapshot

    sha = manifest_sha256(cfg.manifest)
    layout = DRRStoreLayout(
        n_items=len(rows), views=cfg.render.views, size=cfg.render.geometry.size, line_integrals=cfg.line_integrals
    )
    group = open_or_create(cfg, layout, rows, _provenance(cfg, sha))
    status = read_status(group)
    candidates = range(len(rows)) if cfg.limit is None else range(min(cfg.limit, len(rows)))
    pending = [i for i in candidates if status[i] != ItemStatus.DONE]
    summary = StageSummary(total=len(rows), done_before=int((status == ItemStatus.DONE).sum()))
    echo(f"{cfg.out}: {summary.done_before}/{len(rows)} done before this run, {len(pending)} to render")
    if not pending:
        summary.failures = failures(group)
        return summary

    close = None
    if client is None:
        client, threads, close = _cluster(cfg)
    else:
        threads = cfg.threads_per_worker or 1
    try:
        echo(f"Dask dashboard: {client.dashboard_link}")
        _drive(client, threads, cfg, rows, pending, summary, echo, as_completed, tqdm, write_failure)
    finally:
        if close is not None:
            close()
    final = read_status(group)
    write_status_snapshot(group, final)
    summary.failures = failures(group, final)
    summary.seconds = time.perf_counter() - t_start
    group.attrs["summary"] = {
        "done": int((final == ItemStatus.DONE).sum()),
        "failed": len(summary.failures),
        "total": len(rows),
        "last_run_seconds": round(summary.seconds, 2),
        "last_run_max_worker_rss_mb": round(summary.max_worker_rss_mb, 1),
    }
    return summary


def _drive(client, threads, cfg, rows, pending, summary, echo, as_completed, tqdm, write_failure) -> None:
    """Keep a bounded window of tasks in flight (memory of the scheduler stays small for 50k
    items) and stop submitting once failures pass ``max_failures``."""
    from pipeline.drr.store import item_done

    store, manifest_dir = str(cfg.out), str(cfg.manifest.parent.resolve())
    cfg_json = cfg.model_dump_json()
    n_slots = max(1, sum(client.nthreads().values())) * 2
    queue = list(reversed(pending))
    # Keys name this run: on a shared scheduler another run's task of the same item (another
    # store, or a previous run whose keys are not yet forgotten) would otherwise be taken for ours.
    run_token = uuid.uuid4().hex[:12]

    def submit():
        i = queue.pop()
        return client.submit(
            render_item,
            store,
            i,
            rows[i].model_dump_json(),
            manifest_dir,
            cfg_json,
            threads,
            key=f"drr-{i}-{run_token}-{rows[i].volume_id}",
            pure=False,
            retries=0,
        )

    in_flight = {submit() for _ in range(min(n_slots, len(queue)))}
    running = as_completed(list(in_flight))
    bar = tqdm(total=len(pending), unit="vol", desc="simulate-drr", disable=not cfg.progress)
    for fut in running:
        try:
            res: ItemResult = fut.result()
        except Exception as e:  # the worker died (e.g. killed for memory): record it for the item
            i = int(fut.key.split("-")[1])
            if item_done(store, i):  # it died after finishing the item: the item stays done
                res = ItemResult(i, rows[i].volume_id, True)
            else:
                res = ItemResult(i, rows[i].volume_id, False, f"worker lost: {type(e).__name__}: {e}")
                write_failure(store, i, res.reason)
        in_flight.discard(fut)
        summary.max_worker_rss_mb = max(summary.max_worker_rss_mb, res.peak_rss_mb)
        summary.items.append(res)
        bar.update(1)
        if res.ok:
            summary.done += 1
        else:
            summary.failed += 1
            bar.write(f"failed: {res.volume_id}: {res.reason}")
        if summary.failed > cfg.max_failures:
            summary.aborted = True
            bar.write(f"more than {cfg.max_failures} failures: stopping (finished items are kept)")
            break
        if queue:
            new = submit()
            in_flight.add(new)
            running.add(new)
    bar.close()
    if summary.aborted:
        client.cancel(list(in_flight))
