"""Two plain-Python devices on one owner over HTTP, for the live-change tests (tier 1 and the load tier).

Device A writes a metadata-only shared record and pushes it; device B runs a
``SyncSupervisor`` in live mode in a thread. ``visible_after`` is how long B
took to hold A's record, measured from just before A's push.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starkeep_sync import HLCClock, create_data_record, create_sync_engine
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.engine import SyncEngine
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import Backoff, SyncSupervisor


def device(base_url: str, token: str, node_id: str, timeout: float = 30) -> SyncEngine:
    """A memory-adapter device on the Drive channel of ``base_url``."""
    base = f"{base_url.rstrip('/')}/apps/starkeep-drive"
    return create_sync_engine(
        local_database=MemoryDatabaseAdapter(), local_storage=MemoryObjectStorage(),
        remote_storage=HttpObjectStorage(base, auth=token),
        transport=create_http_sync_transport(base_url=base, auth=token, timeout=timeout),
        clock=HLCClock(node_id),
    )


def close(*engines: SyncEngine) -> None:
    """Close the devices' HTTP sessions: a kept-alive connection holds a server thread (and its database
    connection) until the client lets go."""
    for engine in engines:
        engine.transport.close()  # type: ignore[attr-defined]
        engine.remote_storage.close()  # type: ignore[union-attr]


def write(engine: SyncEngine, label: str) -> str:
    record = create_data_record(engine.clock, type="text/plain", origin_app_id="live-test", label=label,
                                content_hash="", object_storage_key="", size_bytes=0)
    engine.local_database.put(record)
    return record.id


@contextmanager
def live_supervisor(engine: SyncEngine, *, interval: float = 30.0, live: bool = True,
                    live_timeout: float = 2.0) -> Iterator[SyncSupervisor]:
    """``engine`` under a running supervisor (live mode by default), stopped on exit.

    The exit waits for the long-poll in flight (short here), so the server is done with it before the
    test's database goes away.
    """
    supervisor = SyncSupervisor(engine, interval=interval, live=live, live_timeout=live_timeout,
                                backoff=Backoff(base=0.2, cap=2.0))
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        supervisor.join(live_timeout + 15)
        close(engine)


def wait_until_live(supervisor: SyncSupervisor, timeout: float = 10) -> None:
    """Until the supervisor's change feed is open and its first cycle after the cursor has run."""
    deadline = time.monotonic() + timeout
    while not (supervisor.live_active and supervisor.rounds >= 2):
        assert time.monotonic() < deadline, "the supervisor never went live"
        time.sleep(0.01)
    time.sleep(0.05)  # its long-poll is (almost certainly) in flight again


def visible_after(writer: SyncEngine, reader: SyncEngine, label: str, limit: float = 10.0) -> float:
    """Seconds from A's push of a new record until B holds it (``limit`` when it never does)."""
    rid = write(writer, label)
    held = threading.Event()

    def check(_: Any) -> None:
        if reader.local_database.get(rid) is not None:
            held.set()

    unsubscribe = reader.change_notifier.subscribe(check)
    try:
        started = time.monotonic()
        writer.exchange()
        if reader.local_database.get(rid) is None:
            held.wait(limit)
        return time.monotonic() - started if reader.local_database.get(rid) is not None else limit
    finally:
        unsubscribe()
