"""The prediction log: every answer appended to JSON-lines files the lake reads (feedback loop, monitoring).

Layout: ``<dir>/<usecase>/date=YYYY-MM-DD/part-<HHMMSS>-<pid>-<n>.jsonl`` (the UTC date of the record's
``as_of``, the request's clock: the wall clock in production, the simulated one in a replay), one JSON
object per line: request id, time, as_of, keys, features used, model and version, prediction, interval,
flags. Spark reads it with ``spark.read.json(<dir>/<usecase>)`` (``date`` becomes a partition column);
pandas with ``read_json(path, lines=True)``.

Asynchronous and bounded: :meth:`PredictionLog.append` only puts the record on a bounded queue (a full queue
refuses it, counted, and never blocks the request); one writer thread serializes, writes and fsyncs in
batches. :meth:`close` drains the queue: nothing accepted is lost on shutdown.

Whole lines only: a batch goes to its file with ``os.write`` on an ``O_APPEND`` descriptor; if the write
fails part-way (disk full, file-size limit, I/O error) the file is truncated back to where the batch began,
so a failed write leaves no partial line, and the batch's records are counted as ``failed``. The error is
kept (:meth:`status`, shown by the API's ``/readyz`` and its metrics) until a later write succeeds. A process
killed in the middle of a write may still leave one partial line at a file's tail; readers reject it as
malformed (the feedback job counts it), it is never read as a record.

Caps: every ``cap_check_s`` the writer deletes files last modified more than ``retention_s`` ago, then, while
the log holds more than ``max_bytes``, the least recently modified files (never one open for writing, nor one
written in the last minute, which another API process may hold open); each deletion is counted (``evicted``)
and logged. Retention goes by file time, not by the ``date=`` folder, because a replay writes simulated dates.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["PredictionLog"]

_STOP = object()
ROTATE_BYTES = 64 * 1024 * 1024
MAX_OPEN_FILES = 8
RECENT_S = 60.0  # files written more recently than this are never evicted for size (another process's)


log = logging.getLogger("atelier.serving.predlog")


class PredictionLog:
    def __init__(self, folder: Path, *, max_queue: int = 100_000, batch: int = 2_000, flush_s: float = 0.2,
                 max_bytes: int | None = None, retention_s: float | None = None, cap_check_s: float = 30.0,
                 on_written: Callable[[int], None] | None = None, on_failed: Callable[[int], None] | None = None,
                 on_evicted: Callable[[str, int], None] | None = None) -> None:
        self.folder = Path(folder)
        self.max_batch, self.flush_s = batch, flush_s
        self.max_bytes, self.retention_s, self.cap_check_s = max_bytes, retention_s, cap_check_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._files: dict[tuple[str, str], tuple[int, int, Path]] = {}  # (usecase, date) -> (fd, bytes, path)
        self._seq = 0
        self._on_written, self._on_failed, self._on_evicted = on_written, on_failed, on_evicted
        self.accepted = self.dropped = self.written = self.failed = 0
        self.evicted_files = self.evicted_bytes = 0
        self.bytes = 0  # the log's size on disk at the last cap check (plus what was written since)
        self.error: str | None = None  # the last write error, until a write succeeds
        self.error_at: str | None = None
        self._next_cap_check = 0.0

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` shows: ``ok`` is False while the last write failed (the error says why)."""
        return {"ok": self.error is None, "error": self.error, "error_at": self.error_at,
                "accepted": self.accepted, "written": self.written, "failed": self.failed,
                "dropped": self.dropped, "bytes": self.bytes, "max_bytes": self.max_bytes,
                "evicted_files": self.evicted_files}

    def start(self) -> PredictionLog:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def append(self, usecase: str, record: dict[str, Any]) -> bool:
        """Queue one record; False (and counted) when the queue is full or the log is closed."""
        if self._thread is None:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((usecase, record))
        except queue.Full:
            self.dropped += 1
            return False
        self.accepted += 1
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything accepted, fsync, close the files."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)  # blocks only if full: the writer is draining it
        thread.join(timeout_s)

    # -- writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            if time.monotonic() >= self._next_cap_check:
                self._next_cap_check = time.monotonic() + self.cap_check_s
                try:
                    self.enforce_caps()
                except OSError as exc:  # a scan that fails must not stop the writer; it is retried next time
                    log.warning("prediction log: cap check failed: %s", exc)
            try:
                item = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                continue
            items = [item]
            while len(items) < self.max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is _STOP or _STOP in items:
                stop = True
                items = [i for i in items if i is not _STOP]
            try:
                self._write(items)
            except Exception as exc:  # noqa: BLE001 - keep the writer alive; the error is reported by status
                self._failed(len(items), exc)
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def _write(self, items: list) -> None:
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        by_file: dict[tuple[str, str], list[bytes]] = {}
        for usecase, record in items:
            as_of = record.get("as_of")
            day = as_of[:10] if isinstance(as_of, str) and len(as_of) >= 10 else today
            by_file.setdefault((usecase, day), []).append(
                orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))
        for where, lines in by_file.items():
            try:
                fd, size, path = self._file(*where)
                data = b"".join(lines)
                _append_whole(fd, data, size)
            except _TailLeft as exc:
                self._failed(len(lines), exc)
                self._close_file(where)  # its tail holds a partial line: later batches go to a new part file
                continue
            except OSError as exc:  # truncated back: the file stays whole and open for the next batch
                self._failed(len(lines), exc)
                continue
            self._files[where] = (fd, size + len(data), path)
            self.bytes += len(data)
            self.written += len(lines)
            self.error = self.error_at = None
            if self._on_written is not None:
                self._on_written(len(lines))

    def _failed(self, records: int, exc: BaseException) -> None:
        first = self.error is None
        self.failed += records
        # Shown by the unauthenticated /readyz: the kind of error only (an OSError's text may hold paths).
        if isinstance(exc, OSError) and exc.strerror:
            self.error = f"{errno.errorcode.get(exc.errno or 0, type(exc).__name__)}: {exc.strerror}"
        else:
            self.error = f"{type(exc).__name__} (details in the API log)"
        self.error_at = datetime.now(UTC).isoformat(timespec="seconds")
        if first:
            log.error("prediction log: writing %d record(s) failed (%s: %s); counting them as failed until a "
                      "write succeeds", records, type(exc).__name__, exc)
        if self._on_failed is not None:
            self._on_failed(records)

    def _file(self, usecase: str, day: str) -> tuple[int, int, Path]:
        current = self._files.get((usecase, day))
        if current is not None and current[1] < ROTATE_BYTES:
            return current
        if current is not None:
            self._close_file((usecase, day))
        if len(self._files) >= MAX_OPEN_FILES:  # a replay moves from day to day: close the oldest
            self._close_file(next(iter(self._files)))
        folder = self.folder / usecase / f"date={day}"
        self._seq += 1
        path = folder / f"part-{time.strftime('%H%M%S', time.gmtime())}-{os.getpid()}-{self._seq}.jsonl"
        for attempt in (1, 2):  # another process's cap check may remove the empty folder in between
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        self._files[(usecase, day)] = (fd, 0, path)
        return fd, 0, path

    def _close_file(self, where: tuple[str, str]) -> None:
        entry = self._files.pop(where, None)
        if entry is not None:
            os.close(entry[0])

    # -- caps

    def enforce_caps(self) -> None:
        """Delete what is past retention, then the oldest files while over ``max_bytes`` (open ones kept)."""
        if not self.folder.is_dir():
            return
        open_paths = {path for _, _, path in list(self._files.values())}
        # Other API processes (api.workers > 1) write to the same folders: a file written in the last minute
        # may be one of theirs, still open, so the size cap never takes it (retention is far longer).
        busy = time.time() - RECENT_S
        files = []
        for path in self.folder.rglob("*.jsonl"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        horizon = time.time() - self.retention_s if self.retention_s is not None else None
        for mtime, size, path in files:
            over_size = self.max_bytes is not None and total > self.max_bytes and mtime < busy
            expired = horizon is not None and mtime < horizon
            if path in open_paths or not (expired or over_size):
                continue
            path.unlink(missing_ok=True)
            total -= size
            reason = "retention" if expired else "size"
            self.evicted_files += 1
            self.evicted_bytes += size
            log.warning("prediction log: deleted %s (%d bytes, %s cap)", path, size, reason)
            if self._on_evicted is not None:
                self._on_evicted(reason, size)
            try:
                path.parent.rmdir()  # the day's folder, once empty
            except OSError:
                pass
        self.bytes = total


class _TailLeft(OSError):
    """A write failed part-way and the partial tail could not be truncated away."""


def _append_whole(fd: int, data: bytes, start: int) -> None:
    """Append ``data`` whole, fsynced, or raise the write's OSError with the file truncated back to ``start``
    bytes (:class:`_TailLeft` when even that failed)."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            if n == 0:
                raise OSError(errno.EIO, "write wrote nothing")
            view = view[n:]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError as undo:  # the partial tail stays: readers reject it as a malformed line
            log.error("prediction log: could not truncate back after a failed write: %s", undo)
            raise _TailLeft(undo.errno, f"write failed and the file could not be truncated back: {undo}") from None
        raise
