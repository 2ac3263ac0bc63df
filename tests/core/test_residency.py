"""Residency of a file-backed record (PROTOCOL §7): derived, never stored."""

from __future__ import annotations

from typing import IO

import pytest

from starkeep_sync.core.hlc import HLCTimestamp
from starkeep_sync.core.protocols import StoredObject
from starkeep_sync.core.records import DataRecord
from starkeep_sync.core.residency import RecordResidency, residency_of

KEY = "shared/image/ab/" + "ab" * 32
TS = HLCTimestamp(1000, 0, "nodeA")
DELETED = "0000000007d0:0000:nodeA"


class KeySet:
    """Just enough ObjectStorage: answers ``has``."""

    def __init__(self, *keys: str) -> None:
        self.keys = set(keys)
        self.asked: list[str] = []

    def has(self, key: str) -> bool:
        self.asked.append(key)
        return key in self.keys

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        raise AssertionError("residency must not write")

    def get(self, key: str) -> StoredObject | None:
        raise AssertionError("residency must not read bytes")

    def open(self, key: str) -> IO[bytes] | None:
        raise AssertionError("residency must not read bytes")

    def delete(self, key: str) -> None:
        raise AssertionError("residency must not delete")


def record(**overrides: object) -> DataRecord:
    fields: dict[str, object] = {
        "id": "r1",
        "type": "image/jpeg",
        "created_at": TS,
        "updated_at": TS,
        "content_hash": "ab" * 32,
        "object_storage_key": KEY,
        "size_bytes": 3,
        "origin_app_id": "photos",
    }
    fields.update(overrides)
    return DataRecord(**fields)  # type: ignore[arg-type]


def test_enum_is_str_with_four_values() -> None:
    assert issubclass(RecordResidency, str)
    assert {r.value for r in RecordResidency} == {"absent", "tombstoned", "resident", "staged"}
    assert RecordResidency.STAGED == "staged"
    assert str(RecordResidency.RESIDENT) == "resident"
    assert f"{RecordResidency.ABSENT}" == "absent"
    assert RecordResidency("tombstoned") is RecordResidency.TOMBSTONED


def test_none_is_absent() -> None:
    assert residency_of(None, KeySet(KEY)) is RecordResidency.ABSENT


def test_record_with_blob_is_resident() -> None:
    storage = KeySet(KEY)
    assert residency_of(record(), storage) is RecordResidency.RESIDENT
    assert storage.asked == [KEY]


def test_record_without_blob_here_is_staged() -> None:
    assert residency_of(record(), KeySet()) is RecordResidency.STAGED


def test_deleted_record_is_tombstoned_even_with_or_without_blob() -> None:
    tomb = record(deleted_at=HLCTimestamp(2000, 0, "nodeA"), updated_at=HLCTimestamp(2000, 0, "nodeA"))
    assert residency_of(tomb, KeySet(KEY)) is RecordResidency.TOMBSTONED
    assert residency_of(tomb, KeySet()) is RecordResidency.TOMBSTONED


@pytest.mark.parametrize(
    ("row", "keys", "expected"),
    [
        ({"object_storage_key": KEY, "deleted_at": None}, {KEY}, RecordResidency.RESIDENT),
        ({"object_storage_key": KEY, "deleted_at": None}, set(), RecordResidency.STAGED),
        ({"object_storage_key": KEY}, set(), RecordResidency.STAGED),
        ({"object_storage_key": KEY, "deleted_at": DELETED}, {KEY}, RecordResidency.TOMBSTONED),
        ({"object_storage_key": KEY, "deleted_at": DELETED}, set(), RecordResidency.TOMBSTONED),
        ({"object_storage_key": "", "deleted_at": DELETED}, set(), RecordResidency.TOMBSTONED),
    ],
)
def test_mapping_rows(row: dict[str, object], keys: set[str], expected: RecordResidency) -> None:
    assert residency_of(row, KeySet(*keys)) is expected


def test_mapping_row_other_columns_are_ignored() -> None:
    row = {"id": "x", "content_hash": "00", "object_storage_key": KEY, "deleted_at": None, "extra": 1}
    assert residency_of(row, KeySet(KEY)) is RecordResidency.RESIDENT
    assert residency_of(row, KeySet("shared/image/ab/other")) is RecordResidency.STAGED
