"""Data classes of PROTOCOL §2."""

from __future__ import annotations

import pytest

from starkeep_sync.core.constants import FILE_RECORDS_TABLE
from starkeep_sync.core.hlc import HLCClock, HLCTimestamp
from starkeep_sync.core.records import (
    AppSyncableNamespace,
    AppSyncableTableInfo,
    DataRecord,
    create_data_record,
    shared_object_key,
)
from starkeep_sync.core.ulid import new_ulid

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
HASH = "cd" * 32


def make(clock: HLCClock, **kwargs: object) -> DataRecord:
    args: dict[str, object] = {
        "type": "image/png",
        "origin_app_id": "photos",
        "content_hash": HASH,
        "object_storage_key": shared_object_key("image/png", HASH),
        "size_bytes": 42,
    }
    args.update(kwargs)
    return create_data_record(clock, **args)  # type: ignore[arg-type]


def test_create_data_record_defaults() -> None:
    clock = HLCClock("local", wall_clock=lambda: 1_700_000_000_000, initial_state=(1_700_000_000_000, 4))
    rec = make(clock)
    expected_ts = HLCTimestamp(1_700_000_000_000, 5, "local")
    assert rec.created_at == expected_ts
    assert rec.updated_at == expected_ts
    assert clock.state == (1_700_000_000_000, 5)  # exactly one tick
    assert rec.version == 1
    assert rec.deleted_at is None
    assert not rec.is_deleted
    assert rec.kind == "data"
    assert len(rec.id) == 26
    assert set(rec.id) <= CROCKFORD
    assert rec.type == "image/png"
    assert rec.origin_app_id == "photos"
    assert rec.content_hash == HASH
    assert rec.size_bytes == 42
    assert rec.mime_type is None and rec.parent_id is None and rec.label is None


def test_create_data_record_ids_are_unique_and_time_ordered() -> None:
    t = [1_000_000]
    clock = HLCClock("local", wall_clock=lambda: t[0])
    first = make(clock)
    t[0] += 1
    second = make(clock)
    assert first.id != second.id
    assert first.id < second.id  # ULIDs of later milliseconds sort after


def test_create_data_record_with_given_id_and_optionals() -> None:
    clock = HLCClock("n1", wall_clock=lambda: 10)
    rec = make(clock, id="fixed-id", mime_type="image/png", original_filename="a.png",
               parent_id="p", label="L")
    assert rec.id == "fixed-id"
    assert rec.mime_type == "image/png"
    assert rec.original_filename == "a.png"
    assert (rec.parent_id, rec.label) == ("p", "L")
    assert rec.created_at == rec.updated_at == HLCTimestamp(10, 0, "n1")


def test_data_record_is_frozen() -> None:
    rec = make(HLCClock("n", wall_clock=lambda: 1))
    with pytest.raises(AttributeError):
        rec.version = 2  # type: ignore[misc]


def test_shared_object_key() -> None:
    assert shared_object_key("image/jpeg", HASH) == f"shared/image/cd/{HASH}"
    assert shared_object_key("/weird", HASH) == f"shared/other/cd/{HASH}"


def test_new_ulid_shape_and_timestamp() -> None:
    u = new_ulid(0)
    assert len(u) == 26
    assert u[:10] == "0000000000"
    assert new_ulid(1)[:10] == "0000000001"
    assert new_ulid(2**48 - 1)[:10] == "7ZZZZZZZZZ"
    assert len({new_ulid(5) for _ in range(100)}) == 100


def test_namespace_table_names_and_files_disabled() -> None:
    ns = AppSyncableNamespace("notes", [AppSyncableTableInfo("notes", ["id"]),
                                        AppSyncableTableInfo("tags", ("note_id", "tag"))])
    assert ns.app_id == "notes"
    assert ns.table_names == ["notes", "tags"]
    assert ns.files_enabled is False
    assert ns.table("tags") == AppSyncableTableInfo("tags", ("note_id", "tag"))
    assert ns.table("tags").pk_columns == ("note_id", "tag")  # type: ignore[union-attr]
    assert ns.table("missing") is None


def test_namespace_files_enabled_adds_reserved_table() -> None:
    ns = AppSyncableNamespace("photos", [AppSyncableTableInfo("albums", ["id"])], files_enabled=True)
    assert ns.files_enabled is True
    assert ns.table_names == ["albums", FILE_RECORDS_TABLE]
    assert ns.table(FILE_RECORDS_TABLE).pk_columns == ("id",)  # type: ignore[union-attr]


def test_namespace_with_reserved_table_is_files_enabled() -> None:
    ns = AppSyncableNamespace("photos", [AppSyncableTableInfo(FILE_RECORDS_TABLE, ["id"])])
    assert ns.files_enabled is True
    assert ns.table_names == [FILE_RECORDS_TABLE]
    again = AppSyncableNamespace("photos", [AppSyncableTableInfo(FILE_RECORDS_TABLE, ["id"])],
                                 files_enabled=True)
    assert again.table_names == [FILE_RECORDS_TABLE]  # not added twice


def test_namespace_accepts_a_generator() -> None:
    ns = AppSyncableNamespace("a", (AppSyncableTableInfo(n, ["id"]) for n in ["x", "y"]))
    assert ns.table_names == ["x", "y"]
    assert ns.table_names == ["x", "y"]


def test_table_needs_a_primary_key() -> None:
    with pytest.raises(ValueError):
        AppSyncableTableInfo("t", [])
