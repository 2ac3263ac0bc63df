"""Running rounds: until done, and forever with an interval and exponential backoff.

The reference leaves scheduling to its callers; here one small helper runs
rounds while ``has_more``, and :class:`SyncSupervisor` repeats that on an
interval, backing off with jitter on transport errors (honouring a server's
``Retry-After``), and reporting every round to a callback.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.constants import LOGGER_NAME
from ..core.engine import ExchangeResult, SyncEngine
from ..core.exceptions import ItemsRejected, SyncTransportError

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
    """Run rounds while ``has_more``; errors propagate. Raises ``RuntimeError`` past ``max_rounds``.

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
        if not result.has_more:
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
    interrupts); tests pass a fake. Non-retryable errors are reported and end
    ``run()`` by raising, since retrying cannot fix them.
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
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.on_round = on_round
        self.max_rounds_per_cycle = max_rounds_per_cycle
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._wait = wait or (lambda seconds: self._stop.wait(seconds))
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.last_error: BaseException | None = None

    # control

    def stop(self) -> None:
        self._stop.set()
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

    def run(self, *, max_cycles: int | None = None) -> None:
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

    def start(self) -> threading.Thread:
        """Run in a daemon thread; ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.run, name="starkeep-sync", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
