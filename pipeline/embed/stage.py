"""embed-ct: run the frozen CT-CLIP once over a manifest into the embedding cache.

The calling process plans the work, keeps a bounded number of volumes in flight
(decoded volumes are large: 221 MB each at the official size), groups decoded
volumes into model batches, and is the only writer of the cache. Reports are
cleaned, deduplicated (the reconstructions of a scan share one report; the
manifest is walked scan by scan) and embedded in the same model task as the
volumes that need them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from array import array
from collections.abc import Callable, Container, Iterable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pipeline.devices import refuse_missing_gpu
from pipeline.embed.cache import CacheHeader, EmbeddingCache
from pipeline.embed.errors import EmbedError, TooManyFailures
from pipeline.embed.model import ModelSpec, prompt_latents
from pipeline.embed.shards import Rows
from pipeline.embed.work import decode_volume, embed_batch, labels_u8, load_kwargs_of
from pipeline.manifest_index import ManifestIndex
from pipeline.runtime import RunSummary, log_path, log_to_file
from pipeline.task_driver import TaskDriver
from schemas.embed import EmbedConfig, EmbedIdentity, embed_row_sha256
from schemas.manifest import ManifestRow, manifest_sha256, storable_line
from schemas.provenance import Provenance

log = logging.getLogger(__name__)


def _new_extras() -> dict:
    """embed-ct's figures in :attr:`RunSummary.extras`."""
    return {
        "work_s": 0.0,  # the scheduling loop alone: no cluster start, no model loading
        "load_s": [],  # per volume
        "preprocess_s": [],
        "model_ct_s": 0.0,  # summed over batches
        "model_text_s": 0.0,
        "texts_embedded": 0,  # distinct reports embedded
        "report_latents_held_max": 0,  # the most report latents the driver held at once
        "dashboard": None,
    }


def make_identity(cfg: EmbedConfig) -> EmbedIdentity:
    from pipeline.ctclip.checkpoint import file_sha256
    from pipeline.ctclip.config import get_config

    if not cfg.checkpoint.is_file():
        raise EmbedError(
            f"checkpoint {cfg.checkpoint} does not exist; give the path of CT-CLIP_v2.pt (or a tiny test checkpoint)"
        )
    vocab = cfg.tokenizer / "vocab.txt"
    if not vocab.is_file():
        raise EmbedError(
            f"tokenizer folder {cfg.tokenizer} has no vocab.txt; give the folder of the CXR-BERT vocabulary"
        )
    try:
        model_cfg = get_config(cfg.model)
    except ValueError as e:
        raise EmbedError(str(e)) from None
    return EmbedIdentity(
        checkpoint_sha256=file_sha256(cfg.checkpoint),
        tokenizer_sha256=file_sha256(vocab),
        model_config_json=model_cfg.model_dump(mode="json"),
        # Only what changes the HU values; limits and checks that accept or refuse a volume may change between runs.
        ct_load=cfg.ct.model_dump(mode="json", include={"hu_policy", "padding_below_hu"}),
        precision=cfg.precision,
    )


def local_gpus(device: str) -> int:
    """GPUs of this machine a local cluster gives one model worker each (0 on CPU)."""
    import torch

    refuse_missing_gpu(device)
    return torch.cuda.device_count() if device in ("auto", "cuda") else 0


def spec_shape(model: str) -> tuple[int, int, int]:
    """The model input's shape (x, y, z) of a CT-CLIP config."""
    from pipeline.ctclip.config import get_config

    x, y, z = get_config(model).preprocess.shape
    return x, y, z


def scan_order(rows: Iterable[ManifestRow], skip: Container[str] = ()) -> np.ndarray:
    """Positions of the rows whose volume id is not in ``skip``, grouped by scan (first appearance
    order, manifest order within a scan), so a scan's reconstructions meet in one batch. One pass;
    8 bytes a row are kept (the scan names only while the pass runs)."""
    first: dict[str, int] = {}
    keys, positions = array("q"), array("q")
    for i, r in enumerate(rows):
        key = first.setdefault(r.scan_id, i)
        if r.volume_id not in skip:
            keys.append(key)
            positions.append(i)
    order = np.argsort(np.frombuffer(keys, dtype=np.int64), kind="stable")
    return np.frombuffer(positions, dtype=np.int64)[order]


def report_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def report_uses(rows: ManifestIndex, todo: np.ndarray, text: Callable[[ManifestRow], str]) -> dict[bytes, int]:
    """How many rows of ``todo`` (positions in ``rows``) use each report (by an 8-byte key of its
    cleaned text): one pass over the manifest. Lets the driver drop a report's latent after its
    last row instead of holding every report's latent for the whole run."""
    wanted = np.zeros(len(rows), dtype=bool)
    wanted[todo] = True
    uses: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        if wanted[i]:
            key = report_key(text(row))
            uses[key] = uses.get(key, 0) + 1
    return uses


def run_embed(cfg: EmbedConfig, on_commit: Callable[[int], None] | None = None) -> RunSummary:
    """Embed every manifest row not yet in ``cfg.out``; see docs/embed-ct.md.
    The full log goes to ``<out>.log``; ``extras`` of the summary: see :func:`_new_extras`."""
    t_start = time.perf_counter()
    with ExitStack() as log_file:
        summary = _embed(cfg, on_commit, t_start, log_file)
        log.info(
            "%s: %s; %d distinct reports embedded%s",
            cfg.out,
            summary.line(),
            summary.extras["texts_embedded"],
            f"; {summary.done / summary.extras['work_s']:.2f} volumes/s after start-up"
            if summary.done and summary.extras["work_s"]
            else "",
        )
        if summary.failures:
            log.warning("%d failure(s), recorded in %s under failures/:", len(summary.failures), cfg.out)
            summary.log_failures(log)
        if summary.stopped_early:
            raise TooManyFailures(
                f"stopped after {len(summary.failures)} failures (--max-failures {cfg.max_failures}); "
                f"{summary.done} rows were committed to {cfg.out}. First: {next(iter(summary.failures.items()))}"
            )
        return summary


def _embed(
    cfg: EmbedConfig, on_commit: Callable[[int], None] | None, t_start: float, log_file: ExitStack
) -> RunSummary:
    from pipeline.ctclip.text import report_text
    from pipeline.embed.backends import make_backend

    rows = ManifestIndex(cfg.manifest)  # validates every row; 16 bytes a row are held, rows are read when wanted
    m_sha = manifest_sha256(cfg.manifest)
    n_gpus = 0 if cfg.scheduler else local_gpus(cfg.device)  # a remote cluster's model workers decide for themselves
    identity = make_identity(cfg)
    spec = ModelSpec(
        checkpoint=str(cfg.checkpoint.resolve()),
        tokenizer=str(cfg.tokenizer.resolve()),
        model=cfg.model,
        device=cfg.device,
        precision=cfg.precision,
        threads=cfg.model_threads,
    )
    row_hashes = ((r.volume_id, embed_row_sha256(r)) for r in rows)  # changed rows are refused, naming them
    with EmbeddingCache.open(
        cfg.out, identity, overwrite=cfg.overwrite, manifest_sha256=m_sha, row_sha256=row_hashes
    ) as cache:
        log_file.enter_context(log_to_file(log_path(cfg.out)))  # the cache is locked and accepted
        cache.merge_fraction, cache.merge_min_rows = cfg.merge_fraction, cfg.merge_min_rows
        done = cache.done_ids()
        todo = scan_order(rows, skip=done)
        del done
        summary = RunSummary(total=len(rows), done_before=len(rows) - len(todo), extras=_new_extras())
        log.info("%s: %d/%d done before this run, %d to embed", cfg.out, summary.done_before, len(rows), len(todo))
        if not todo.size and cache.exists:
            summary.wall_s = time.perf_counter() - t_start
            return summary  # nothing to do: no cluster, no model
        backend = make_backend(cfg.workers, cfg.scheduler, n_gpus, cfg.model_threads)
        try:
            summary.extras["dashboard"] = backend.dashboard
            if backend.dashboard:
                log.info("Dask dashboard: %s", backend.dashboard)
            # Loads the checkpoint on the model worker first: a wrong one is refused before any volume is read.
            temperature, prompts = backend.call_model(prompt_latents, spec)
            if not cache.exists:
                prov = Provenance(
                    stage="embed-ct",
                    software_version=_version(),
                    config=cfg.model_dump(mode="json"),
                    config_sha256=identity.sha256(),
                    manifest_sha256=m_sha,
                    checkpoint_sha256=identity.checkpoint_sha256,
                )
                cache.create(CacheHeader(identity=identity, provenance=prov, temperature=temperature, prompts=prompts))
            if todo.size:
                t_work = time.perf_counter()
                driver = TaskDriver("embed-ct", len(todo), cfg.max_failures, progress=cfg.progress)
                uses = report_uses(rows, todo, lambda r: report_text(r.findings, r.impressions))
                runner = _Runner(cfg, backend, cache, spec, summary, driver, report_text, on_commit, rows, todo, uses)
                try:
                    driver.run(runner)
                finally:
                    runner.commit(force=True)
                summary.done, summary.failures = driver.done, driver.failures
                summary.failed, summary.stopped_early = len(driver.failures), driver.stopped_early
                summary.extras["work_s"] = time.perf_counter() - t_work
        finally:
            backend.close()
    summary.wall_s = time.perf_counter() - t_start
    return summary


def _version() -> str:
    from pipeline._version import __version__

    return __version__


class _Runner:
    """embed-ct's tasks for the shared :class:`TaskDriver`: decodes and the model batches they are grouped
    into stay in flight up to the prefetch; finished rows are committed in order of completion."""

    def __init__(
        self,
        cfg,
        backend,
        cache,
        spec,
        summary,
        driver,
        report_text,
        on_commit,
        rows: ManifestIndex,
        todo: np.ndarray,
        report_uses: dict[bytes, int],
    ):
        self.cfg, self.backend, self.cache, self.spec, self.summary = cfg, backend, cache, spec, summary
        self.driver, self.on_commit, self.manifest_dir = driver, on_commit, Path(cfg.manifest).parent
        self.rows, self.todo, self.next = rows, todo, 0  # todo[next:] are still to decode; rows are read then
        self._report_text = report_text
        per_batch = cfg.batch_size * backend.n_model
        volume_bytes = 4 * np.prod(spec_shape(cfg.model))
        by_memory = min(256, int(cfg.prefetch_gib * 2**30 // volume_bytes))  # small volumes: hide task latency
        self.prefetch = cfg.prefetch or max(2 * per_batch + max(cfg.workers, 1), by_memory)
        # Batches queued on the model workers: at least one running and one waiting each, and as many as the
        # prefetch allows, so that task round trips (tens of ms, more on a loaded machine) never idle a model worker.
        self.max_batches = max(2 * backend.n_model, self.prefetch // cfg.batch_size)
        self.decoding: dict = {}  # handle -> row
        self.ready: list = []  # (row, handle) decoded, waiting for a batch
        self.batches: dict = {}  # handle -> (rows, texts it embeds)
        self.text_latents: dict[str, np.ndarray] = {}  # reports a row still to finish uses (see _row_finished)
        self.report_uses = report_uses  # report key -> rows still to finish that use it
        self.texts_in_flight: set[str] = set()  # carried by a running model task
        self.texts_retried: set[str] = set()
        self.text_errors: dict[str, str] = {}
        self.waiting: list = []  # (row, CT latent) whose report latent another running task computes
        self.buffer: list[Rows] = []
        self.buffered = 0

    # ---- the driver's side (TaskSource) -----------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self._queued() or self.decoding or self.ready or self.batches)

    def _queued(self) -> int:
        return len(self.todo) - self.next

    def refill(self) -> None:
        self._top_up()
        self._submit_batches(final=not self._queued() and not self.decoding)

    def in_flight(self) -> list:
        return list(self.decoding) + list(self.batches)

    def wait_any(self, handles: list) -> set:
        return self.backend.wait_any(handles, timeout=0.5)

    def finish(self, h) -> None:
        self._finished(h)

    def cancel(self, handles: list) -> None:
        self.backend.cancel(handles)

    def text(self, row: ManifestRow) -> str:
        """The report as the official loader feeds it to the text encoder (findings + impressions, cleaned)."""
        return self._report_text(row.findings, row.impressions)

    # ---- submitting ------------------------------------------------------------------------------------------------
    def _in_flight(self) -> int:
        return len(self.decoding) + len(self.ready) + sum(len(r) for r, _ in self.batches.values())

    def _top_up(self) -> None:
        while self._queued() and self._in_flight() < self.prefetch and not self.driver.stopped_early:
            row = self.rows.row(int(self.todo[self.next]))
            self.next += 1
            if not self.text(row).strip():
                self._fail(row, "empty report (no findings or impressions in the manifest)")
                continue
            path, kwargs = load_kwargs_of(row, self.manifest_dir)
            h = self.backend.decode(
                decode_volume, row.volume_id, path, kwargs, self.cfg.ct.model_dump(), self.cfg.model
            )
            self.decoding[h] = row

    def _submit_batches(self, final: bool) -> None:
        while self.ready and len(self.batches) < self.max_batches and (len(self.ready) >= self.cfg.batch_size or final):
            chunk, self.ready = self.ready[: self.cfg.batch_size], self.ready[self.cfg.batch_size :]
            self._submit([r for r, _ in chunk], [d for _, d in chunk])

    def _submit(self, rows: list[ManifestRow], decoded: list) -> None:
        """One model task; it carries the texts no finished or running task embeds (each text embedded once)."""
        texts = [
            t
            for t in dict.fromkeys(self.text(r) for r in rows)
            if t not in self.text_latents and t not in self.texts_in_flight
        ]
        h = self.backend.embed(embed_batch, self.spec, decoded, texts)
        self.batches[h] = (rows, texts)
        self.texts_in_flight.update(texts)

    # ---- results ---------------------------------------------------------------------------------------------------
    def _finished(self, h) -> None:
        if h in self.decoding:
            row = self.decoding.pop(h)
            err = self.backend.error(h)
            if err is None:
                self.ready.append((row, h))
            else:
                self._fail(row, _reason(err))
            return
        rows, texts = self.batches.pop(h)  # dropping the decode handles lets Dask free the volumes
        self.texts_in_flight.difference_update(texts)
        err = self.backend.error(h)
        if err is not None:
            for r in rows:
                self._fail(r, f"model task failed: {_reason(err)}")
            self._texts_lost(texts, _reason(err))
            return
        result = self.backend.result(h)
        self._record_timings(result)
        self.text_latents.update(result.texts)
        extras = self.summary.extras
        extras["report_latents_held_max"] = max(extras["report_latents_held_max"], len(self.text_latents))
        self.text_errors.update(result.text_errors)
        for r in rows:
            if r.volume_id in result.errors:
                self._fail(r, result.errors[r.volume_id])
            elif r.volume_id in result.ct:
                self.waiting.append((r, result.ct[r.volume_id]))
        self._complete_waiting()
        self._sweep()
        self.commit()

    def _record_timings(self, result) -> None:
        extras = self.summary.extras
        extras["model_ct_s"] += result.ct_s
        extras["model_text_s"] += result.text_s
        extras["texts_embedded"] += len(result.texts)
        for load_s, pre_s in result.timings.values():
            extras["load_s"].append(load_s)
            extras["preprocess_s"].append(pre_s)

    def _complete_waiting(self) -> None:
        """Rows whose CT latent is back and whose report latent is now known become committed rows."""
        done = [(r, z) for r, z in self.waiting if self.text(r) in self.text_latents]
        if not done:
            return
        self.waiting = [(r, z) for r, z in self.waiting if self.text(r) not in self.text_latents]
        self.buffer.append(
            Rows(
                ids=[r.volume_id for r, _ in done],
                scan_ids=[r.scan_id for r, _ in done],
                ct=np.stack([z for _, z in done]).astype(np.float32),
                report=np.stack([self.text_latents[self.text(r)] for r, _ in done]).astype(np.float32),
                labels=np.stack([labels_u8(r.labels) for r, _ in done]),
                row_sha256=[embed_row_sha256(r) for r, _ in done],
            )
        )
        self.buffered += len(done)
        self.driver.succeeded(len(done))
        for r, _ in done:
            self._row_finished(r)

    def _texts_lost(self, texts: list[str], reason: str) -> None:
        """A failed task's texts: embed them once more (a text-only task) if other rows need them."""
        for t in texts:
            self.text_errors[t] = reason
        needed = {self.text(r) for r, _ in self.waiting} | {
            self.text(r) for rows, _ in self.batches.values() for r in rows
        }
        retry = [t for t in texts if t in needed and t not in self.texts_retried]
        if retry:
            self.texts_retried.update(retry)
            h = self.backend.embed(embed_batch, self.spec, [], retry)
            self.batches[h] = ([], retry)
            self.texts_in_flight.update(retry)
        self._sweep()

    def _sweep(self) -> None:
        """Fail the waiting rows whose report latent nothing will deliver any more."""

        def stuck(r):
            t = self.text(r)
            return t not in self.text_latents and t not in self.texts_in_flight

        for r, _ in self.waiting:
            if stuck(r):
                self._fail(r, f"report embedding failed: {self.text_errors.get(self.text(r), 'unknown')}")
        self.waiting = [(r, z) for r, z in self.waiting if not stuck(r)]

    def _fail(self, row: ManifestRow, reason: str) -> None:
        reason = storable_line(reason)[:2000]
        self.buffer.append(Rows(failed_ids=[row.volume_id], failed_reasons=[reason]))
        self.driver.failed(row.volume_id, reason)
        self._row_finished(row)

    def _row_finished(self, row: ManifestRow) -> None:
        """One row is committed or failed: its report's latent is dropped once no row still to finish
        uses it (the latents held stay bounded by what is in flight, not by the reports seen so far)."""
        text = self.text(row)
        key = report_key(text)
        left = self.report_uses.get(key, 0) - 1
        if left > 0:
            self.report_uses[key] = left
        else:
            self.report_uses.pop(key, None)
            self.text_latents.pop(text, None)

    def commit(self, force: bool = False) -> None:
        """Make the buffered rows durable once ``commit_every`` are there (``force``: now)."""
        if not self.buffer or (self.buffered < self.cfg.commit_every and not force):
            return
        self.cache.commit(Rows.concat(self.buffer))
        self.buffer, self.buffered = [], 0
        if self.on_commit is not None:
            self.on_commit(self.driver.done)


def _reason(err: BaseException) -> str:
    from pipeline.embed.work import ItemFailed

    if isinstance(err, ItemFailed):
        return str(err)
    return f"{type(err).__name__}: {err}"
