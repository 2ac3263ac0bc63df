"""Adapter protocols: what the engine and the responder need from storage.

Every method documents what it returns and raises. Implementations: the
memory adapters (:mod:`starkeep_sync.memory`), the stdlib-sqlite device store
(:mod:`starkeep_sync.sqlite`), the Django ORM adapters and the HTTP object
storage client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from .hlc import ClockState, HLCTimestamp
from .records import AppSyncableNamespace, AppSyncableRowEntry, DataRecord

Watermarks = dict[str, HLCTimestamp]


@dataclass(slots=True)
class RecordPage:
    records: list[DataRecord]
    next_cursor: str | None = None
    has_more: bool = False


@dataclass(slots=True)
class ScanPage:
    rows: list[AppSyncableRowEntry]
    next_cursor: str | None = None
    has_more: bool = False


@dataclass(slots=True)
class StoredObject:
    """What ``ObjectStorage.get`` returns: the bytes and their metadata."""

    data: bytes
    content_type: str | None = None
    size: int = 0


@runtime_checkable
class DatabaseAdapter(Protocol):
    """Shared-record store of one side (one owner on a server)."""

    def get(self, id: str) -> DataRecord | None:
        """The record, tombstones included; ``None`` when not held."""

    def put(self, record: DataRecord) -> None:
        """Store ``record`` unconditionally (a local write)."""

    def delete(self, id: str, hlc: HLCTimestamp) -> DataRecord | None:
        """Soft-delete: ``deleted_at = updated_at = hlc``; the new row, ``None`` if not held."""

    def merge(self, records: Sequence[DataRecord]) -> list[bool]:
        """LWW-apply ``records`` in order; per record, ``True`` if it was written.

        A record is written only when its ``updated_at`` is strictly above the
        stored one. Every record is counted as taken in for coverage
        (``get_node_watermarks``) whether it won or lost.
        """

    def query(self, limit: int, cursor: str | None = None) -> RecordPage:
        """All records in HLC order, paged; ``cursor`` is the previous page's ``next_cursor``."""

    def query_since(
        self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None = None
    ) -> RecordPage:
        """Records with ``updated_at > watermarks[node]`` in HLC order, at most ``limit``.

        Must use an ordered per-node index: cost independent of the rows below the
        watermarks.
        """

    def get_node_watermarks(self) -> Watermarks:
        """Per node, the highest HLC taken in (tombstones and LWW losers included)."""


@runtime_checkable
class AppSyncableNamespaceStore(Protocol):
    def get(self, app_id: str) -> AppSyncableNamespace | None: ...

    def list(self) -> list[AppSyncableNamespace]: ...


@runtime_checkable
class AppSyncableApplier(Protocol):
    def apply(self, entry: AppSyncableRowEntry) -> bool:
        """LWW-apply one entry; ``True`` if a stored row changed.

        Raises ``ValueError`` (or a ``SyncError``) for an entry it refuses:
        unknown table, no primary key, inconsistent ``updated_at``.
        """

    def scan_since(
        self,
        app_id: str,
        table: str,
        since: Mapping[str, HLCTimestamp],
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ScanPage:
        """Rows above ``since`` per node, HLC order: live rows as ``insert``, tombstones as ``delete``."""

    def get_node_watermarks(self, app_id: str, table: str) -> Watermarks:
        """Per node, the highest HLC taken in for one table (``{}`` for a missing table)."""


class AppSource(Protocol):
    namespaces: AppSyncableNamespaceStore
    applier: AppSyncableApplier


@runtime_checkable
class ObjectStorage(Protocol):
    """Blob storage addressed by key."""

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        """Store ``data`` (bytes, or a binary stream read to its end) atomically:
        if reading the stream raises, nothing is stored."""

    def get(self, key: str) -> StoredObject | None: ...

    def open(self, key: str) -> IO[bytes] | None:
        """A binary stream of the blob, ``None`` when absent. Caller closes it."""

    def has(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class SyncStateStore(Protocol):
    def get_watermarks(self) -> Watermarks: ...

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None: ...

    def get_peer_watermarks(self) -> Watermarks: ...

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None: ...

    def get_hlc_clock_state(self) -> ClockState | None: ...

    def set_hlc_clock_state(self, state: ClockState) -> None: ...


class SyncTransport(Protocol):
    """How a requester reaches its responder.

    Optional: a transport with ``prefetch_safe = True`` and
    ``exchange_json(request)`` (the response body as parsed JSON, unchecked)
    lets the engine ask for the next page of a catch-up on a helper thread;
    it never makes two calls at once (``SyncEngine._predict_next``).
    """

    def exchange(self, request: Any) -> Any:
        """Send a ``SyncExchangeRequest``; return the ``SyncExchangeResponse``."""


__all__ = [
    "AppSource",
    "AppSyncableApplier",
    "AppSyncableNamespaceStore",
    "DatabaseAdapter",
    "ObjectStorage",
    "RecordPage",
    "ScanPage",
    "StoredObject",
    "SyncStateStore",
    "SyncTransport",
    "Watermarks",
]
