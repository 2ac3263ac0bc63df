"""Residency of a file-backed record on one side: derived, never stored."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from .protocols import ObjectStorage
from .records import DataRecord


class RecordResidency(enum.StrEnum):
    ABSENT = "absent"
    TOMBSTONED = "tombstoned"
    RESIDENT = "resident"
    STAGED = "staged"


def residency_of(
    row: DataRecord | Mapping[str, Any] | None, local_storage: ObjectStorage
) -> RecordResidency:
    """``absent`` (no row), ``tombstoned``, ``resident`` (row and blob) or ``staged`` (row only)."""
    if row is None:
        return RecordResidency.ABSENT
    if isinstance(row, DataRecord):
        deleted, key = row.deleted_at, row.object_storage_key
    else:
        deleted, key = row.get("deleted_at"), row.get("object_storage_key")
    if deleted:
        return RecordResidency.TOMBSTONED
    if not key or local_storage.has(key):
        return RecordResidency.RESIDENT
    return RecordResidency.STAGED
