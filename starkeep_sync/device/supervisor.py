"""Running rounds: until done, and forever with an interval and exponential backoff.

The reference leaves scheduling to its callers; here one small helper runs
rounds while ``has_more``, and :class:`SyncSupervisor` repeats that on an
interval, backing off with jitter on transport errors (honouring a server's
``Retry-After``), and reporting every round to a callback. In live mode it also
keeps one long-poll of the server's change feed open (PROTOCOL §7d) and starts
a cycle as soon as it answers ``changed``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.constants import LOGGER_NAME, REMOTE_UPDATE_AVAILABLE
from ..core.engine import ExchangeResult, SyncEngine
from ..core.exceptions import ItemsRejected, SyncTransportError, WireFormatError
from ..core.notifier import ChangeEvent
from ..core.protocols import ChangeFeedTransport

logger = logging.getLogger(LOGGER_NAME)

#: Errors that mean "try again later" rather than "this is broken".
RETRYABLE = (SyncTransportError, ConnectionError, TimeoutError)


@dataclass(slots=True)
class RoundReport:
    """One round as the supervisor saw it: its result, or the error that stopped it."""

    round: int
    result: ExchangeResult | None
    error: BaseException | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def applied(self) -> int:
        return self.result.applied if self.result else 0

    @property
    def shipped(self) -> int:
        return self.result.shipped if self.result else 0

    @property
    def bytes_moved(self) -> int:
        return self.result.bytes_moved if self.result else 0


RoundCallback = Callable[[RoundReport], None]


def sync_until_done(
    engine: SyncEngine,
    *,
    max_rounds: int = 1000,
    on_round: RoundCallback | None = None,
    strict: bool = False,
) -> list[ExchangeResult]:
    """Run rounds while ``has_more``, or while ``fetch_budget_bytes`` left due blobs for a later round;
    errors propagate. Raises ``RuntimeError`` past ``max_rounds``.

    With ``strict``, items the peer rejected for good during these rounds raise
    ``ItemsRejected`` once the rounds are done (they are reported in the results either way).
    """
    results: list[ExchangeResult] = []
    for n in range(1, max_rounds + 1):
        started = time.monotonic()
        try:
            result = engine.exchange()
        except BaseException as err:
            if on_round is not None:
                on_round(RoundReport(n, None, err, time.monotonic() - started))
            raise
        results.append(result)
        if on_round is not None:
            on_round(RoundReport(n, result, None, time.monotonic() - started))
        # A round under a fetch budget fetches at least one due blob (or backs it off), so this ends.
        if not (result.has_more or result.deferred):
            rejected = [r for res in results for r in res.rejected]
            if strict and rejected:
                raise ItemsRejected(rejected)
            return results
    raise RuntimeError(f"still has_more after {max_rounds} rounds; is another writer outpacing this sync?")


class Backoff:
    """Exponential backoff with jitter: ``base * factor**n``, capped, each delay jittered down by up to ``jitter``."""

    def __init__(self, base: float = 1.0, factor: float = 2.0, cap: float = 300.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or factor < 1 or cap < base or not (0 <= jitter <= 1):
            raise ValueError("Backoff needs base > 0, factor >= 1, cap >= base and 0 <= jitter <= 1")
        self.base, self.factor, self.cap, self.jitter = base, factor, cap, jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        raw = min(self.cap, self.base * self.factor**self.failures)
        self.failures += 1
        delay = raw * (1 - self.jitter * self._rng.random())
        if retry_after is not None:
            delay = max(delay, float(retry_after))  # the server knows best when it can take us again
        return delay

    def reset(self) -> None:
        self.failures = 0


class SyncSupervisor:
    """Repeats sync cycles: rounds until done, then wait ``interval``; back off on transport errors.

    ``wait(seconds)`` is how it sleeps (default: an event wait that ``stop()``
    and, in live mode, a ``changed`` answer interrupt); tests pass a fake.
    Non-retryable errors are reported and end ``run()`` by raising, since
    retrying cannot fix them.

    ``live=True``: a thread keeps one long-poll of the transport's
    ``wait_for_changes`` open (``live_timeout`` seconds each); when it answers
    ``changed`` the supervisor emits ``remote-update-available`` on the engine's
    change notifier and starts a cycle at once. Its errors back off by the same
    rules as rounds (a :class:`Backoff` of its own, ``Retry-After`` honoured) and
    it reconnects with the cursor it had, so a change made meanwhile answers at
    once. Against a server without the route (404, like the reference) or a
    transport without the method it stops, and the interval alone schedules rounds.
    """

    def __init__(
        self,
        engine: SyncEngine,
        *,
        interval: float = 30.0,
        backoff: Backoff | None = None,
        on_round: RoundCallback | None = None,
        wait: Callable[[float], None] | None = None,
        max_rounds_per_cycle: int = 1000,
        live: bool = False,
        live_timeout: float = 25.0,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.on_round = on_round
        self.max_rounds_per_cycle = max_rounds_per_cycle
        self.live = live
        self.live_timeout = live_timeout
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._kick = threading.Event()
        self._wait = wait or self._sleep
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watcher_done = threading.Event()
        self.rounds = 0
        self.last_error: BaseException | None = None
        #: Live mode: whether the change feed is in use (``False`` once the server showed it has none).
        self.live_active = False
        #: Live mode: answers of the change feed that said ``changed``.
        self.changes_seen = 0
        #: Live mode: the server has no change feed (404), so only the interval schedules cycles.
        self.live_unavailable = False

    # control

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self._resume.set()  # a paused loop must wake up to notice

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # running

    def _report(self, report: RoundReport) -> None:
        self.rounds += 1
        if self.on_round is not None:
            try:
                self.on_round(report)
            except Exception:
                logger.exception("sync round callback raised; ignored")

    def run_cycle(self) -> float:
        """One cycle; returns how long to wait before the next one."""
        try:
            sync_until_done(self.engine, max_rounds=self.max_rounds_per_cycle, on_round=self._report)
        except RETRYABLE as err:
            self.last_error = err
            delay = self.backoff.next_delay(getattr(err, "retry_after", None))
            logger.warning("sync failed (%s); retrying in %.1f s", err, delay)
            return delay
        self.last_error = None
        self.backoff.reset()
        return self.interval

    def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass, ``stop()``, or the change feed answers ``changed``."""
        self._kick.wait(seconds)
        self._kick.clear()

    def run(self, *, max_cycles: int | None = None) -> None:
        if self.live:
            self._start_watcher()
        try:
            self._run(max_cycles)
        finally:
            if self._watcher is not None:
                self._stop_watcher()

    def _run(self, max_cycles: int | None) -> None:
        cycles = 0
        while not self._stop.is_set():
            self._resume.wait()
            if self._stop.is_set():
                break
            delay = self.run_cycle()
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
            self._wait(delay)

    # live mode: the change-feed watcher

    def _start_watcher(self) -> None:
        transport = self.engine.transport
        if not isinstance(transport, ChangeFeedTransport):
            logger.info("live mode: the transport has no change feed; syncing every %.0f s", self.interval)
            return
        self._watcher_done = threading.Event()  # this watcher's own: a later run() starts another
        self._watcher = threading.Thread(target=self._watch, args=(transport.wait_for_changes,), name="starkeep-live",
                                         daemon=True)
        self._watcher.start()

    def _stop_watcher(self) -> None:
        # The long-poll in flight ends at its timeout at the latest; ``join`` waits for it if asked.
        self._watcher_done.set()

    def _watch(self, wait_for_changes: Callable[[str | None, float], Any]) -> None:
        backoff = Backoff(self.backoff.base, self.backoff.factor, self.backoff.cap, self.backoff.jitter)
        cursor: str | None = None
        self.live_active = True
        try:
            while not (self._stop.is_set() or self._watcher_done.is_set()):
                self._resume.wait()
                try:
                    answer = wait_for_changes(cursor, self.live_timeout)
                except SyncTransportError as err:
                    if err.status == 404:
                        self.live_unavailable = True
                        logger.info("live mode: the server has no change feed (%s); syncing every %.0f s",
                                    err, self.interval)
                        return
                    if err.status == 400 and cursor is not None:
                        cursor = None  # a cursor this server does not take (restored, replaced): start over
                        continue
                    self._back_off(backoff, err)
                    continue
                except (WireFormatError, ConnectionError, TimeoutError) as err:
                    self._back_off(backoff, err)
                    continue
                backoff.reset()
                first = cursor is None
                cursor = answer.cursor
                if answer.changed or first:
                    # The first answer only gives a cursor; a cycle after it closes the gap between the
                    # supervisor's first round and the moment the cursor was read.
                    if answer.changed:
                        self.changes_seen += 1
                        self.engine.change_notifier.emit(ChangeEvent(REMOTE_UPDATE_AVAILABLE))
                    self._kick.set()
        finally:
            self.live_active = False

    def _back_off(self, backoff: Backoff, err: BaseException) -> None:
        if self._stop.is_set() or self._watcher_done.is_set():
            return  # stopped meanwhile: the error is the server or the network going away under us
        delay = backoff.next_delay(getattr(err, "retry_after", None))
        logger.warning("live mode: waiting for changes failed (%s); again in %.1f s", err, delay)
        self._stop.wait(delay)

    def start(self) -> threading.Thread:
        """Run in a daemon thread; ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.run, name="starkeep-sync", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread ``start`` began and, in live mode, for the long-poll in flight."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)
