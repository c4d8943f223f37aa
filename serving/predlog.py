"""The prediction log: every answer appended to JSON-lines files the lake reads (feedback loop, monitoring).

Layout: ``<dir>/<usecase>/date=YYYY-MM-DD/part-<HHMMSS>-<pid>-<n>.jsonl`` (the UTC date of the record's
``as_of``, the request's clock: the wall clock in production, the simulated one in a replay), one JSON
object per line: request id, time, as_of, keys, features used, model and version, prediction, interval,
flags. Spark reads it with ``spark.read.json(<dir>/<usecase>)`` (``date`` becomes a partition column);
pandas with ``read_json(path, lines=True)``.

Asynchronous and bounded: :meth:`PredictionLog.append` only puts the record on a bounded queue (a full queue
refuses it, counted, and never blocks the request); one writer thread serializes, writes and fsyncs in
batches. :meth:`close` drains the queue: nothing accepted is lost on shutdown. Lines are written whole
(one ``write`` per batch), so a reader never sees half a record except at the tail of a file being written.
"""

from __future__ import annotations

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


class PredictionLog:
    def __init__(self, folder: Path, *, max_queue: int = 100_000, batch: int = 2_000, flush_s: float = 0.2,
                 on_written: Callable[[int], None] | None = None) -> None:
        self.folder = Path(folder)
        self.max_batch, self.flush_s = batch, flush_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._files: dict[tuple[str, str], tuple[Any, int]] = {}  # (usecase, date) -> (file, bytes)
        self._seq = 0
        self._on_written = on_written
        self.accepted = self.dropped = self.written = 0
        self.error: BaseException | None = None

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
            except Exception as exc:  # noqa: BLE001 - keep the writer alive; the error is reported by health
                self.error = exc
        for f, _ in self._files.values():
            f.close()
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
            handle, size = self._file(*where)
            data = b"".join(lines)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self._files[where] = (handle, size + len(data))
            self.written += len(lines)
            if self._on_written is not None:
                self._on_written(len(lines))

    def _file(self, usecase: str, day: str) -> tuple[Any, int]:
        current = self._files.get((usecase, day))
        if current is not None and current[1] < ROTATE_BYTES:
            return current
        if current is not None:
            current[0].close()
            del self._files[(usecase, day)]
        if len(self._files) >= MAX_OPEN_FILES:  # a replay moves from day to day: close the oldest
            oldest = next(iter(self._files))
            self._files.pop(oldest)[0].close()
        folder = self.folder / usecase / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"part-{time.strftime('%H%M%S', time.gmtime())}-{os.getpid()}-{self._seq}.jsonl"
        handle = open(folder / name, "ab")  # noqa: SIM115 - kept open across batches
        self._files[(usecase, day)] = (handle, 0)
        return handle, 0
