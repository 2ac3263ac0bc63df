"""A push over a prefetching transport lands every page once, whatever happens between its rounds."""

from __future__ import annotations

from typing import Any

from starkeep_sync import HLCClock, create_sync_engine
from starkeep_sync.core.engine import SyncEngine
from starkeep_sync.core.wire import SyncExchangeRequest
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.sqlite import SqliteDeviceStore

from .test_prefetch import JsonTransport, catch_up, metadata


class Recording(JsonTransport):
    """``during`` runs inside the next call."""

    def __init__(self, server_db: MemoryDatabaseAdapter) -> None:
        super().__init__(server_db)
        self.during: Any = None

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        if self.during is not None:
            action, self.during = self.during, None
            action()
        return super().exchange_json(request)


def pusher(transport: Any, db: Any, clock: HLCClock, page: int = 4) -> SyncEngine:
    return create_sync_engine(local_database=db, local_storage=MemoryObjectStorage(),
                              remote_storage=MemoryObjectStorage(), transport=transport, clock=clock,
                              page_limit=page)


def test_a_push_sends_its_pages_and_lands_everything_once() -> None:
    clock = HLCClock("phone")
    local = MemoryDatabaseAdapter(metadata(clock, 10))
    server = MemoryDatabaseAdapter()
    transport = Recording(server)
    results = catch_up(pusher(transport, local, clock))
    assert [r.shipped for r in results] == [4, 4, 2]
    assert sorted(r.id for r in server.all()) == sorted(r.id for r in local.all())
    assert results[-1].has_more is False


def test_a_local_write_while_a_page_is_answered_is_pushed_too() -> None:
    clock = HLCClock("phone")
    local = MemoryDatabaseAdapter(metadata(clock, 8))
    server = MemoryDatabaseAdapter()
    transport = Recording(server)
    # A record of another node, older than everything here, arrives while page 1 is in flight
    # (a merge from elsewhere): a page read before it would skip it for good.
    relayed = metadata(HLCClock("tablet", wall_clock=lambda: 1), 1, 500)[0]
    transport.during = lambda: local.merge([relayed])
    results = catch_up(pusher(transport, local, clock))
    assert relayed.id in {r.id for r in server.all()}
    assert len(server.all()) == 9 and not results[-1].has_more


def test_a_push_whose_answer_brings_records_still_lands_everything() -> None:
    clock = HLCClock("phone")
    server = MemoryDatabaseAdapter(metadata(HLCClock("tablet"), 2, 900))  # the server holds another node
    transport = Recording(server)
    local = MemoryDatabaseAdapter(metadata(clock, 10))
    engine = pusher(transport, local, clock)
    results = catch_up(engine)
    # Round 1's answer brings tablet's records, applied here between the push's pages.
    assert all(r.id in {s.id for s in server.all()} for r in local.all())
    assert not results[-1].has_more


def test_a_failed_round_is_pushed_again() -> None:
    clock = HLCClock("phone")
    local = MemoryDatabaseAdapter(metadata(clock, 10))
    server = MemoryDatabaseAdapter()
    transport = Recording(server)
    engine = pusher(transport, local, clock)
    engine.exchange()
    transport.fail_next = True
    try:
        engine.exchange()
    except Exception:
        pass
    results = catch_up(engine)
    # Round 2 failed: its records go again.
    assert len(server.all()) == 10 and not results[-1].has_more


def test_the_sqlite_device_store_pushes_what_other_connections_committed(tmp_path: Any) -> None:
    clock = HLCClock("phone")
    store = SqliteDeviceStore(tmp_path / "device.db", tmp_path / "blobs")
    try:
        for r in metadata(clock, 10):
            store.database.put(r)
        other = SqliteDeviceStore(tmp_path / "device.db", tmp_path / "blobs")
        try:
            other.database.put(metadata(HLCClock("tablet"), 1, 700)[0])  # another connection commits
        finally:
            other.close()
        server = MemoryDatabaseAdapter()
        transport = Recording(server)
        results = catch_up(pusher(transport, store.database, clock))
        assert len(server.all()) == 11 and not results[-1].has_more
    finally:
        store.close()
