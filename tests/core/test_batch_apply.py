"""The requester's batch paths (``BatchApplier.apply_many`` for app rows, ``merge`` of a node's run of shared
records) against one item at a time.

The same page goes to two devices: one whose applier has ``apply_many`` (the memory applier),
one whose applier only has ``apply``. Everything a round leaves behind must be the same: what
it reports, the watermarks, the clock, the rows, the staged blobs and the notifier's events.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest

from starkeep_sync import HLCClock, create_sync_engine
from starkeep_sync.core.constants import FILE_RECORDS_TABLE
from starkeep_sync.core.exceptions import SyncError
from starkeep_sync.core.hlc import HLCTimestamp, serialize_hlc
from starkeep_sync.core.notifier import ChangeEvent
from starkeep_sync.core.protocols import BatchApplier, ScanPage
from starkeep_sync.core.records import AppSyncableNamespace, AppSyncableRowEntry, AppSyncableTableInfo, DataRecord
from starkeep_sync.core.wire import SyncExchangeResponse
from starkeep_sync.device.memory import MemoryApplier, MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage

pytestmark = pytest.mark.nodb

APP = "notes"
NOTES = AppSyncableNamespace(APP, [AppSyncableTableInfo("notes", ["id"])], files_enabled=True)
BASE = 1_700_000_000_000


def hlc(wall: int, node: str) -> HLCTimestamp:
    return HLCTimestamp(BASE + wall, 0, node)


def note(id: str, stamp: HLCTimestamp, body: str = "", op: str = "insert") -> AppSyncableRowEntry:
    row = {"id": id, "body": body, "updated_at": serialize_hlc(stamp)}
    if op == "delete":
        row["deleted_at"] = row["updated_at"]
    return AppSyncableRowEntry(stamp, APP, "notes", op, row, None)  # type: ignore[arg-type]


def file_row(id: str, stamp: HLCTimestamp, key: str) -> AppSyncableRowEntry:
    return AppSyncableRowEntry(stamp, APP, FILE_RECORDS_TABLE, "insert",
                               {"id": id, "object_storage_key": key, "content_hash": "ab" * 32, "size_bytes": 3,
                                "updated_at": serialize_hlc(stamp)}, None)


class OneAtATime:
    """An applier with ``apply`` only (so the engine applies entry by entry); refuses ids in ``refuse``."""

    def __init__(self, inner: MemoryApplier, refuse: Collection[str] = ()) -> None:
        self.inner = inner
        self.refuse = set(refuse)

    def apply(self, entry: AppSyncableRowEntry) -> bool:
        if (entry.row or entry.where or {}).get("id") in self.refuse:
            raise SyncError("refused by the applier")
        return self.inner.apply(entry)

    def scan_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int | None = None,
                   cursor: str | None = None, exclude: Any = None) -> ScanPage:
        return self.inner.scan_since(app_id, table, since, limit, cursor, exclude)

    def get_node_watermarks(self, app_id: str, table: str) -> dict[str, HLCTimestamp]:
        return self.inner.get_node_watermarks(app_id, table)

    def get_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        return self.inner.get_row(app_id, table, pk)

    def rows(self, app_id: str, table: str) -> list[dict[str, Any]]:
        return self.inner.rows(app_id, table)


class Batched(OneAtATime):
    """The same, with ``apply_many`` refusing the same ids (as the ORM refuses a value its column cannot hold)."""

    def apply_many(self, entries: Sequence[AppSyncableRowEntry], written: list[AppSyncableRowEntry] | None = None,
                   keys: Sequence[tuple[Any, ...]] | None = None) -> tuple[int, int, Exception | None]:
        for i, e in enumerate(entries):
            if (e.row or e.where or {}).get("id") in self.refuse:
                landed, applied, _ = self.inner.apply_many(entries[:i], written, None if keys is None else keys[:i])
                return landed, applied, SyncError("refused by the applier")
        return self.inner.apply_many(entries, written, keys)


class Pages:
    """A transport answering each round with the next prepared response."""

    def __init__(self, responses: list[SyncExchangeResponse]) -> None:
        self.responses = list(responses)

    def exchange(self, request: Any) -> SyncExchangeResponse:
        return self.responses.pop(0) if self.responses else SyncExchangeResponse()


def device(applier_type: type[OneAtATime], responses: list[SyncExchangeResponse], refuse: Collection[str] = (),
           held: Sequence[AppSyncableRowEntry] = ()) -> tuple[Any, MemoryAppSource, list[ChangeEvent]]:
    source = MemoryAppSource([NOTES])
    for e in held:
        source.applier.apply(e)
    source.applier = applier_type(source.applier, refuse)  # type: ignore[assignment]
    storage = MemoryObjectStorage()
    storage.put("notes/held-blob", b"abc")
    engine = create_sync_engine(local_database=None, local_storage=storage, remote_storage=MemoryObjectStorage(),
                                transport=Pages(responses), clock=HLCClock("me", wall_clock=lambda: BASE),
                                app_source=source, sync_shared_records=False, app_id=APP)
    events: list[ChangeEvent] = []
    engine.change_notifier.subscribe(events.append)
    return engine, source, events


def page() -> tuple[list[AppSyncableRowEntry], list[AppSyncableRowEntry]]:
    held = [note("h1", hlc(10, "alpha"), "held"), note("h2", hlc(30, "beta"), "held, newer")]
    entries = [
        note("n1", hlc(11, "alpha"), "new"),
        note("h1", hlc(12, "alpha"), "newer"),
        note("h2", hlc(13, "alpha"), "older: loses"),
        note("h1", hlc(12, "alpha"), "newer"),  # the same version again
        note("n2", hlc(14, "alpha"), op="delete"),
        file_row("f1", hlc(15, "alpha"), "notes/wanted-blob"),
        file_row("f2", hlc(16, "alpha"), "notes/held-blob"),
        note("x1", hlc(17, "alpha"), "refused by the applier"),
        note("n3", hlc(18, "alpha"), "after the refusal"),
        AppSyncableRowEntry(hlc(19, "alpha"), APP, "nowhere", "insert", {"id": "u"}, None),
        note("b1", hlc(20, "beta"), "another node"),
        AppSyncableRowEntry(hlc(21, "beta"), APP, "nowhere", "insert", {"id": "u"}, None),  # halts beta
        note("b2", hlc(22, "beta"), "after beta's refusal"),
        file_row("g1", hlc(23, "gamma"), "notes/gamma-blob"),
        note("g2", hlc(24, "gamma"), op="delete"),
    ]
    return held, entries


def outcome(engine: Any, source: MemoryAppSource, events: list[ChangeEvent], results: list[Any]) -> dict[str, Any]:
    return {
        "results": [(r.applied, r.received, r.refused, r.staged, sorted(e.ref for e in r.staged_failing))
                    for r in results],
        "own": engine.sync_state.get_watermarks(),
        "peer": engine.sync_state.get_peer_watermarks(),
        "clock": engine.clock.state,
        "rows": sorted(map(repr, source.rows(APP, "notes"))),
        "files": sorted(map(repr, source.rows(APP, FILE_RECORDS_TABLE))),
        "coverage": source.applier.get_node_watermarks(APP, "notes"),
        "staged": sorted((e.ref, e.key, e.wanted) for e in engine.blob_state.staged_blobs()),
        "events": [(e.event_type, e.record_ids, e.timestamp) for e in events],
    }


@pytest.mark.parametrize("refuse", [(), ("x1",)], ids=["nothing refused", "the applier refuses one"])
def test_a_round_through_apply_many_ends_as_one_entry_at_a_time(refuse: tuple[str, ...]) -> None:
    held, entries = page()
    theirs = {"alpha": hlc(40, "alpha"), "beta": hlc(40, "beta"), "gamma": hlc(40, "gamma")}
    outcomes = []
    for kind in (OneAtATime, Batched):
        responses = [SyncExchangeResponse(app_syncable_rows=entries, responder_watermarks=theirs)]
        engine, source, events = device(kind, responses, refuse, held)
        assert isinstance(source.applier, BatchApplier) is (kind is Batched)
        outcomes.append(outcome(engine, source, events, [engine.exchange(), engine.exchange()]))
    assert outcomes[0] == outcomes[1]
    got = outcomes[1]
    refused = got["results"][0][2]
    # One refusal halts alpha (x1, else the unknown table after n3), one halts beta; gamma lands whole.
    assert len(refused) == 2 and ("x1" in refused[0]) is bool(refuse)
    assert sorted(key for _, key, _ in got["staged"]) == ["notes/gamma-blob", "notes/wanted-blob"]
    assert got["own"]["beta"] == hlc(20, "beta") and got["own"]["gamma"] == hlc(40, "gamma")


def test_a_clock_skew_refusal_halts_the_node_where_one_at_a_time_halts_it() -> None:
    held, _ = page()
    far = HLCTimestamp(BASE + 10**9, 0, "alpha")  # far beyond the clock's skew bound
    entries = [note("n1", hlc(11, "alpha")), note("n2", far), note("n3", HLCTimestamp(far[0] + 1, 0, "alpha")),
               note("b1", hlc(12, "beta"))]
    outcomes = []
    for kind in (OneAtATime, Batched):
        engine, source, events = device(kind, [SyncExchangeResponse(app_syncable_rows=entries)], (), held)
        outcomes.append(outcome(engine, source, events, [engine.exchange()]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1]["own"]["alpha"] == hlc(11, "alpha") and outcomes[1]["own"]["beta"] == hlc(12, "beta")
    assert len(outcomes[1]["results"][0][2]) == 1


# -- shared records: a node's run goes to ``DatabaseAdapter.merge`` in one call ------------------------


def record(id: str, stamp: HLCTimestamp, key: str = "", label: str | None = None) -> DataRecord:
    return DataRecord(id=id, type="image/jpeg", created_at=stamp, updated_at=stamp,
                      content_hash="ab" * 32 if key else "", object_storage_key=key, size_bytes=3 if key else 0,
                      origin_app_id="photos", label=label)


class RefusingDatabase(MemoryDatabaseAdapter):
    """A memory database that refuses (ValueError, nothing written) any call holding an id in ``refuse``."""

    def __init__(self, refuse: Collection[str]) -> None:
        super().__init__()
        self.refuse = set(refuse)
        self.calls: list[int] = []

    def merge(self, records: Sequence[DataRecord]) -> list[bool]:
        self.calls.append(len(records))
        bad = [r.id for r in records if r.id in self.refuse]
        if bad:
            raise ValueError(f"record {bad[0]} refused by the database")
        return super().merge(records)


def record_device(one_by_one: bool, responses: list[SyncExchangeResponse], refuse: Collection[str] = (),
                  held: Sequence[DataRecord] = ()) -> tuple[Any, RefusingDatabase, list[ChangeEvent]]:
    database = RefusingDatabase(refuse)
    for r in held:
        database.put(r)
    storage = MemoryObjectStorage()
    storage.put("shared/image/ab/held", b"abc")
    engine = create_sync_engine(local_database=database, local_storage=storage, remote_storage=MemoryObjectStorage(),
                                transport=Pages(responses), clock=HLCClock("me", wall_clock=lambda: BASE))
    if one_by_one:
        engine._apply_run = engine._apply_one_by_one  # the reference: one record per merge call
    events: list[ChangeEvent] = []
    engine.change_notifier.subscribe(events.append)
    return engine, database, events


def record_outcome(engine: Any, database: RefusingDatabase, events: list[ChangeEvent],
                   results: list[Any]) -> dict[str, Any]:
    return {
        "results": [(r.applied, r.received, r.refused, r.staged) for r in results],
        "own": engine.sync_state.get_watermarks(),
        "peer": engine.sync_state.get_peer_watermarks(),
        "clock": engine.clock.state,
        "records": sorted(map(repr, database.all())),
        "coverage": database.get_node_watermarks(),
        "staged": sorted((e.ref, e.key, e.wanted) for e in engine.blob_state.staged_blobs()),
        "events": [(e.event_type, e.record_ids, e.timestamp) for e in events],
    }


def record_page() -> tuple[list[DataRecord], list[DataRecord]]:
    held = [record("h1", hlc(10, "alpha"), label="held"), record("h2", hlc(30, "beta"), label="held, newer")]
    records = [
        record("n1", hlc(11, "alpha"), label="new"),
        record("h1", hlc(12, "alpha"), label="newer"),
        record("h2", hlc(13, "alpha"), label="older: loses"),
        record("f1", hlc(15, "alpha"), "shared/image/ab/wanted"),
        record("f2", hlc(16, "alpha"), "shared/image/ab/held"),
        record("x1", hlc(17, "alpha"), label="the database may refuse it"),
        record("n3", hlc(18, "alpha"), label="after it"),
        record("b1", hlc(20, "beta"), "shared/image/ab/beta"),
        record("g1", hlc(23, "gamma"), label="gamma"),
    ]
    return held, records


@pytest.mark.parametrize("refuse", [(), ("x1",)], ids=["nothing refused", "the database refuses one"])
def test_a_round_merging_a_node_run_at_once_ends_as_one_record_at_a_time(refuse: tuple[str, ...]) -> None:
    held, records = record_page()
    theirs = {"alpha": hlc(40, "alpha"), "beta": hlc(40, "beta"), "gamma": hlc(40, "gamma")}
    outcomes, calls = [], []
    for one_by_one in (True, False):
        responses = [SyncExchangeResponse(records=records, responder_watermarks=theirs)]
        engine, database, events = record_device(one_by_one, responses, refuse, held)
        outcomes.append(record_outcome(engine, database, events, [engine.exchange(), engine.exchange()]))
        calls.append(database.calls)
    assert outcomes[0] == outcomes[1]
    got = outcomes[1]
    # One call per node's run (alpha, beta, gamma); a refusal adds alpha's run again, a record at a time.
    assert calls[1][:3] == [7, 1, 1] and (calls[1][3:] == [1] * 6) is bool(refuse)
    refused = got["results"][0][2]
    assert len(refused) == len(refuse) and all("x1" in r for r in refused)
    assert got["own"]["alpha"] == (hlc(16, "alpha") if refuse else hlc(40, "alpha"))
    assert got["own"]["beta"] == hlc(40, "beta") and got["own"]["gamma"] == hlc(40, "gamma")
    assert sorted(key for _, key, _ in got["staged"]) == ["shared/image/ab/beta", "shared/image/ab/wanted"]


def test_a_clock_skew_refusal_halts_a_record_run_where_one_at_a_time_halts_it() -> None:
    far = HLCTimestamp(BASE + 10**9, 0, "alpha")  # far beyond the clock's skew bound
    records = [record("n1", hlc(11, "alpha")), record("n2", far), record("n3", HLCTimestamp(far[0] + 1, 0, "alpha")),
               record("b1", hlc(12, "beta"))]
    outcomes = []
    for one_by_one in (True, False):
        engine, database, events = record_device(one_by_one, [SyncExchangeResponse(records=records)])
        outcomes.append(record_outcome(engine, database, events, [engine.exchange()]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1]["own"]["alpha"] == hlc(11, "alpha") and outcomes[1]["own"]["beta"] == hlc(12, "beta")
    assert [r.id for r in engine.local_database.all()] == ["n1", "b1"]
    assert len(outcomes[1]["results"][0][2]) == 1
