"""Data classes of PROTOCOL §2: shared records, app row entries, namespaces."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from .constants import DRIVE_APP_ID, FILE_RECORDS_TABLE
from .hlc import HLCClock, HLCTimestamp
from .ulid import new_ulid

__all__ = [
    "DRIVE_APP_ID",
    "FILE_RECORDS_TABLE",
    "AppSyncableNamespace",
    "AppSyncableRowEntry",
    "AppSyncableTableInfo",
    "DataRecord",
    "create_data_record",
    "shared_object_key",
]

Op = Literal["insert", "update", "delete"]
OPS = ("insert", "update", "delete")


class DataRecord(msgspec.Struct, frozen=True, gc=False):
    """A shared, file-backed record (SR).

    A frozen ``msgspec.Struct`` rather than a frozen dataclass: a page of 10,000 records decoded from the
    wire built in 0.8 ms instead of 23.6 (the dataclass sets each field through ``object.__setattr__``).
    Change a field with ``msgspec.structs.replace`` (or :func:`tombstone_of` for a delete).
    """

    id: str
    type: str
    created_at: HLCTimestamp
    updated_at: HLCTimestamp
    content_hash: str
    object_storage_key: str
    size_bytes: int
    origin_app_id: str
    version: int = 1
    deleted_at: HLCTimestamp | None = None
    mime_type: str | None = None
    original_filename: str | None = None
    parent_id: str | None = None
    label: str | None = None
    kind: str = "data"

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


def tombstone_of(record: DataRecord, hlc: HLCTimestamp) -> DataRecord:
    """The soft delete of ``record`` at ``hlc`` (PROTOCOL §2): deleted and updated at ``hlc``, next version."""
    return msgspec.structs.replace(record, deleted_at=hlc, updated_at=hlc, version=record.version + 1)


def shared_object_key(type: str, content_hash: str) -> str:
    """``shared/<category>/<hash[:2]>/<hash>`` for a record of ``type``."""
    category = type.split("/", 1)[0] or "other"
    return f"shared/{category}/{content_hash[:2]}/{content_hash}"


def create_data_record(
    clock: HLCClock,
    *,
    type: str,
    origin_app_id: str,
    content_hash: str,
    object_storage_key: str,
    size_bytes: int,
    mime_type: str | None = None,
    original_filename: str | None = None,
    parent_id: str | None = None,
    label: str | None = None,
    id: str | None = None,
) -> DataRecord:
    """A new live record stamped ``clock.now()`` (``created_at == updated_at``), version 1."""
    ts = clock.now()
    return DataRecord(
        id=id or new_ulid(ts.wall_time),
        type=type,
        created_at=ts,
        updated_at=ts,
        content_hash=content_hash,
        object_storage_key=object_storage_key,
        size_bytes=size_bytes,
        origin_app_id=origin_app_id,
        version=1,
        mime_type=mime_type,
        original_filename=original_filename,
        parent_id=parent_id,
        label=label,
    )


class AppSyncableRowEntry(msgspec.Struct, frozen=True, gc=False):
    """One app row change as it travels on the wire (a frozen ``msgspec.Struct``, as ``DataRecord``)."""

    timestamp: HLCTimestamp
    app_id: str
    table: str
    op: Op
    row: Mapping[str, Any] | None = None
    where: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AppSyncableTableInfo:
    name: str
    pk_columns: tuple[str, ...]

    def __init__(self, name: str, pk_columns: Iterable[str]) -> None:
        cols = tuple(pk_columns)
        if not cols:
            raise ValueError(f"table {name!r} needs at least one primary-key column")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "pk_columns", cols)


@dataclass(frozen=True, slots=True)
class AppSyncableNamespace:
    """An app's registered tables. ``files_enabled`` when it has ``_starkeep_sync_records``."""

    app_id: str
    tables: tuple[AppSyncableTableInfo, ...] = field(default_factory=tuple)
    files_enabled: bool = False

    def __init__(
        self,
        app_id: str,
        tables: Iterable[AppSyncableTableInfo],
        files_enabled: bool = False,
    ) -> None:
        tables = tuple(tables)
        if files_enabled and not any(t.name == FILE_RECORDS_TABLE for t in tables):
            # A file-enabled app always has the reserved table, keyed by id.
            tables = (*tables, AppSyncableTableInfo(FILE_RECORDS_TABLE, ("id",)))
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(
            self,
            "files_enabled",
            bool(files_enabled) or any(t.name == FILE_RECORDS_TABLE for t in tables),
        )

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    def table(self, name: str) -> AppSyncableTableInfo | None:
        for t in self.tables:
            if t.name == name:
                return t
        return None
