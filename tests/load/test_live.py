"""Live changes across workers (PROTOCOL §7d): gunicorn with 4 uvicorn workers on PostgreSQL + Redis.

A write lands on whichever worker takes it and must wake devices waiting on the
others (PostgreSQL ``NOTIFY`` from the writing transaction, one ``LISTEN`` per
worker). Devices cannot pick a worker, so several B devices wait at once: with
4 workers they spread over them.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from starkeep_sync.device.supervisor import Backoff, SyncSupervisor
from tests.live_devices import close, device, visible_after, wait_until_live
from tests.load.conftest import LoadServer, deployment

B_DEVICES = 4


@pytest.fixture(scope="module")
def asgi_server() -> Iterator[LoadServer]:
    pytest.importorskip("uvicorn_worker")
    # Short holds, so a long-poll cut short by a killed worker or a stopped device ends soon.
    with deployment("example_project.asgi", "uvicorn_worker.UvicornWorker",
                    {"STARKEEP_LIVE_MAX_TIMEOUT": "5"}) as server:
        yield server


def changes(server: LoadServer, token: str, **params: Any) -> dict[str, Any]:
    answer = requests.get(f"{server.url}/apps/starkeep-drive/sync/changes", params=params,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()  # type: ignore[no-any-return]


def test_a_push_reaches_live_devices_on_every_worker_within_a_second(asgi_server: LoadServer) -> None:
    token = asgi_server.new_owner("live-latency")
    a = device(asgi_server.url, token, "device-a")
    readers = [device(asgi_server.url, token, f"device-b{i}") for i in range(B_DEVICES)]
    try:
        with _all_live(readers) as supervisors:
            worst = []
            for n in range(5):
                rid_label = f"note {n}"
                times = _visible_on_all(a, readers, rid_label)
                worst.append(max(times))
            assert all(s.changes_seen >= 5 for s in supervisors)
        assert max(worst) < 1.0, worst
    finally:
        close(a)


def test_no_lost_wake_up_across_workers(asgi_server: LoadServer) -> None:
    """B reads the cursor, A writes through another connection (another worker, likely), B waits: always
    ``changed``, whatever the timing."""
    token = asgi_server.new_owner("live-race")
    a = device(asgi_server.url, token, "device-a")
    rng = random.Random(7)
    try:
        for i in range(60):
            cursor = changes(asgi_server, token)["cursor"]
            answer: dict[str, Any] = {}

            def wait(cursor: str = cursor, answer: dict[str, Any] = answer) -> None:
                answer.update(changes(asgi_server, token, cursor=cursor, timeout=5))

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(rng.random() * 0.02)
            a.local_database.put(_record(a, f"race {i}"))
            started = time.monotonic()
            a.exchange()
            waiter.join(10)
            assert answer.get("changed") is True, (i, answer)
            assert time.monotonic() - started < 2.5, i
    finally:
        close(a)


def test_a_worker_killed_under_waiting_devices_costs_them_nothing(asgi_server: LoadServer) -> None:
    token = asgi_server.new_owner("live-kill")
    a = device(asgi_server.url, token, "device-a")
    readers = [device(asgi_server.url, token, f"device-k{i}") for i in range(B_DEVICES)]
    try:
        with _all_live(readers):
            for pid in asgi_server.worker_pids():  # every worker, so every waiting device is cut off
                os.kill(pid, signal.SIGKILL)
            # Written while the workers restart: the devices reconnect with their cursor and get it.
            rid = _record(a, "while down")
            a.local_database.put(rid)
            deadline = time.monotonic() + 60
            while True:
                try:
                    a.exchange()
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the server never came back"
                    time.sleep(0.2)
            asgi_server.wait_workers()
            deadline = time.monotonic() + 15
            while not all(r.local_database.get(rid.id) is not None for r in readers):
                assert time.monotonic() < deadline, "a device missed the write made while its worker died"
                time.sleep(0.05)
            # And live again afterwards: a new write is seen within a second.
            assert max(_visible_on_all(a, readers, "after the restart")) < 1.0
    finally:
        close(a)


# -- helpers -----------------------------------------------------------------------------------------------


def _record(engine: Any, label: str) -> Any:
    from starkeep_sync import create_data_record

    return create_data_record(engine.clock, type="text/plain", origin_app_id="live-test", label=label,
                              content_hash="", object_storage_key="", size_bytes=0)


class _all_live:
    """Every reader under a live supervisor (interval 30 s), all gone live before the block runs; on exit
    all are stopped first, then joined, so their last long-polls end together."""

    def __init__(self, readers: list[Any]) -> None:
        self.readers = readers
        self.supervisors = [SyncSupervisor(r, interval=30, live=True, live_timeout=2,
                                           backoff=Backoff(base=0.2, cap=2.0)) for r in readers]

    def __enter__(self) -> list[SyncSupervisor]:
        for s in self.supervisors:
            s.start()
        for s in self.supervisors:
            wait_until_live(s, timeout=20)
        return self.supervisors

    def __exit__(self, *exc: Any) -> None:
        for s in self.supervisors:
            s.stop()
        for s in self.supervisors:
            s.join(20)
        close(*self.readers)


def _visible_on_all(writer: Any, readers: list[Any], label: str) -> list[float]:
    """Seconds from the writer's push until each reader holds the record."""
    first = visible_after(writer, readers[0], label)
    times = [first]
    started = time.monotonic() - first
    record_ids = [r.id for r in writer.local_database.all() if r.label == label]
    deadline = time.monotonic() + 10
    for reader in readers[1:]:
        while not any(reader.local_database.get(i) is not None for i in record_ids):
            if time.monotonic() > deadline:
                times.append(10.0)
                break
            time.sleep(0.005)
        else:
            times.append(time.monotonic() - started)
    return times
