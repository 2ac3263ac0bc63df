"""The ``pending`` extension: the responder counts once per catch-up, the engine counts down."""

from __future__ import annotations

from typing import Any

from starkeep_sync import (
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    HLCClock,
    create_data_record,
    create_sync_engine,
)
from starkeep_sync.core.responder import InProcessTransport
from starkeep_sync.core.wire import SyncExchangeRequest, SyncExchangeResponse
from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage


class Spy(InProcessTransport):
    """Remembers whether each request asked for a count, and what each response said."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asked: list[bool] = []
        self.answered: list[int | None] = []

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        self.asked.append(request.count_pending)
        response = super().exchange(request)
        self.answered.append(response.pending)
        return response


def metadata(clock: HLCClock, n: int) -> list[Any]:
    return [create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash=f"{i:064x}",
                               object_storage_key="", size_bytes=0) for i in range(n)]


def setup(held: int, *, count: bool = True) -> tuple[Spy, Any, MemoryDatabaseAdapter]:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), held))
    spy = Spy(database=server_db, storage=MemoryObjectStorage(), clock=HLCClock("cloud"), count_pending=count)
    engine = create_sync_engine(local_database=MemoryDatabaseAdapter(), local_storage=MemoryObjectStorage(),
                                remote_storage=MemoryObjectStorage(), transport=spy, clock=HLCClock("laptop"),
                                page_limit=3)
    return spy, engine, server_db


def test_first_cut_page_asks_and_later_pages_count_down() -> None:
    spy, engine, _ = setup(10)
    pending = []
    while True:
        result = engine.exchange()
        pending.append(result.pending)
        if not result.has_more:
            break
    assert pending == [7, 4, 1, 0]
    assert spy.asked == [True, False, False, False]
    assert spy.answered == [7, None, None, None]  # counted once, and only when asked (PROTOCOL §6)


def test_a_new_catch_up_counts_afresh() -> None:
    spy, engine, server_db = setup(4)
    assert [engine.exchange().pending for _ in range(2)] == [1, 0]
    for r in metadata(HLCClock("tablet"), 5):
        server_db.put(r)
    assert engine.exchange().pending == 2
    assert spy.asked == [True, False, True]


def test_a_responder_that_never_counts_leaves_pending_unknown() -> None:
    spy, engine, _ = setup(5, count=False)
    assert [engine.exchange().pending for _ in range(2)] == [None, None]
    assert spy.asked == [True, True]  # it keeps asking: nothing to count down from


def test_memory_app_rows_count_what_a_scan_returns() -> None:
    source = MemoryAppSource()
    source.namespaces.register(AppSyncableNamespace("notes", [AppSyncableTableInfo("notes", ["id"])]))
    phone, tablet = HLCClock("phone"), HLCClock("tablet")
    for i in range(4):
        source.applier.apply(AppSyncableRowEntry(phone.now(), "notes", "notes", "insert", {"id": f"p{i}"}, None))
    mark = phone.now()
    for i in range(3):
        source.applier.apply(AppSyncableRowEntry(tablet.now(), "notes", "notes", "insert", {"id": f"t{i}"}, None))
    # An overwrite leaves a stale index entry behind; it is not counted twice.
    source.applier.apply(AppSyncableRowEntry(phone.now(), "notes", "notes", "insert", {"id": "p0", "v": 2}, None))
    applier = source.applier
    assert applier.count_since("notes", "notes", {}) == len(applier.scan_since("notes", "notes", {}).rows) == 7
    assert applier.count_since("notes", "notes", {"phone": mark}) == 4  # p0 again, and the tablet's three
    assert applier.count_since("notes", "other", {}) == 0
