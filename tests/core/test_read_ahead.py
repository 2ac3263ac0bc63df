"""The engine reads and encodes the next push page while the responder answers this one."""

from __future__ import annotations

import hashlib
from typing import Any

from starkeep_sync import HLCClock, create_data_record, create_sync_engine, shared_object_key
from starkeep_sync.core.engine import SyncEngine
from starkeep_sync.core.wire import SyncExchangeRequest
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.sqlite import SqliteDeviceStore

from .test_prefetch import JsonTransport, catch_up, metadata


class Recording(JsonTransport):
    """Keeps which requests went out pre-encoded; ``during`` runs inside the next call."""

    def __init__(self, server_db: MemoryDatabaseAdapter) -> None:
        super().__init__(server_db)
        self.pre_encoded: list[bool] = []
        self.during: Any = None

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        self.pre_encoded.append(request.wire_records is not None)
        if request.wire_records is not None:
            # What goes out is exactly the encoding of the records the round ships.
            assert request.wire_records == SyncExchangeRequest(records=request.records).to_wire()["records"]
        if self.during is not None:
            action, self.during = self.during, None
            action()
        return super().exchange_json(request)


def pusher(transport: Any, db: Any, clock: HLCClock, page: int = 4) -> SyncEngine:
    return create_sync_engine(local_database=db, local_storage=MemoryObjectStorage(),
                              remote_storage=MemoryObjectStorage(), transport=transport, clock=clock,
                              page_limit=page)


def test_a_push_sends_the_pages_read_ahead_and_lands_everything_once() -> None:
    clock = HLCClock("phone")
    local = MemoryDatabaseAdapter(metadata(clock, 10))
    server = MemoryDatabaseAdapter()
    transport = Recording(server)
    results = catch_up(pusher(transport, local, clock))
    assert [r.shipped for r in results] == [4, 4, 2]
    assert transport.pre_encoded == [False, True, True]
    assert sorted(r.id for r in server.all()) == sorted(r.id for r in local.all())
    assert results[-1].has_more is False


def test_a_local_write_while_a_page_is_answered_drops_the_page_read_ahead() -> None:
    clock = HLCClock("phone")
    local = MemoryDatabaseAdapter(metadata(clock, 8))
    server = MemoryDatabaseAdapter()
    transport = Recording(server)
    # A record of another node, older than everything here, arrives while page 1 is in flight
    # (a merge from elsewhere): a page read before it would skip it for good.
    relayed = metadata(HLCClock("tablet", wall_clock=lambda: 1), 1, 500)[0]
    transport.during = lambda: local.merge([relayed])
    results = catch_up(pusher(transport, local, clock))
    assert transport.pre_encoded[1] is False  # read again after the write
    assert relayed.id in {r.id for r in server.all()}
    assert len(server.all()) == 9 and not results[-1].has_more


def test_an_answer_that_brings_records_drops_the_page_read_ahead() -> None:
    clock = HLCClock("phone")
    server = MemoryDatabaseAdapter(metadata(HLCClock("tablet"), 2, 900))  # the server holds another node
    transport = Recording(server)
    local = MemoryDatabaseAdapter(metadata(clock, 10))
    engine = pusher(transport, local, clock)
    results = catch_up(engine)
    # Round 1's answer brings tablet's records: applying them writes here, so the page read during
    # the round (and the vector it assumed, which lacked "tablet") is not used.
    assert transport.pre_encoded[:2] == [False, False]
    assert all(r.id in {s.id for s in server.all()} for r in local.all())
    assert not results[-1].has_more


def test_pages_with_blobs_are_never_read_ahead() -> None:
    clock = HLCClock("phone")
    storage = MemoryObjectStorage()
    local = MemoryDatabaseAdapter()
    for i in range(6):
        data = f"blob {i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("text/plain", digest)
        storage.put(key, data, "text/plain")
        local.put(create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash=digest,
                                     object_storage_key=key, size_bytes=len(data)))
    transport = Recording(MemoryDatabaseAdapter())
    engine = create_sync_engine(local_database=local, local_storage=storage, remote_storage=MemoryObjectStorage(),
                                transport=transport, clock=clock, page_limit=4)
    catch_up(engine)
    assert transport.pre_encoded == [False, False]


def test_a_failed_round_does_not_send_the_page_read_during_it() -> None:
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
    # Round 2 failed: the page read ahead during it assumed a peer vector past round 2's records,
    # and the vector did not move, so round 3 reads its own.
    assert transport.pre_encoded[2] is False
    assert len(server.all()) == 10 and not results[-1].has_more


def test_the_sqlite_device_store_reads_ahead_and_sees_other_connections(tmp_path: Any) -> None:
    clock = HLCClock("phone")
    store = SqliteDeviceStore(tmp_path / "device.db", tmp_path / "blobs")
    try:
        for r in metadata(clock, 10):
            store.database.put(r)
        token = store.database.change_token()
        other = SqliteDeviceStore(tmp_path / "device.db", tmp_path / "blobs")
        try:
            other.database.put(metadata(HLCClock("tablet"), 1, 700)[0])  # another connection commits
        finally:
            other.close()
        assert store.database.change_token() != token
        server = MemoryDatabaseAdapter()
        transport = Recording(server)
        results = catch_up(pusher(transport, store.database, clock))
        assert transport.pre_encoded == [False, True, True]
        assert len(server.all()) == 11 and not results[-1].has_more
    finally:
        store.close()
