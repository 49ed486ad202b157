"""Run plumbing shared by every stage that writes: the output lock, atomic files, logging.

* :func:`output_lock`: one writer per output. An advisory ``flock`` on ``<out>.lock``
  beside the output (so ``--overwrite`` can replace the output under it); the OS releases
  it when the process dies, even by SIGKILL, so a crash never leaves a stale lock.
* :func:`atomic_path` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: a file
  appears under its final name complete or not at all. It is written under a hidden
  temporary name in the same folder, flushed to disk, renamed into place (``os.replace``
  is atomic on POSIX) and the folder is fsynced so the rename survives a power cut.
  :func:`atomic_dir` does the same for a folder built whole (a new Zarr store).
  :func:`remove_temporaries` deletes what a killed writer left.
* :func:`setup_logging` / :func:`log_to_file`: modules log through
  ``logging.getLogger(__name__)``; the command line shows INFO and above on stderr and a
  run writes everything (DEBUG too) to a log file beside its output.
* :class:`RunSummary`: what one run of a stage did, the same shape for every stage.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import PipelineError

TMP_MARK = ".tmp-"  # hidden temporaries are named ".<final name>.tmp-<random>"


class OutputBusyError(PipelineError):
    """Another process holds the output's lock."""


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


class NotAFolderError(PipelineError):
    """An output that is a folder would replace a file, device or link of the same name, or mix its
    files into a folder of someone else's."""


def refuse_non_folder(out: str | Path, what: str) -> None:
    """An existing file, device or broken link at a folder output ``out`` is left alone; call it
    before :func:`output_lock` makes the lock file beside it. ``what``: "a Zarr store", ..."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise NotAFolderError(
            f"{out} exists and is not a folder ({what} is one); it is left as it is: choose another --out"
        )


def refuse_foreign_folder(out: str | Path, markers: tuple[str, ...], what: str) -> None:
    """A non-empty folder ``out`` holding none of ``markers`` (entries that only this stage's output has,
    e.g. a run's ``config.json``) belongs to someone else: refuse it, so that nothing of theirs is
    replaced or mixed with ours. An empty folder, or one of ours (resumed by the stage), passes."""
    out = Path(out)
    if not out.is_dir() or any((out / m).exists() for m in markers):
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise NotAFolderError(
            f"{out} is not empty ({shown}) and is not {what}; it is left as it is: choose a new or empty --out"
        )


@contextmanager
def output_lock(out: str | Path, stage: str) -> Iterator[None]:
    """Hold ``<out>.lock`` for the whole run, or refuse at once if another run holds it."""
    import fcntl

    out = Path(out)
    make_folder(out.parent, out)
    try:
        fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder, ...
        raise PipelineError(f"cannot write beside {out} ({e.strerror}); choose an --out in a writable folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(f"{out} is being written by another {stage} run; wait for it or stop it") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def make_folder(folder: Path, out: Path) -> None:
    """``mkdir -p folder`` for the output ``out``, or a one-line error (a path part that is a file, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError / NotADirectoryError: a part of the path is a file
        raise PipelineError(
            f"cannot create the folder {folder} for {out} ({e.strerror}); a part of the path may be a file: "
            "choose another --out"
        ) from None


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(final: Path) -> Path:
    """``.<name>.tmp-<random><suffixes>``: hidden, unique, and ending in the final suffixes
    (``nib.save`` picks the format from them, ``np.savez`` appends ``.npz`` otherwise)."""
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}{''.join(final.suffixes)}")


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; when the block ends without error the file
    written there is fsynced and renamed to ``final``, else it is deleted.

    For writers that want a path (``torch.save``, ``h5py.File``, ``nib.save``, ``np.savez``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final``, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; when the block ends without error it is
    renamed to ``final`` (which must not exist, or be an empty folder), else deleted. The
    files inside are not fsynced one by one: a folder is for outputs whose files are cheap
    to rebuild if a power cut loses them, and which must never appear half-made."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        tmp.mkdir()
        yield tmp
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def remove_temporaries(final: str | Path) -> None:
    """Delete temporaries (files or folders) of ``final`` that a killed writer left behind.
    Call it only while holding the output's lock: a running writer's temporary looks the same."""
    final = Path(final)
    if final.parent.is_dir():
        for p in final.parent.glob(f".{final.name}{TMP_MARK}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# ---- run summary ---------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What one run of a stage did. ``extras`` holds the stage's own figures (timings, memory)."""

    total: int  # items of the input (manifest rows)
    done_before: int  # finished by earlier runs, kept
    done: int = 0  # finished by this run
    failed: int = 0  # failed in this run
    failures: dict[str, str] = field(default_factory=dict)  # item -> reason, failed items the output records
    wall_s: float = 0.0
    stopped_early: bool = False  # more failures than --max-failures: stopped, finished items kept
    extras: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed in this run ({self.wall_s:.1f} s); "
            f"{self.done_before} done before; {self.total} items"
        )

    def log_failures(self, logger: logging.Logger, most: int = 10) -> None:
        """The first ``most`` failures, one line each, then how many more."""
        for item, reason in list(self.failures.items())[:most]:
            logger.warning("  %s: %s", item, reason)
        if len(self.failures) > most:
            logger.warning("  ... and %d more", len(self.failures) - most)


# ---- logging -------------------------------------------------------------------------------------------------------
LOGGERS = ("pipeline", "trainer", "schemas", "bench")
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmSafeHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` through ``tqdm.write``, so a message never tears a
    progress bar (and a test runner's capture of stderr sees it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool | None = None) -> None:
    """The command line's console: INFO (DEBUG with ``verbose``) and above on stderr, the
    message alone. Idempotent; ``verbose=None`` keeps the level an earlier call chose (the
    root command's ``--verbose``), INFO if there was none."""
    if verbose is None:
        earlier = [h for h in logging.getLogger(LOGGERS[0]).handlers if h.get_name() == "x2ct-console"]
        verbose = bool(earlier) and earlier[0].level <= logging.DEBUG
    handler = _TqdmSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.set_name("x2ct-console")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "x2ct-console"]
        logger.addHandler(handler)
        logger.propagate = False


def log_path(out: str | Path) -> Path:
    """``<out>.log``: where a stage's run appends its full log, beside its output. A stage
    starts it once the output is accepted (locked and checked), so a refused run leaves
    nothing beside an ``--out`` that is not its own."""
    out = Path(out)
    return out.with_name(out.name + ".log")


@contextmanager
def log_to_file(path: str | Path) -> Iterator[Path]:
    """Append everything the project logs (DEBUG and above, timestamped) to ``path`` while
    the block runs, e.g. ``<out>.log`` beside a store or ``out.log`` in a run folder. An
    exception that ends the block is written there too (the console shows it once, from the
    command line), with its traceback unless it is an expected :class:`PipelineError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    handler.setLevel(logging.DEBUG)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield path
    except BaseException as e:
        exc_info = None if isinstance(e, PipelineError) else (type(e), e, e.__traceback__)
        handler.handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, "error: %s", (e,), exc_info))
        raise
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def connect_scheduler(address: str):
    """A ``distributed.Client`` on a running scheduler (``--scheduler``), or a one-line error naming it.

    distributed raises OSError (no answer within ``distributed.comm.timeouts.connect``, 30 s by
    default), TimeoutError or ValueError (a malformed address); any of them means the run cannot
    start, which is an input problem, not a bug."""
    from distributed import Client

    try:
        return Client(address)
    except (OSError, TimeoutError, ValueError) as e:
        raise PipelineError(
            f"cannot reach the Dask scheduler at {address!r} ({type(e).__name__}: {e}); start it "
            "(`dask scheduler`) or check the address, or leave --scheduler out for a local cluster"
        ) from None
