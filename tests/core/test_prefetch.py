"""The engine asks for the next page of a metadata catch-up while it applies this one."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import pytest

from starkeep_sync import (
    HLCClock,
    HLCTimestamp,
    SyncTransportError,
    create_data_record,
    create_sync_engine,
    shared_object_key,
)
from starkeep_sync.core import engine as engine_module
from starkeep_sync.core.exceptions import WireFormatError
from starkeep_sync.core.hlc import serialize_hlc
from starkeep_sync.core.records import AppSyncableRowEntry
from starkeep_sync.core.responder import SyncResponder
from starkeep_sync.core.wire import (
    ResponsePeek,
    SyncExchangeRequest,
    SyncExchangeResponse,
    decode_response,
    encode_json,
    encode_response,
    peek_response,
)
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import sync_until_done


class JsonTransport:
    """Like ``HttpSyncTransport``: JSON through a real responder, and a check that no two calls overlap."""

    prefetch_safe = True

    def __init__(self, server_db: MemoryDatabaseAdapter) -> None:
        self.responder = SyncResponder(database=server_db, storage=MemoryObjectStorage(), clock=HLCClock("cloud"))
        self.requests: list[SyncExchangeRequest] = []
        self.threads: set[str] = set()
        self.busy = threading.Lock()
        self.fail_next = False
        #: Seconds a prefetch (a call on the engine's helper thread) takes, holding the connection.
        self.prefetch_delay = 0.0

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        assert self.busy.acquire(blocking=False), "two exchanges at once on one transport"
        try:
            self.requests.append(request)
            self.threads.add(threading.current_thread().name)
            if threading.current_thread().name.startswith("starkeep-prefetch"):
                time.sleep(self.prefetch_delay)
            if self.fail_next:
                self.fail_next = False
                raise SyncTransportError("connection reset", code="network")
            decoded = SyncExchangeRequest.from_wire(json.loads(json.dumps(request.to_wire())))
            return json.loads(json.dumps(self.responder.handle(decoded)[0].to_wire()))
        finally:
            self.busy.release()

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        return SyncExchangeResponse.from_wire(self.exchange_json(request))


def metadata(clock: HLCClock, n: int, start: int = 0) -> list[Any]:
    return [create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash=f"{i:064x}",
                               object_storage_key="", size_bytes=0) for i in range(start, start + n)]


def device(transport: Any, db: MemoryDatabaseAdapter | None = None) -> Any:
    return create_sync_engine(local_database=db if db is not None else MemoryDatabaseAdapter(),
                              local_storage=MemoryObjectStorage(), remote_storage=MemoryObjectStorage(),
                              transport=transport, clock=HLCClock("laptop"), page_limit=4)


def catch_up(engine: Any) -> list[Any]:
    results = []
    while True:
        results.append(engine.exchange())
        if not results[-1].has_more:
            return results


def test_a_catch_up_pulls_the_next_page_on_another_thread_and_ends_the_same() -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 9) + metadata(HLCClock("tablet"), 8, 100))
    transport = JsonTransport(server_db)
    db = MemoryDatabaseAdapter()
    results = catch_up(device(transport, db))

    assert sorted(r.id for r in db.all()) == sorted(r.id for r in server_db.all())
    assert [r.received for r in results] == [4, 4, 4, 4, 1]
    assert any(name.startswith("starkeep-prefetch") for name in transport.threads)
    # Every request but the first was a prefetch that the next round took as it was: no page asked twice.
    assert len(transport.requests) == len(results)
    watermarks = [tuple(sorted(r.watermarks.items())) for r in transport.requests]
    assert len(set(watermarks)) == len(watermarks)


class RefusingDatabase(MemoryDatabaseAdapter):
    """A device database that cannot take one record (a local constraint, say)."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    def merge(self, records: Any) -> list[bool]:
        if any(r.id == self.refuse for r in records):
            raise ValueError("local constraint")
        return super().merge(records)


def test_a_refused_item_drops_the_prefetched_page_and_holds_its_node_back() -> None:
    phone = metadata(HLCClock("phone"), 6)
    tablet = metadata(HLCClock("tablet"), 6, 100)
    server_db = MemoryDatabaseAdapter(sorted(phone + tablet, key=lambda r: r.updated_at))
    transport = JsonTransport(server_db)
    first_page = sorted(phone + tablet, key=lambda r: r.updated_at)[:4]
    bad = next(r for r in first_page if r.updated_at[2] == "phone")
    db = RefusingDatabase(bad.id)
    engine = device(transport, db)

    first = engine.exchange()
    assert first.refused and first.received == 4
    engine.exchange()
    # The prefetch assumed the whole first page landed; round two asked from where the phone really stopped.
    assert transport.requests[1] != transport.requests[2]
    assert transport.requests[2].watermarks.get("phone", HLCTimestamp(0, 0, "")) < bad.updated_at
    assert bad.id not in {r.id for r in db.all()}
    assert engine.sync_state.get_watermarks().get("phone", HLCTimestamp(0, 0, "")) < bad.updated_at


def test_a_local_write_between_rounds_drops_the_prefetched_page() -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 10))
    transport = JsonTransport(server_db)
    db = MemoryDatabaseAdapter()
    engine = device(transport, db)
    engine.exchange()
    mine = create_data_record(engine.clock, type="text/plain", origin_app_id="notes", content_hash="f" * 64,
                              object_storage_key="", size_bytes=0)
    db.put(mine)
    engine.exchange()  # ships the local write: its request is not the prefetched one
    assert transport.requests[2].records == [mine]
    catch_up(engine)
    assert {r.id for r in server_db.all()} == {r.id for r in db.all()}


def test_a_failed_prefetch_is_forgotten_and_the_round_asks_again() -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 10))
    transport = JsonTransport(server_db)
    db = MemoryDatabaseAdapter()
    engine = device(transport, db)
    transport.fail_next = False
    engine.exchange()  # the prefetch of page two is already running or done
    engine._prefetched[1].result()  # let it finish (it succeeded), then make the next one fail
    transport.fail_next = True
    second = engine.exchange()  # takes page two, prefetches page three, which fails
    assert second.received == 4
    third = engine.exchange()  # drops the failure and asks again itself
    assert third.received == 2 and not third.has_more
    assert len(db) == 10
    assert transport.requests[2] == transport.requests[3]


def test_no_prefetch_without_a_transport_that_allows_it() -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 10))
    transport = JsonTransport(server_db)
    transport.prefetch_safe = False  # type: ignore[misc]
    catch_up(device(transport))
    assert transport.threads == {threading.current_thread().name}


def test_pages_with_blobs_are_prefetched_and_their_blobs_fetched_only_once_the_prefetch_is_done() -> None:
    """Applying moves metadata only (PROTOCOL §5 step 5), so a page naming blobs is prefetched too; the
    staged blobs are fetched after the apply, never while a prefetch holds a connection they may share."""
    clock = HLCClock("phone")
    server_storage = MemoryObjectStorage()
    records = []
    for i in range(6):
        data = f"note {i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("text/plain", digest)
        server_storage.put(key, data, "text/plain")
        records.append(create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash=digest,
                                          object_storage_key=key, size_bytes=len(data)))
    transport = JsonTransport(MemoryDatabaseAdapter(records))
    transport.prefetch_delay = 0.05
    remote = SharedSessionStorage(transport)
    for key in server_storage.keys():
        remote.put(key, server_storage.get(key).data, "text/plain")  # type: ignore[union-attr]
    local_db, local_storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
    engine = create_sync_engine(local_database=local_db, local_storage=local_storage, remote_storage=remote,
                                transport=transport, clock=HLCClock("laptop"), page_limit=4)
    results = sync_until_done(engine)
    assert any(name.startswith("starkeep-prefetch") for name in transport.threads)
    assert sum(len(r.resident) for r in results) == 6 and not any(r.errors for r in results)
    assert all(local_storage.has(r.object_storage_key) for r in records)


def test_a_stale_prefetched_page_is_asked_for_again(monkeypatch: Any) -> None:
    from starkeep_sync.core import engine as engine_module

    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 10))
    transport = JsonTransport(server_db)
    engine = device(transport)
    engine.exchange()
    clock = [engine_module.time.monotonic()]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0] + engine_module.PREFETCH_MAX_AGE + 1)
    second = engine.exchange()
    assert second.received == 4
    assert transport.requests[1] == transport.requests[2]  # the same page, asked for again


class SharedSessionStorage(MemoryObjectStorage):
    """Remote blob storage that shares the transport's connection: it must not run during a prefetch."""

    def __init__(self, transport: JsonTransport) -> None:
        super().__init__()
        self.transport = transport

    def _one_at_a_time(self) -> None:
        assert self.transport.busy.acquire(blocking=False), "blob storage used while the prefetch runs"
        self.transport.busy.release()

    def has(self, key: str) -> bool:
        self._one_at_a_time()
        return super().has(key)

    def put(self, key: str, data: Any, content_type: str | None = None) -> None:
        self._one_at_a_time()
        super().put(key, data, content_type)

    def open(self, key: str) -> Any:
        self._one_at_a_time()
        return super().open(key)


def test_a_blob_push_waits_for_the_prefetch_in_flight() -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 10))
    transport = JsonTransport(server_db)
    transport.prefetch_delay = 0.2
    local_db, local_storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
    clock = HLCClock("laptop")
    engine = create_sync_engine(local_database=local_db, local_storage=local_storage,
                                remote_storage=SharedSessionStorage(transport), transport=transport, clock=clock,
                                page_limit=4)
    engine.exchange()  # page one; page two is being prefetched, slowly
    data = b"a photo"
    digest = hashlib.sha256(data).hexdigest()
    key = shared_object_key("image/jpeg", digest)
    local_storage.put(key, data, "image/jpeg")
    local_db.put(create_data_record(clock, type="image/jpeg", origin_app_id="notes", content_hash=digest,
                                    object_storage_key=key, size_bytes=len(data)))
    second = engine.exchange()  # pushes the blob: only once the prefetch is done
    assert second.shipped == 1 and not second.failed_pushes


class BytesTransport(JsonTransport):
    """Answers with the JSON bytes, as ``HttpSyncTransport.exchange_json`` does; notes each call that starts."""

    def __init__(self, server_db: MemoryDatabaseAdapter) -> None:
        super().__init__(server_db)
        self.calls = 0
        self.started: dict[int, threading.Event] = {}

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        self.calls += 1
        self.started.setdefault(self.calls, threading.Event()).set()
        return encode_json(super().exchange_json(request))


def test_within_a_catch_up_the_next_page_is_asked_for_before_this_one_is_decoded(monkeypatch: Any) -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 9))
    transport = BytesTransport(server_db)
    decoded: list[int] = []

    def decode(body: bytes) -> SyncExchangeResponse:
        page = len(decoded) + 1
        following = transport.started.setdefault(page + 1, threading.Event())
        if page == 1:
            # The first answer may be the only one: it is decoded whole before anything is asked ahead.
            assert not following.is_set()
        elif page < 3:
            # Within the catch-up, page k is decoded only once page k + 1 was asked for (from its stamps).
            assert following.wait(5), f"page {page + 1} not asked"
        decoded.append(page)
        return decode_response(body)

    monkeypatch.setattr(engine_module, "decode_response", decode)
    db = MemoryDatabaseAdapter()
    results = catch_up(device(transport, db))
    assert decoded == [1, 2, 3] and transport.calls == 3 and [r.received for r in results] == [4, 4, 1]
    assert sorted(r.id for r in db.all()) == sorted(r.id for r in server_db.all())


def test_a_peek_reads_the_stamps_and_flags_a_decode_gives() -> None:
    phone, tablet = HLCClock("phone"), HLCClock("tablet")
    records = metadata(phone, 3) + metadata(tablet, 2)
    stamp = tablet.now()
    entry = AppSyncableRowEntry(stamp, "notes", "notes", "insert", {"id": "n1", "updated_at": serialize_hlc(stamp)})
    response = SyncExchangeResponse(records=records, app_syncable_rows=[entry],
                                    responder_watermarks={"phone": records[2].updated_at}, has_more=True, pending=7)
    body = encode_response(response)
    assert peek_response(body) == ResponsePeek.of(decode_response(body)) == ResponsePeek.of(response)
    assert peek_response(body).record_stamps == [r.updated_at for r in records]
    # A stamp that breaks the rules fails the peek as it fails the decode, naming the member; what the
    # peek does not read (here a createdAt) fails the decode only, which the round then reports.
    bad_stamps = body.replace(b'"nodeId":"phone"', b'"nodeId":"ph:one"')
    for read in (peek_response, decode_response):
        with pytest.raises(WireFormatError) as err:
            read(bad_stamps)
        assert err.value.field.startswith("records[0].") and err.value.field.endswith("At.nodeId")
    bad_created = body.replace(b'"nodeId":"phone"', b'"nodeId":"ph:one"', 1)
    assert peek_response(bad_created).record_stamps == [r.updated_at for r in records]
    with pytest.raises(WireFormatError, match="nodeId"):
        decode_response(bad_created)
