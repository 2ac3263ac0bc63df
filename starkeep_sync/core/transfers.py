"""Blob transfers side by side: a bounded pool and progress reporting (PROTOCOL §5c).

Each blob moves on one thread (hashing, sockets and files release the GIL), at
most ``concurrency`` at once, so a page of small blobs no longer waits for each
one in turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .constants import LOGGER_NAME

T = TypeVar("T")
logger = logging.getLogger(LOGGER_NAME)

#: Blob transfers in flight at once, by default.
DEFAULT_TRANSFER_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """Where the blob transfers of one batch stand.

    ``direction`` is ``"push"`` or ``"pull"``; ``key`` the blob the report is
    about (``None`` for the report that opens a batch). Bytes move blob by blob
    and within a large blob, so a long upload reports as it goes.
    """

    direction: str
    items_done: int
    items_total: int
    bytes_done: int
    bytes_total: int
    key: str | None = None


ProgressCallback = Callable[[TransferProgress], None]


class ProgressTracker:
    """Counts one batch's items and bytes from several threads and reports each step."""

    def __init__(self, direction: str, items_total: int, bytes_total: int,
                 callback: ProgressCallback | None) -> None:
        self.direction = direction
        self.items_total = items_total
        self.bytes_total = bytes_total
        self.items_done = 0
        self.bytes_done = 0
        self._callback = callback
        self._lock = threading.Lock()
        self._report(None)

    def _report(self, key: str | None) -> None:
        if self._callback is None:
            return
        with self._lock:
            snapshot = TransferProgress(self.direction, self.items_done, self.items_total,
                                        self.bytes_done, max(self.bytes_total, self.bytes_done), key)
        try:
            self._callback(snapshot)
        except Exception:  # a display must never fail a transfer
            logger.exception("progress callback %r raised; progress reports stop for this batch", self._callback)
            self._callback = None

    def bytes_for(self, key: str) -> Callable[[int], None]:
        def moved(n: int) -> None:
            with self._lock:
                self.bytes_done += n
            self._report(key)
        return moved

    def item_done(self, key: str) -> None:
        with self._lock:
            self.items_done += 1
        self._report(key)


class TransferPool:
    """Runs jobs at most ``concurrency`` at a time; with 1, in the calling thread.

    ``after_job`` runs on the worker thread after each job (the Django layer
    closes that thread's database connections there). The high-water mark of
    jobs running at once is kept in :attr:`peak`, for tests and the benchmark.
    """

    def __init__(self, concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
                 after_job: Callable[[], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("transfer_concurrency must be at least 1")
        self.concurrency = concurrency
        self.after_job = after_job
        self.peak = 0
        self._running = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _run_one(self, job: Callable[[], T], on_worker: bool = False) -> T:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            return job()
        finally:
            with self._lock:
                self._running -= 1
            if on_worker and self.after_job is not None:
                self.after_job()

    def run(self, jobs: Sequence[Callable[[], T]], *, inline: bool = False) -> list[T]:
        """Each job's result, in the jobs' order; a job that raises re-raises here after the others end.

        ``inline``: run them one after another on this thread (jobs that never wait on I/O).
        """
        if inline or self.concurrency == 1 or len(jobs) <= 1:
            return [self._run_one(job) for job in jobs]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="starkeep-blob")
        futures = [self._executor.submit(self._run_one, job, True) for job in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


__all__ = [
    "DEFAULT_TRANSFER_CONCURRENCY",
    "ProgressCallback",
    "ProgressTracker",
    "TransferPool",
    "TransferProgress",
]
