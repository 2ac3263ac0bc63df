"""The adapter contract, written once: every store's test class inherits these behaviour tests.

A store's test class subclasses :class:`DatabaseAdapterContract` and provides a
``database`` fixture (a fresh, empty shared-record adapter), and subclasses
:class:`AppSourceContract` and provides an ``app_source`` fixture (a fresh app
source with :data:`NOTES` registered) and an ``other_app_source`` fixture (a
second one, apart from the first: the batch path is compared with one entry at
a time). Nothing here knows which store it runs on.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from msgspec.structs import replace

from starkeep_sync.core.approws import check_entry
from starkeep_sync.core.channel import ChannelView
from starkeep_sync.core.exceptions import SyncError
from starkeep_sync.core.hlc import HLCTimestamp, serialize_hlc
from starkeep_sync.core.protocols import (
    AppSource,
    BatchApplier,
    DatabaseAdapter,
    RecordCounter,
    RowCounter,
    RowReader,
    WireRecordReader,
    WireRowScanner,
)
from starkeep_sync.core.records import AppSyncableNamespace, AppSyncableRowEntry, AppSyncableTableInfo, DataRecord
from starkeep_sync.core.watermarks import advance_watermarks
from starkeep_sync.core.wire import entry_to_wire, record_to_wire

BASE = 1_700_000_000_000
APP = "notes"
NOTES = AppSyncableNamespace(APP, [AppSyncableTableInfo("notes", ["id"]),
                                   AppSyncableTableInfo("tags", ["note", "tag"])])
#: Node ids whose order differs between code points and a locale collation (upper case, '-' and '_').
NODES = ("Zulu", "alpha", "b-1", "b_1", "beta", "cloud", "local")


def hlc(wall: int, node: str, counter: int = 0) -> HLCTimestamp:
    return HLCTimestamp(BASE + wall, counter, node)


def rec(id: str, stamp: HLCTimestamp, **fields: Any) -> DataRecord:
    return DataRecord(id=id, type="text/plain", created_at=stamp, updated_at=stamp, content_hash="0" * 64,
                      object_storage_key="", size_bytes=0, origin_app_id="conformance", **fields)


def tombstone(r: DataRecord, stamp: HLCTimestamp) -> DataRecord:
    return replace(r, updated_at=stamp, deleted_at=stamp, version=r.version + 1)


def interleaved(per_node: int = 9) -> list[DataRecord]:
    """Records of every node, interleaved in HLC order, with ties in (wall, counter) broken by node id."""
    out = []
    for k, node in enumerate(NODES):
        for i in range(per_node):
            out.append(rec(f"{node}-{i:03d}", hlc(i * 3 + k % 3, node, counter=k % 2)))
    random.Random(7).shuffle(out)
    return out


def page_all_by_cursor(db: DatabaseAdapter, watermarks: dict[str, HLCTimestamp], limit: int,
                       exclude: set[tuple[str, HLCTimestamp]] | None = None) -> list[DataRecord]:
    """Every record above ``watermarks`` through ``query_since`` pages; checks hasMore on each page."""
    out: list[DataRecord] = []
    cursor = None
    for _ in range(10_000):
        page = db.query_since(watermarks, limit, cursor, exclude=exclude)
        assert len(page.records) <= limit
        out.extend(page.records)
        if not page.has_more:
            assert page.next_cursor is None
            return out
        assert len(page.records) == limit and page.next_cursor
        cursor = page.next_cursor
    raise AssertionError("paging did not end")


def above(records: list[DataRecord], watermarks: dict[str, HLCTimestamp]) -> list[DataRecord]:
    """What a store holding ``records`` (one version each) must list above ``watermarks``, in order."""
    return sorted((r for r in records if r.updated_at > watermarks.get(r.updated_at.node_id, HLCTimestamp(0, 0, ""))),
                  key=lambda r: r.updated_at)


class DatabaseAdapterContract:
    """Behaviour every ``DatabaseAdapter`` (shared records) must show."""

    # -- LWW ---------------------------------------------------------------------

    def test_a_strictly_greater_hlc_wins_and_an_older_one_loses(self, database: DatabaseAdapter) -> None:
        first = rec("r1", hlc(10, "alpha"), label="first")
        newer = replace(first, updated_at=hlc(20, "beta"), label="newer", version=2)
        older = replace(first, updated_at=hlc(15, "alpha"), label="older", version=2)
        assert database.merge([first]) == [True]
        assert database.merge([newer]) == [True]
        assert database.merge([older]) == [False]
        assert database.get("r1") == newer

    def test_an_equal_hlc_is_a_no_op(self, database: DatabaseAdapter) -> None:
        r = rec("r1", hlc(10, "alpha"), label="kept")
        database.merge([r])
        assert database.merge([replace(r, label="other content, same stamp")]) == [False]
        assert database.get("r1") == r

    def test_a_replay_is_a_no_op_and_lists_nothing_twice(self, database: DatabaseAdapter) -> None:
        batch = [rec(f"r{i}", hlc(i, "alpha")) for i in range(5)]
        assert database.merge(batch) == [True] * 5
        assert database.merge(batch) == [False] * 5
        page = database.query_since({}, 100)
        assert page.records == batch and page.has_more is False

    def test_two_versions_in_one_batch_keep_the_later(self, database: DatabaseAdapter) -> None:
        v1 = rec("r1", hlc(10, "alpha"), label="v1")
        v2 = replace(v1, updated_at=hlc(11, "alpha"), label="v2", version=2)
        assert database.merge([v2, v1]) == [True, False]
        assert database.get("r1") == v2
        assert database.query_since({}, 10).records == [v2]

    def test_losers_are_counted_in_coverage(self, database: DatabaseAdapter) -> None:
        database.merge([rec("r1", hlc(50, "alpha"))])
        loser = rec("r1", hlc(10, "beta"), label="late and old")
        replay = rec("r1", hlc(50, "alpha"))
        assert database.merge([loser, replay]) == [False, False]
        assert database.get_node_watermarks() == {"alpha": hlc(50, "alpha"), "beta": hlc(10, "beta")}
        # Coverage only moves up.
        database.merge([rec("r2", hlc(5, "beta"))])
        assert database.get_node_watermarks()["beta"] == hlc(10, "beta")

    # -- tombstones ------------------------------------------------------------------

    def test_a_tombstone_for_an_unknown_record_is_stored_and_an_older_write_cannot_resurrect_it(
        self, database: DatabaseAdapter
    ) -> None:
        live = rec("r1", hlc(10, "alpha"))
        dead = tombstone(live, hlc(20, "beta"))
        assert database.merge([dead]) == [True]
        assert database.merge([live]) == [False]
        assert database.get("r1") == dead
        assert database.query_since({}, 10).records == [dead]

    def test_delete_of_a_held_record_is_a_new_version_listed_once(self, database: DatabaseAdapter) -> None:
        r = rec("r1", hlc(10, "alpha"))
        database.put(r)
        dead = database.delete("r1", hlc(30, "alpha"))
        assert dead is not None and dead.deleted_at == dead.updated_at == hlc(30, "alpha")
        assert dead.version == r.version + 1
        assert database.query_since({}, 10).records == [dead]
        assert database.delete("unknown", hlc(40, "alpha")) is None

    # -- re-put at the same HLC (issue #16) ---------------------------------------------

    def test_a_record_put_again_at_the_same_hlc_is_listed_once(self, database: DatabaseAdapter) -> None:
        batch = [rec(f"r{i:04d}", hlc(i, "alpha")) for i in range(201)]
        for r in batch:
            database.put(r)
        for r in batch:
            database.put(replace(r, label="re-put"))
        page = database.query_since({}, 1000)
        assert [r.id for r in page.records] == [r.id for r in batch] and page.has_more is False
        assert all(r.label == "re-put" for r in page.records)
        if isinstance(database, RecordCounter):
            assert database.count_since({}) == 201

    def test_an_older_version_put_back_is_listed_once(self, database: DatabaseAdapter) -> None:
        v1 = rec("r1", hlc(10, "alpha"))
        v2 = replace(v1, updated_at=hlc(20, "alpha"), version=2)
        for r in (v1, v2, v1):  # ``put`` is unconditional: a local restore
            database.put(r)
        assert database.query_since({}, 10).records == [v1]

    # -- exclude ----------------------------------------------------------------------

    def test_exclude_leaves_out_exactly_those_versions_and_has_more_stays_exact(
        self, database: DatabaseAdapter
    ) -> None:
        records = [rec(f"r{i}", hlc(i, NODES[i % 3])) for i in range(6)]
        database.merge(records)
        gone = {(records[1].id, records[1].updated_at), (records[4].id, records[4].updated_at)}
        page = database.query_since({}, 4, exclude=gone)
        assert page.records == [records[i] for i in (0, 2, 3, 5)] and page.has_more is False
        page = database.query_since({}, 3, exclude=gone)
        assert page.records == [records[i] for i in (0, 2, 3)] and page.has_more is True
        # Another version of an id is not excluded by naming this one.
        other = {(records[2].id, hlc(99, NODES[2]))}
        assert database.query_since({}, 10, exclude=other).records == records
        # Pages through a cursor keep leaving them out.
        assert page_all_by_cursor(database, {}, 1, gone) == [records[i] for i in (0, 2, 3, 5)]

    def test_exclude_everything_of_a_node(self, database: DatabaseAdapter) -> None:
        mine = [rec(f"a{i}", hlc(i, "alpha")) for i in range(20)]
        theirs = [rec(f"b{i}", hlc(100 + i, "beta")) for i in range(3)]
        database.merge(mine + theirs)
        page = database.query_since({}, 2, exclude={(r.id, r.updated_at) for r in mine})
        assert page.records == theirs[:2] and page.has_more is True
        page = database.query_since({}, 3, exclude={(r.id, r.updated_at) for r in mine})
        assert page.records == theirs and page.has_more is False

    def test_excluding_part_of_a_merge_still_lists_the_rest(self, database: DatabaseAdapter) -> None:
        # A store may know what its last merge stored (the ORM does, in a transaction); excluding only
        # some of it must not hide the others.
        batch = [rec(f"a{i}", hlc(i, "alpha")) for i in range(5)]
        database.merge(batch)
        page = database.query_since({}, 10, exclude={(batch[2].id, batch[2].updated_at)})
        assert page.records == [batch[i] for i in (0, 1, 3, 4)] and page.has_more is False

    # -- paging ------------------------------------------------------------------------

    def test_cursor_paging_across_many_nodes_lists_every_record_once_in_hlc_order(
        self, database: DatabaseAdapter
    ) -> None:
        records = interleaved()
        database.merge(records)
        expected = above(records, {})
        for limit in (1, 2, 3, 7, len(records) - 1, len(records), len(records) + 1):
            assert page_all_by_cursor(database, {}, limit) == expected, limit
        w = {"alpha": hlc(12, "alpha", 1), "Zulu": hlc(100, "Zulu"), "nobody": hlc(5, "nobody")}
        assert page_all_by_cursor(database, w, 4) == above(records, w)

    def test_a_requester_advancing_its_vector_gets_every_record_once_and_exact_has_more(
        self, database: DatabaseAdapter
    ) -> None:
        records = interleaved()
        database.merge(records)
        for limit in (1, 4, 10):
            w: dict[str, HLCTimestamp] = {}
            seen: list[DataRecord] = []
            while True:
                page = database.query_since(w, limit)
                seen.extend(page.records)
                w = advance_watermarks(w, (r.updated_at for r in page.records))
                if not page.has_more:
                    break
                assert len(page.records) == limit
            assert seen == above(records, {})
            assert database.query_since(w, limit).records == []

    def test_has_more_is_exact_at_the_limit(self, database: DatabaseAdapter) -> None:
        records = [rec(f"r{i}", hlc(i, NODES[i % 2])) for i in range(4)]
        database.merge(records)
        assert database.query_since({}, 4).has_more is False
        assert database.query_since({}, 3).has_more is True
        assert database.query_since({NODES[0]: records[2].updated_at}, 3).has_more is False

    def test_a_covered_requester_gets_nothing(self, database: DatabaseAdapter) -> None:
        database.merge(interleaved(3))
        page = database.query_since(database.get_node_watermarks(), 10)
        assert page.records == [] and page.has_more is False

    def test_query_lists_everything_in_hlc_order(self, database: DatabaseAdapter) -> None:
        records = interleaved(2)
        database.merge(records)
        out, cursor = [], None
        while True:
            page = database.query(5, cursor)
            out.extend(page.records)
            if not page.has_more:
                break
            cursor = page.next_cursor
        assert out == above(records, {})

    # -- counts and wire form ------------------------------------------------------------

    def test_count_since_counts_what_query_since_lists(self, database: DatabaseAdapter) -> None:
        assert isinstance(database, RecordCounter)
        records = interleaved()
        database.merge(records)
        database.merge([tombstone(records[0], hlc(500, "local"))])
        for w in ({}, {"alpha": hlc(12, "alpha")}, {"beta": hlc(0, "beta"), "local": hlc(400, "local")},
                  database.get_node_watermarks()):
            assert database.count_since(w) == len(page_all_by_cursor(database, w, 1000))

    def test_wire_reads_equal_the_built_records(self, database: DatabaseAdapter) -> None:
        if not isinstance(database, WireRecordReader):
            return  # optional capability; nothing to hold this store to
        records = interleaved(3)
        database.merge(records)
        gone = {(records[0].id, records[0].updated_at)}
        for limit in (1, 5, 100):
            page = database.query_since({}, limit, exclude=gone)
            assert database.query_wire_since({}, limit, gone) == ([record_to_wire(r) for r in page.records],
                                                                   page.has_more)


def row(note: str, stamp: HLCTimestamp, body: str = "", op: str = "insert", table: str = "notes",
        **extra: Any) -> AppSyncableRowEntry:
    if op == "delete":
        return AppSyncableRowEntry(stamp, APP, table, "delete", None, {"id": note})
    data: dict[str, Any] = {"id": note, "body": body, **extra} if table == "notes" else {"note": note, **extra}
    data["updated_at"] = serialize_hlc(stamp)
    return AppSyncableRowEntry(stamp, APP, table, op, data, None)


def scan_all(source: AppSource, table: str, since: dict[str, HLCTimestamp], limit: int,
             exclude: set[tuple[tuple[Any, ...], HLCTimestamp]] | None = None) -> list[AppSyncableRowEntry]:
    out: list[AppSyncableRowEntry] = []
    cursor = None
    for _ in range(10_000):
        page = source.applier.scan_since(APP, table, since, limit, cursor, exclude=exclude)
        assert len(page.rows) <= limit
        out.extend(page.rows)
        if not page.has_more:
            return out
        assert len(page.rows) == limit and page.next_cursor
        cursor = page.next_cursor
    raise AssertionError("paging did not end")


class AppSourceContract:
    """Behaviour every app source (namespaces plus applier) must show, on :data:`NOTES`."""

    def test_lww_for_rows(self, app_source: AppSource) -> None:
        apply = app_source.applier.apply
        assert apply(row("n1", hlc(10, "alpha"), "first")) is True
        assert apply(row("n1", hlc(20, "beta"), "newer")) is True
        assert apply(row("n1", hlc(15, "alpha"), "older")) is False
        assert apply(row("n1", hlc(20, "beta"), "equal stamp, other body")) is False
        assert apply(row("n1", hlc(20, "beta"), "newer")) is False  # replay
        rows = scan_all(app_source, "notes", {}, 10)
        assert [(e.row or {}).get("body") for e in rows] == ["newer"]
        assert rows[0].timestamp == hlc(20, "beta") and rows[0].op == "insert"

    def test_losers_are_counted_in_coverage(self, app_source: AppSource) -> None:
        apply = app_source.applier.apply
        apply(row("n1", hlc(50, "alpha")))
        assert apply(row("n1", hlc(10, "beta"), "late and old")) is False
        assert app_source.applier.get_node_watermarks(APP, "notes") == {"alpha": hlc(50, "alpha"),
                                                                         "beta": hlc(10, "beta")}
        assert app_source.applier.get_node_watermarks(APP, "tags") == {}

    def test_a_delete_of_an_unknown_row_stores_a_tombstone_no_older_write_resurrects(
        self, app_source: AppSource
    ) -> None:
        apply = app_source.applier.apply
        assert apply(row("n1", hlc(20, "beta"), op="delete")) is True
        assert apply(row("n1", hlc(10, "alpha"), "older insert")) is False
        rows = scan_all(app_source, "notes", {}, 10)
        assert len(rows) == 1 and rows[0].op == "delete" and rows[0].timestamp == hlc(20, "beta")
        assert (rows[0].row or {}).get("deleted_at") == serialize_hlc(hlc(20, "beta"))
        if isinstance(app_source.applier, RowReader):
            stored = app_source.applier.get_row(APP, "notes", ["n1"])
            assert stored is not None and stored["deleted_at"] == stored["updated_at"] == serialize_hlc(hlc(20, "beta"))

    def test_a_row_applied_again_at_the_same_hlc_is_listed_once(self, app_source: AppSource) -> None:
        entries = [row(f"n{i:03d}", hlc(i, "alpha")) for i in range(50)]
        for e in entries + entries:
            app_source.applier.apply(e)
        assert [e.timestamp for e in scan_all(app_source, "notes", {}, 1000)] == [e.timestamp for e in entries]

    def test_exclude_leaves_out_exactly_those_versions(self, app_source: AppSource) -> None:
        entries = [row(f"n{i}", hlc(i, NODES[i % 3])) for i in range(6)]
        for e in entries:
            app_source.applier.apply(e)
        gone = {(("n1",), entries[1].timestamp), (("n4",), entries[4].timestamp), (("n2",), hlc(99, NODES[2]))}
        page = app_source.applier.scan_since(APP, "notes", {}, 4, exclude=gone)
        assert [e.timestamp for e in page.rows] == [entries[i].timestamp for i in (0, 2, 3, 5)]
        assert page.has_more is False
        page = app_source.applier.scan_since(APP, "notes", {}, 3, exclude=gone)
        assert len(page.rows) == 3 and page.has_more is True
        assert [e.timestamp for e in scan_all(app_source, "notes", {}, 1, gone)] == [
            entries[i].timestamp for i in (0, 2, 3, 5)]

    def test_paging_across_many_nodes_and_two_tables(self, app_source: AppSource) -> None:
        stamps = []
        for k, node in enumerate(NODES):
            for i in range(6):
                stamp = hlc(i * 3 + k % 3, node, counter=k % 2)
                table = "notes" if (i + k) % 2 else "tags"
                e = row(f"{node}-{i}", stamp, table=table, tag=f"t{i}") if table == "tags" else \
                    row(f"{node}-{i}", stamp, f"body {i}")
                assert app_source.applier.apply(e) is True
                stamps.append((stamp, table))
        stamps.sort()
        for table in ("notes", "tags"):
            mine = [s for s, t in stamps if t == table]
            for limit in (1, 2, 5, 100):
                assert [e.timestamp for e in scan_all(app_source, table, {}, limit)] == mine
        # Across tables, as a responder pages a per-app channel: each row once, in HLC order, hasMore exact.
        channel = ChannelView(database=None, app_source=app_source, sync_shared_records=False, app_id=APP)
        for limit in (1, 3, 8):
            w: dict[str, HLCTimestamp] = {}
            seen = []
            while True:
                items, more = channel.changes_since(w, limit)
                wire = channel.wire_changes_since(w, limit)
                if wire is not None:
                    assert wire == ([entry_to_wire(i.entry) for i in items if i.entry is not None], more)
                seen.extend(i.hlc for i in items)
                w = advance_watermarks(w, (i.hlc for i in items))
                if not more:
                    break
                assert len(items) == limit
            assert seen == [s for s, _ in stamps]
            assert channel.changes_since(w, limit) == ([], False)
        assert channel.count_since({}) == len(stamps)

    def test_count_since_counts_what_scan_since_lists(self, app_source: AppSource) -> None:
        applier = app_source.applier
        assert isinstance(applier, RowCounter)
        for i in range(12):
            applier.apply(row(f"n{i}", hlc(i, NODES[i % 4])))
        applier.apply(row("n0", hlc(40, "local"), op="delete"))
        for w in ({}, {NODES[1]: hlc(5, NODES[1])}, applier.get_node_watermarks(APP, "notes")):
            assert applier.count_since(APP, "notes", w) == len(scan_all(app_source, "notes", w, 1000))
        assert applier.count_since(APP, "tags", {}) == 0

    def test_an_unknown_table_lists_nothing(self, app_source: AppSource) -> None:
        page = app_source.applier.scan_since(APP, "nowhere", {}, 10)
        assert page.rows == [] and page.has_more is False
        assert app_source.applier.get_node_watermarks(APP, "nowhere") == {}

    def test_wire_scans_equal_the_built_entries(self, app_source: AppSource) -> None:
        applier = app_source.applier
        if not isinstance(applier, WireRowScanner):
            return  # optional capability
        for i in range(5):
            applier.apply(row(f"n{i}", hlc(i, NODES[i % 2]), f"ü {i}", tags=["x", {"y": None}]))
        applier.apply(row("n3", hlc(30, "beta"), op="delete"))
        gone = {(("n1",), hlc(1, NODES[1]))}
        for limit in (1, 3, 10):
            page = applier.scan_since(APP, "notes", {}, limit, exclude=gone)
            wire, more = applier.scan_wire_since(APP, "notes", {}, limit, gone)
            assert [w for _, w in wire] == [entry_to_wire(e) for e in page.rows] and more == page.has_more


def mixed_page() -> tuple[list[AppSyncableRowEntry], list[AppSyncableRowEntry]]:
    """Rows held beforehand, and a page of entries of three nodes over them: everything LWW decides."""
    held = [row("h1", hlc(10, "alpha"), "held"), row("h2", hlc(10, "beta"), "held"),
            row("h3", hlc(30, "beta"), "held, newer than what comes"), row("h4", hlc(5, "alpha"), "held"),
            row("t1", hlc(10, "alpha"), table="tags", tag="a")]
    page = [
        row("n1", hlc(19, "alpha"), "new"),  # one HLC per write: scans order rows of equal HLC freely
        row("h1", hlc(20, "alpha"), "newer"),
        row("h1", hlc(20, "alpha"), "newer"),  # the same version put again
        row("h2", hlc(10, "alpha"), "a tie broken by node id: alpha < beta, loses"),
        row("h2", hlc(10, "beta"), "the same HLC as held, other body: loses"),
        row("h3", hlc(25, "Zulu"), "older: loses, still covered"),
        AppSyncableRowEntry(hlc(21, "alpha"), APP, "notes", "update", {"body": "patched"}, {"id": "n1"}),
        AppSyncableRowEntry(hlc(22, "alpha"), APP, "notes", "update", {"body": "no such row"}, {"id": "n9"}),
        row("h4", hlc(23, "beta"), op="delete"),
        row("h4", hlc(15, "alpha"), "older than the tombstone: loses"),
        row("n5", hlc(24, "Zulu"), op="delete"),  # a tombstone for a row never held
        AppSyncableRowEntry(hlc(26, "beta"), APP, "notes", "delete",
                            {"id": "n6", "body": "a scanned tombstone", "deleted_at": serialize_hlc(hlc(26, "beta")),
                             "updated_at": serialize_hlc(hlc(26, "beta"))}, None),
        row("n5", hlc(27, "alpha"), "written again after its tombstone"),
        row("t1", hlc(28, "beta"), table="tags", tag="a"),
        row("t2", hlc(29, "alpha"), table="tags", tag="b"),
        AppSyncableRowEntry(hlc(30, "alpha"), APP, "notes", "update", {"body": "patched twice"}, {"id": "n1"}),
    ]
    return held, page


def holdings(source: AppSource, keys: list[tuple[str, tuple[Any, ...]]]) -> dict[str, Any]:
    """Everything a store shows of :data:`NOTES`: scans, coverage and, when it reads rows, each row."""
    out: dict[str, Any] = {}
    for table in ("notes", "tags"):
        out[table] = [(e.timestamp, e.op, dict(e.row or {})) for e in scan_all(source, table, {}, 1000)]
        out[f"{table} coverage"] = source.applier.get_node_watermarks(APP, table)
    if isinstance(source.applier, RowReader):
        out["rows"] = {(t, pk): source.applier.get_row(APP, t, list(pk)) for t, pk in keys}
    return out


def assert_same_holdings(app_source: AppSource, other_app_source: AppSource,
                         entries: list[AppSyncableRowEntry]) -> None:
    """Both sources hold the same rows and coverage for every row ``entries`` touch."""
    info = {t.name: t for t in NOTES.tables}
    keys = sorted({(e.table, check_entry(e, info[e.table])) for e in entries})
    assert holdings(other_app_source, keys) == holdings(app_source, keys)


class BatchApplierContract:
    """``BatchApplier.apply_many`` gives what ``apply`` gives one entry at a time (every store has it)."""

    def test_apply_many_of_a_mixed_page_equals_applying_it_one_by_one(
        self, app_source: AppSource, other_app_source: AppSource
    ) -> None:
        one_by_one, batched = app_source.applier, other_app_source.applier
        assert isinstance(batched, BatchApplier)
        held, page = mixed_page()
        for e in held:
            assert one_by_one.apply(e) is True
            assert batched.apply(e) is True
        wrote = [one_by_one.apply(e) for e in page]
        # The same outcome whether the applier checks each entry or is handed the keys already checked.
        info = {t.name: t for t in NOTES.tables}
        written: list[AppSyncableRowEntry] = []
        first = batched.apply_many(page[:7], written)
        second = batched.apply_many(page[7:], written, [check_entry(e, info[e.table]) for e in page[7:]])
        assert first == (7, sum(wrote[:7]), None) and second == (len(page) - 7, sum(wrote[7:]), None)
        assert written == [e for e, w in zip(page, wrote, strict=True) if w]
        assert wrote == [True, True, False, False, False, False, True, False, True, False, True, True, True, True,
                         True, True]
        assert_same_holdings(app_source, other_app_source, held + page)

    def test_a_batch_of_whole_rows_over_held_ones_equals_applying_it_one_by_one(
        self, app_source: AppSource, other_app_source: AppSource
    ) -> None:
        """Inserts and scanned tombstones of distinct rows (a store may write those without reading)."""
        one_by_one, batched = app_source.applier, other_app_source.applier
        assert isinstance(batched, BatchApplier)
        held, page = mixed_page()
        info = {t.name: t for t in NOTES.tables}
        firsts: dict[tuple[str, tuple[Any, ...]], AppSyncableRowEntry] = {}
        for e in page:
            if e.op == "insert" or (e.op == "delete" and e.row and not e.where):
                firsts.setdefault((e.table, check_entry(e, info[e.table])), e)
        whole = list(firsts.values())
        for e in held:
            one_by_one.apply(e)
            batched.apply(e)
        wrote = [one_by_one.apply(e) for e in whole]
        assert True in wrote and False in wrote
        written: list[AppSyncableRowEntry] = []
        assert batched.apply_many(whole, written) == (len(whole), sum(wrote), None)
        assert written == [e for e, w in zip(whole, wrote, strict=True) if w]
        assert_same_holdings(app_source, other_app_source, held + whole)

    def test_one_entry_at_a_time_in_a_batch_ends_the_same(
        self, app_source: AppSource, other_app_source: AppSource
    ) -> None:
        one_by_one, batched = app_source.applier, other_app_source.applier
        assert isinstance(batched, BatchApplier)
        held, page = mixed_page()
        for e in held + page:
            one_by_one.apply(e)
        for e in held + page:
            batched.apply_many([e])
        assert_same_holdings(app_source, other_app_source, held + page)

    @pytest.mark.parametrize("bad", [
        AppSyncableRowEntry(hlc(40, "alpha"), APP, "nowhere", "insert", {"id": "x"}, None),
        AppSyncableRowEntry(hlc(40, "alpha"), APP, "notes", "insert", {"body": "no key"}, None),
        AppSyncableRowEntry(hlc(40, "alpha"), APP, "notes", "insert",
                            {"id": "x", "updated_at": serialize_hlc(hlc(41, "alpha"))}, None),
    ], ids=["unknown table", "no primary key", "updated_at disagrees"])
    def test_a_batch_stops_at_the_first_entry_apply_refuses(
        self, app_source: AppSource, other_app_source: AppSource, bad: AppSyncableRowEntry
    ) -> None:
        batched = other_app_source.applier
        assert isinstance(batched, BatchApplier)
        with pytest.raises((SyncError, ValueError)) as singly:
            app_source.applier.apply(bad)
        _, page = mixed_page()
        written: list[AppSyncableRowEntry] = []
        landed, applied, error = batched.apply_many([*page[:3], bad, *page[3:]], written)
        assert (landed, applied) == (3, 2) and written == [page[0], page[1]]
        assert type(error) is type(singly.value) and str(error) == str(singly.value)
        # Nothing after the refusal landed, and coverage stops before it.
        assert [e.timestamp for e in scan_all(other_app_source, "notes", {}, 100)] == [hlc(19, "alpha"),
                                                                                       hlc(20, "alpha")]
        assert batched.get_node_watermarks(APP, "notes") == {"alpha": hlc(20, "alpha")}
        assert batched.get_node_watermarks(APP, "tags") == {}
