"""``OrmApplier.apply_many``: a node's run of app rows applied in one transaction, with ``apply``'s results."""

from __future__ import annotations

import random
from typing import Any

import pytest

from starkeep_sync.adapters.orm import OrmAppSource
from starkeep_sync.core.approws import EntryRefused
from starkeep_sync.core.constants import FILE_RECORDS_TABLE
from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.records import AppSyncableRowEntry
from starkeep_sync.models import AppRow, FileRecord

from .support import BASE_MS

pytestmark = pytest.mark.django_db


def row_entry(row_id: str, wall: int, op: str = "insert", node: str = "nodeA", **row: Any) -> AppSyncableRowEntry:
    ts = HLCTimestamp(BASE_MS + wall, 0, node)
    if op == "update":
        return AppSyncableRowEntry(ts, "notes", "notes", "update", row, {"id": row_id})
    if op == "delete":
        return AppSyncableRowEntry(ts, "notes", "notes", "delete", None, {"id": row_id})
    return AppSyncableRowEntry(ts, "notes", "notes", "insert", {"id": row_id, **row}, None)


def file_entry(row_id: str, wall: int, **row: Any) -> AppSyncableRowEntry:
    ts = HLCTimestamp(BASE_MS + wall, 0, "nodeA")
    return AppSyncableRowEntry(ts, "notes", FILE_RECORDS_TABLE, "insert", {"id": row_id, **row}, None)


def test_a_batch_stops_at_its_first_refused_entry_and_keeps_what_came_before(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    batch = [
        row_entry("n1", 1, body="one"),
        file_entry("f1", 2, size_bytes=3, object_storage_key=None),
        file_entry("f2", 3, size_bytes="three"),  # refused: size_bytes is not an integer
        row_entry("n2", 4, body="after the refusal"),
    ]
    landed, applied, error = source.applier.apply_many(batch)
    assert (landed, applied) == (2, 2)
    assert isinstance(error, EntryRefused) and "size_bytes" in str(error)
    assert list(AppRow.objects.values_list("data__id", flat=True)) == ["n1"]
    assert list(FileRecord.objects.values_list("record_id", flat=True)) == ["f1"]
    # Coverage reaches the last entry taken in, not the refused one.
    assert source.applier.get_node_watermarks("notes", FILE_RECORDS_TABLE) == {"nodeA": batch[1].timestamp}


def test_later_entries_of_a_batch_see_the_earlier_ones(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    batch = [
        row_entry("n1", 1, body="first", tag="a"),
        row_entry("n1", 2, op="update", body="patched"),
        row_entry("n1", 0, body="older insert loses"),
        row_entry("n2", 3, body="two"),
        row_entry("n2", 4, op="delete"),
        row_entry("n3", 5, op="update", body="update of a row not held is dropped"),
    ]
    landed, applied, error = source.applier.apply_many(batch)
    assert (landed, applied, error) == (6, 4, None)
    n1 = source.applier.get_row("notes", "notes", ["n1"])
    assert n1 is not None and n1["body"] == "patched" and n1["tag"] == "a"
    n2 = source.applier.get_row("notes", "notes", ["n2"])
    assert n2 is not None and n2["deleted_at"] == n2["updated_at"]
    assert source.applier.get_row("notes", "notes", ["n3"]) is None
    assert AppRow.objects.count() == 2


def test_a_key_too_long_for_its_column_refuses_that_entry_only(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    long_id = "x" * 2000  # row_key is varchar(1024): refused by the core's key rule on every database
    batch = [row_entry("n1", 1, body="one"), row_entry(long_id, 2, body="long"), row_entry("n3", 3, body="three")]
    landed, applied, error = source.applier.apply_many(batch)
    assert (landed, applied) == (1, 1) and isinstance(error, EntryRefused)
    assert "longer than 1024" in str(error)
    assert list(AppRow.objects.values_list("data__id", flat=True)) == ["n1"]


def test_apply_many_ends_where_apply_one_by_one_ends(alice: Any, bob: Any, notes_app: Any) -> None:
    rng = random.Random(7)
    batch = []
    for i in range(300):
        row_id = f"n{rng.randrange(25)}"
        op = rng.choice(["insert", "insert", "update", "delete"])
        fields = {} if op == "delete" else {"body": f"v{i}", "n": rng.randrange(100)}
        batch.append(row_entry(row_id, rng.randrange(200), op, node=rng.choice(["nodeA", "nodeB"]), **fields))
    one_by_one, batched = OrmAppSource(alice), OrmAppSource(bob)
    applied_singly = sum(one_by_one.applier.apply(e) for e in batch)
    landed, applied, error = batched.applier.apply_many(batch)
    assert (landed, applied, error) == (len(batch), applied_singly, None)
    assert sorted(batched.applier.rows("notes", "notes"), key=lambda r: r["id"]) == sorted(
        one_by_one.applier.rows("notes", "notes"), key=lambda r: r["id"])
    assert batched.applier.get_node_watermarks("notes", "notes") == one_by_one.applier.get_node_watermarks(
        "notes", "notes")


def test_a_batch_stores_json_values_exactly(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    values = {"big": 2**70, "neg": -(2**63), "float": 1.5, "text": "ü \u2028 \"q\" \\", "nested": [{"a": None}, []],
              "empty": {}, "t": True}
    batch = [row_entry("n1", 1, **values), row_entry("n2", 2, body="plain")]
    assert source.applier.apply_many(batch) == (2, 2, None)
    stored = {r["id"]: r for r in source.applier.rows("notes", "notes")}
    assert {k: stored["n1"][k] for k in values} == values
    assert stored["n2"]["body"] == "plain"
    # Read through the ORM model as well: the column holds what Django's JSONField reads.
    assert AppRow.objects.get(row_key='["n1"]').data["big"] == 2**70


def test_whole_rows_of_distinct_keys_land_as_applied_one_by_one(alice: Any, bob: Any, notes_app: Any) -> None:
    # Inserts and scanned tombstones (the whole row, no where) of distinct keys: one upsert per table,
    # with the stored rows (some newer, some older, some equal) deciding in SQL which are written.
    rng = random.Random(11)
    one_by_one, batched = OrmAppSource(alice), OrmAppSource(bob)
    held = []
    for i in range(60):
        held.append(row_entry(f"n{i}", rng.randrange(100), body=f"held {i}"))
        held.append(file_entry(f"f{i}", rng.randrange(100), size_bytes=i, extra={"held": i}))
    for source in (one_by_one, batched):
        assert source.applier.apply_many(held) == (len(held), len(held), None)
    batch = []
    for i in rng.sample(range(80), 50):
        wall = rng.randrange(100)
        if rng.random() < 0.3:
            ts = HLCTimestamp(BASE_MS + wall, 0, "nodeB")
            batch.append(AppSyncableRowEntry(ts, "notes", "notes", "delete",
                                             {"id": f"n{i}", "body": "gone", "deleted_at": None}, None))
        else:
            batch.append(row_entry(f"n{i}", wall, node="nodeB", body=f"new {i}"))
        batch.append(file_entry(f"f{i}", rng.randrange(100), size_bytes=2**40 + i, mime_type="text/plain"))
    rng.shuffle(batch)
    singly: list[AppSyncableRowEntry] = [e for e in batch if one_by_one.applier.apply(e)]
    written: list[AppSyncableRowEntry] = []
    assert batched.applier.apply_many(batch, written) == (len(batch), len(singly), None)
    assert written == singly and 0 < len(singly) < len(batch)
    for table in ("notes", FILE_RECORDS_TABLE):
        assert sorted(batched.applier.rows("notes", table), key=lambda r: r["id"]) == sorted(
            one_by_one.applier.rows("notes", table), key=lambda r: r["id"])
        assert batched.applier.get_node_watermarks("notes", table) == one_by_one.applier.get_node_watermarks(
            "notes", table)


def test_whole_rows_written_with_the_same_key_twice_count_as_applied_one_by_one(alice: Any, notes_app: Any) -> None:
    source = OrmAppSource(alice)
    batch = [row_entry("n1", 1, body="one"), row_entry("n1", 2, body="two"), row_entry("n1", 2, body="same stamp")]
    written: list[AppSyncableRowEntry] = []
    assert source.applier.apply_many(batch, written) == (3, 2, None)
    assert written == batch[:2]
    row = source.applier.get_row("notes", "notes", ["n1"])
    assert row is not None and row["body"] == "two"
