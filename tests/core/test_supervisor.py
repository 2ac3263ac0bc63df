from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from starkeep_sync import ExchangeResult, SyncTransportError
from starkeep_sync.device.supervisor import Backoff, RoundReport, SyncSupervisor, sync_until_done
from tests.harness import memory_pair


class ScriptedEngine:
    """An engine whose rounds follow a script: ExchangeResult objects or exceptions to raise."""

    def __init__(self, script: list[Any], default: ExchangeResult | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.default = default or ExchangeResult(0, 0, False)

    def exchange(self) -> ExchangeResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, BaseException):
            raise step
        return step


def more(n: int = 1) -> ExchangeResult:
    return ExchangeResult(n, 0, True)


def done(n: int = 0) -> ExchangeResult:
    return ExchangeResult(n, 0, False)


def test_sync_until_done_runs_while_has_more_and_reports_each_round() -> None:
    engine = ScriptedEngine([more(3), more(2), done(1), more(9)])
    reports: list[RoundReport] = []
    results = sync_until_done(engine, on_round=reports.append)  # type: ignore[arg-type]
    assert [r.applied for r in results] == [3, 2, 1]
    assert engine.calls == 3
    assert [(r.round, r.ok, r.applied) for r in reports] == [(1, True, 3), (2, True, 2), (3, True, 1)]


def test_sync_until_done_gives_up_after_max_rounds() -> None:
    engine = ScriptedEngine([], default=more())
    with pytest.raises(RuntimeError, match="has_more after 5 rounds"):
        sync_until_done(engine, max_rounds=5)  # type: ignore[arg-type]


def test_sync_until_done_reports_then_raises_errors() -> None:
    err = SyncTransportError("down", status=503)
    reports: list[RoundReport] = []
    with pytest.raises(SyncTransportError):
        sync_until_done(ScriptedEngine([more(), err]), on_round=reports.append)  # type: ignore[arg-type]
    assert [r.ok for r in reports] == [True, False] and reports[1].error is err


def test_sync_until_done_on_a_real_pair_converges() -> None:
    pair = memory_pair()
    for i in range(25):
        pair.local.write_record(f"r{i}")
    results = sync_until_done(pair.engine("drive", page_limit=10))
    assert [r.shipped for r in results] == [10, 10, 5]
    assert len(pair.cloud.database.all()) == 25


def test_backoff_schedule_is_exponential_capped_and_jittered() -> None:
    no_jitter = Backoff(base=1, factor=2, cap=10, jitter=0)
    assert [no_jitter.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    no_jitter.reset()
    assert no_jitter.next_delay() == 1

    jittered = Backoff(base=4, factor=2, cap=100, jitter=0.5, rng=random.Random(7))
    delays = [jittered.next_delay() for _ in range(4)]
    for n, d in enumerate(delays):
        assert 4 * 2**n * 0.5 <= d <= 4 * 2**n
    assert len(set(delays)) == 4


def test_backoff_honours_retry_after() -> None:
    b = Backoff(base=1, jitter=0)
    assert b.next_delay(retry_after=30) == 30
    assert b.next_delay(retry_after=0.5) == 2  # the schedule wins when it is longer


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_supervisor_backs_off_on_transport_errors_and_resets_on_success() -> None:
    errors = [SyncTransportError("down"), SyncTransportError("down"), SyncTransportError("busy", retry_after=60)]
    engine = ScriptedEngine([*errors, more(), done(), SyncTransportError("down")])
    waits: list[float] = []
    sup = SyncSupervisor(engine, interval=15, backoff=Backoff(base=1, factor=2, cap=100, jitter=0),  # type: ignore[arg-type]
                         wait=waits.append)
    sup.run(max_cycles=5)
    # three failures back off 1, 2, then max(4, Retry-After 60); success waits the interval and
    # resets the schedule, so the next failure starts again at 1.
    assert waits == [1, 2, 60, 15]
    assert sup.last_error is not None and engine.calls == 6


def test_supervisor_raises_non_retryable_errors() -> None:
    sup = SyncSupervisor(ScriptedEngine([ValueError("bug")]), wait=lambda s: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bug"):
        sup.run(max_cycles=3)


def test_supervisor_callback_errors_do_not_stop_it() -> None:
    def boom(report: RoundReport) -> None:
        raise RuntimeError("listener bug")

    sup = SyncSupervisor(ScriptedEngine([done(), done()]), on_round=boom, wait=lambda s: None)  # type: ignore[arg-type]
    sup.run(max_cycles=2)
    assert sup.rounds == 2


def test_supervisor_stop_and_pause_in_a_thread() -> None:
    engine = ScriptedEngine([], default=done())
    ran = threading.Event()
    sup = SyncSupervisor(engine, interval=3600, on_round=lambda r: ran.set())  # type: ignore[arg-type]
    sup.start()
    assert ran.wait(5)
    sup.stop()  # interrupts the hour-long interval wait
    sup.join(5)
    assert sup.stopped and sup._thread is not None and not sup._thread.is_alive()
    assert engine.calls == 1

    paused = SyncSupervisor(ScriptedEngine([], default=done()), interval=0.01)  # type: ignore[arg-type]
    paused.pause()
    assert paused.paused
    paused.start()
    paused._stop.wait(0.1)
    assert paused.rounds == 0  # nothing runs while paused
    paused.resume()
    for _ in range(100):
        if paused.rounds:
            break
        paused._stop.wait(0.02)
    paused.stop()
    paused.join(5)
    assert paused.rounds >= 1


# -- live mode: the change-feed watcher ---------------------------------------------------------------


class Answer:
    def __init__(self, changed: bool, cursor: str) -> None:
        self.changed, self.cursor = changed, cursor


class FeedTransport:
    """A transport whose ``wait_for_changes`` follows a script: answers, errors, or a gate to block on."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str | None, float]] = []
        self.idle = threading.Event()

    def wait_for_changes(self, cursor: str | None, timeout: float) -> Any:
        self.calls.append((cursor, timeout))
        if not self.script:
            self.idle.set()
            time.sleep(0.05)
            return Answer(False, cursor or "c0")
        step = self.script.pop(0)
        if isinstance(step, threading.Event):
            step.wait(5)
            step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


class LiveEngine(ScriptedEngine):
    def __init__(self, transport: Any) -> None:
        super().__init__([])
        self.transport = transport
        from starkeep_sync import create_change_notifier

        self.change_notifier = create_change_notifier()


def run_live(engine: LiveEngine, **kwargs: Any) -> SyncSupervisor:
    supervisor = SyncSupervisor(engine, interval=30, live=True, live_timeout=7,  # type: ignore[arg-type]
                                backoff=Backoff(base=0.01, cap=0.05), **kwargs)
    supervisor.start()
    return supervisor


def run_live_until_idle(transport: FeedTransport) -> SyncSupervisor:
    """A live supervisor over ``transport``, stopped once the feed has given every scripted answer."""
    supervisor = run_live(LiveEngine(transport))
    try:
        assert transport.idle.wait(5)
    finally:
        supervisor.stop()
        supervisor.join(5)
    return supervisor


def test_live_mode_starts_a_cycle_when_the_feed_answers_changed() -> None:
    gate = threading.Event()
    transport = FeedTransport([Answer(False, "c1"), gate, Answer(True, "c2")])
    engine = LiveEngine(transport)
    events: list[str] = []
    engine.change_notifier.subscribe(lambda e: events.append(e.event_type))
    supervisor = run_live(engine)
    try:
        deadline = time.monotonic() + 5
        while engine.calls < 2:  # the first cycle, and one after the first cursor
            assert time.monotonic() < deadline
            time.sleep(0.005)
        before = engine.calls
        gate.set()
        while engine.calls == before:  # the interval is 30 s: only the feed can start this one
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert transport.idle.wait(5)
    finally:
        supervisor.stop()
        supervisor.join(5)
    assert events == ["remote-update-available"]
    assert supervisor.changes_seen == 1
    # It waited from the cursor it was given, each time, with its own timeout.
    assert [c for c, _ in transport.calls[:3]] == [None, "c1", "c2"]
    assert {t for _, t in transport.calls} == {7}


def test_live_mode_backs_off_on_errors_and_reconnects_with_its_cursor() -> None:
    down = SyncTransportError("cannot reach", code="connection_error")
    busy = SyncTransportError("throttled", status=429, retry_after=0.05)
    transport = FeedTransport([Answer(False, "c1"), down, busy, Answer(True, "c2")])
    supervisor = run_live_until_idle(transport)
    assert [c for c, _ in transport.calls[:4]] == [None, "c1", "c1", "c1"]  # nothing missed: same cursor
    assert supervisor.changes_seen == 1


def test_live_mode_starts_over_when_the_server_refuses_the_cursor() -> None:
    transport = FeedTransport([Answer(False, "c1"), SyncTransportError("bad cursor", status=400),
                               Answer(False, "c9")])
    run_live_until_idle(transport)
    assert [c for c, _ in transport.calls[:3]] == [None, "c1", None]


def test_live_mode_falls_back_to_the_interval_on_404() -> None:
    transport = FeedTransport([SyncTransportError("no route", status=404)])
    engine = LiveEngine(transport)
    supervisor = run_live(engine)
    try:
        deadline = time.monotonic() + 5
        while not supervisor.live_unavailable:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.05)
    finally:
        supervisor.stop()
        supervisor.join(5)
    assert len(transport.calls) == 1 and not supervisor.live_active
    assert engine.calls == 1  # the interval (30 s) has not come round again


def test_live_mode_without_a_change_feed_on_the_transport_just_runs_the_interval() -> None:
    engine = ScriptedEngine([])
    engine.transport = object()  # type: ignore[attr-defined]
    supervisor = SyncSupervisor(engine, live=True, wait=lambda s: None)  # type: ignore[arg-type]
    supervisor.run(max_cycles=2)
    assert engine.calls == 2 and not supervisor.live_active
