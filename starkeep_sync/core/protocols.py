"""Adapter protocols: what the engine and the responder need from storage.

Every method documents what it returns and raises. Implementations: the
memory adapters (:mod:`starkeep_sync.device.memory`), the stdlib-sqlite device store
(:mod:`starkeep_sync.device.sqlite`), the Django ORM adapters and the HTTP object
storage client.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from .hlc import ClockState, HLCTimestamp
from .records import AppSyncableNamespace, AppSyncableRowEntry, DataRecord
from .staged import RejectedItem, StagedBlob

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
        (``get_node_watermarks``) whether it won or lost. A call that raises
        writes none of its records (the engine merges a node's run in one call,
        and on an error merges it again one record at a time to find the culprit).
        """

    def query(self, limit: int, cursor: str | None = None) -> RecordPage:
        """All records in HLC order, paged; ``cursor`` is the previous page's ``next_cursor``."""

    def query_since(
        self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None = None,
        exclude: Collection[tuple[str, HLCTimestamp]] | None = None,
    ) -> RecordPage:
        """Records with ``updated_at > watermarks[node]`` in HLC order, at most ``limit``.

        ``has_more`` is exact. ``exclude`` holds ``(record id, updated_at)`` of
        versions never to return (a responder's echoes, PROTOCOL §5 rule 7a); the
        channel passes it only when it is not empty. Must use an ordered per-node
        index: cost independent of the rows below the watermarks.
        :func:`starkeep_sync.core.paging.page_since` does all of this given a per-node read.
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
        exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None,
    ) -> ScanPage:
        """Rows above ``since`` per node, HLC order: live rows as ``insert``, tombstones as ``delete``.

        At most ``limit`` (``None``: all), ``has_more`` exact; an empty page for an
        unknown table. ``exclude`` holds ``(primary-key values, updated_at)`` of
        versions never to return, as in ``DatabaseAdapter.query_since``.
        """

    def get_node_watermarks(self, app_id: str, table: str) -> Watermarks:
        """Per node, the highest HLC taken in for one table (``{}`` for a missing table)."""


# -- optional capabilities ------------------------------------------------------
#
# An adapter offers these when it can do better than the required protocol; the
# core checks with ``isinstance`` (they are runtime-checkable, which looks at the
# names only) and falls back when an adapter lacks one.


@runtime_checkable
class RecordCounter(Protocol):
    """A ``DatabaseAdapter`` that can count what lies above a vector (for a response's ``pending``)."""

    def count_since(self, watermarks: Mapping[str, HLCTimestamp]) -> int:
        """How many records ``query_since(watermarks, ...)`` would return in all, from an index."""
        ...


@runtime_checkable
class RowCounter(Protocol):
    """An ``AppSyncableApplier`` that can count the rows of one table above a vector."""

    def count_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp]) -> int:
        """How many rows ``scan_since(app_id, table, since)`` would return in all (0 for an unknown table)."""
        ...


@runtime_checkable
class WireRecordReader(Protocol):
    """A ``DatabaseAdapter`` that reads a responder's page straight into wire dicts (no ``DataRecord``)."""

    def query_wire_since(
        self, watermarks: Mapping[str, HLCTimestamp], limit: int,
        exclude: Collection[tuple[str, HLCTimestamp]] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """What ``query_since(watermarks, limit, exclude=exclude)`` gives, each record as
        ``record_to_wire`` would encode it; and whether more remain (exact)."""
        ...


@runtime_checkable
class WireRowScanner(Protocol):
    """An ``AppSyncableApplier`` that reads a responder's page straight into wire dicts."""

    def scan_wire_since(
        self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int,
        exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None,
    ) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
        """What ``scan_since`` gives, as ``(serialized HLC, entry as entry_to_wire encodes it)`` pairs
        in HLC order; and whether more remain (exact). The serialized HLC is the merge key across tables."""
        ...


@runtime_checkable
class JsonRowScanner(Protocol):
    """An ``AppSyncableApplier`` whose database encodes a responder's page itself."""

    def scan_json_since(
        self, app_id: str, table: str, since: Mapping[str, HLCTimestamp], limit: int,
        exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None,
    ) -> tuple[list[tuple[str, Any]], bool] | None:
        """``scan_wire_since``'s page with each entry as ``msgspec.Raw`` JSON; ``None`` when it cannot here."""
        ...


@runtime_checkable
class BatchApplier(Protocol):
    """An ``AppSyncableApplier`` that applies a run of one node's entries in one call (one transaction)."""

    def apply_many(
        self, entries: Sequence[AppSyncableRowEntry], written: list[AppSyncableRowEntry] | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
    ) -> tuple[int, int, Exception | None]:
        """Apply ``entries`` in order, stopping at the first that cannot apply: the same
        outcome as ``apply`` for each in turn (LWW, losers covered, tombstones).

        Returns ``(landed, applied, error)``: how many were taken in (the failing
        one and those after it are not), how many of them changed a row, and
        the error (``ValueError`` or ``SyncError``) that stopped the run, else
        ``None``; it does not raise for a refused entry. ``written`` receives
        the entries that changed a row, in order. ``keys``, when given, holds
        each entry's primary key as ``approws.check_entry`` already found it
        against this applier's namespace store (the engine and the responder
        classify every inbound entry so): the entries are not checked again
        (``approws.resolve_entries``).
        """
        ...


@runtime_checkable
class RowReader(Protocol):
    """An ``AppSyncableApplier`` that can read one stored row."""

    def get_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        """The stored row with its ``updated_at``/``deleted_at``/``node_id`` (tombstones included);
        ``None`` when not held."""
        ...


@runtime_checkable
class SnapshotReader(Protocol):
    """A ``DatabaseAdapter`` or ``AppSource`` that can read one response from one snapshot."""

    def read_snapshot(self) -> AbstractContextManager[Any]:
        """A context inside which the page, the counts and the coverage all see one set of commits
        (see ``SyncResponder._read_snapshot``). Raises nothing of its own on entry."""
        ...


@runtime_checkable
class PrefetchTransport(Protocol):
    """A ``SyncTransport`` whose calls may overlap the engine's own work (over HTTP, not in-process)."""

    #: True when a call may run on a helper thread while the engine reads and applies.
    prefetch_safe: bool

    def exchange_json(self, request: Any) -> Any:
        """Send a ``SyncExchangeRequest``; the response, for the engine to decode and check itself.

        Returns the response body as JSON bytes, not yet decoded (``HttpSyncTransport``): the engine
        decodes and validates them in one pass with ``wire.decode_response``. A transport may instead
        return the body already parsed into plain JSON data (checked with
        ``SyncExchangeResponse.from_wire``) or a ``SyncExchangeResponse`` it already decoded (taken as
        is; a wrapper that must look at the answer before the engine applies it, as ``--node-id``'s
        guard does). Raises what ``exchange`` raises for transport and HTTP errors
        (``SyncTransportError``); a body that is not a valid response raises ``WireFormatError`` when
        the engine decodes it, or already here if the transport decodes it.
        """
        ...


@runtime_checkable
class ChangeFeedTransport(Protocol):
    """A ``SyncTransport`` that can wait for the responder's data to move (``sync/changes``, PROTOCOL §7d)."""

    def wait_for_changes(self, cursor: str | None = None, timeout: float = 25.0) -> Any:
        """Return when the channel moved past ``cursor`` or ``timeout`` seconds passed; an answer with
        ``changed`` and the next ``cursor``. Raises ``SyncTransportError`` (404 from a server without
        the route)."""
        ...


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


@runtime_checkable
class InMemoryStorage(Protocol):
    """An ``ObjectStorage`` that never waits on I/O (``in_memory`` true): between two of them the
    engine moves blobs on its own thread, as transfer threads would only add hand-offs."""

    in_memory: bool


class SyncStateStore(Protocol):
    def get_watermarks(self) -> Watermarks: ...

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None: ...

    def get_peer_watermarks(self) -> Watermarks: ...

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None: ...

    def get_hlc_clock_state(self) -> ClockState | None: ...

    def set_hlc_clock_state(self, state: ClockState) -> None: ...


@runtime_checkable
class BlobStateStore(Protocol):
    """A ``SyncStateStore`` that keeps the requester's blob state durably (PROTOCOL §5c).

    The memory, SQLite and ORM state stores all do; with one that does not, the
    engine keeps it in memory for the life of the process (``MemoryBlobState``).
    Implementations are safe to call from several threads.
    """

    def stage_blobs(self, entries: Iterable[StagedBlob]) -> None:
        """Add or replace entries by ``ref``; an entry for the same ref and key keeps its attempts
        and backoff (and stays wanted if it was)."""
        ...

    def staged_blobs(self, *, due_at: float | None = None, limit: int | None = None,
                     failing: bool = False) -> list[StagedBlob]:
        """Every entry (``due_at=None``), or the wanted ones whose ``next_attempt`` is at or before
        ``due_at``; with ``failing``, only entries with at least one failed attempt; soonest first,
        at most ``limit``."""
        ...

    def staged_for(self, refs: Collection[str]) -> list[StagedBlob]:
        """The entries of these refs (those staged)."""
        ...

    def update_staged(self, entries: Iterable[StagedBlob]) -> None:
        """Store new attempts, backoff, error or wantedness of entries still staged for the same key."""
        ...

    def unstage_blobs(self, refs: Collection[str]) -> None: ...

    def staged_totals(self) -> tuple[int, int]:
        """How many entries, and their declared bytes."""
        ...

    def remote_keys_known(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` the peer is known to hold."""
        ...

    def remember_remote_keys(self, keys: Collection[str]) -> None: ...

    def forget_remote_keys(self, keys: Collection[str] | None = None) -> None:
        """Forget these keys, or all (``None``: the peer lost data)."""
        ...

    def reject_items(self, items: Iterable[RejectedItem]) -> None:
        """Remember refused versions, one per ref (the latest replaces an older one)."""
        ...

    def rejected_items(self) -> list[RejectedItem]: ...

    def clear_rejected(self, refs: Collection[str]) -> None: ...


class SyncTransport(Protocol):
    """How a requester reaches its responder.

    Optional: a :class:`PrefetchTransport` (``prefetch_safe = True`` and
    ``exchange_json``) lets the engine ask for the next page of a catch-up on
    a helper thread; it never makes two calls at once (``SyncEngine._predict_next``).
    """

    def exchange(self, request: Any) -> Any:
        """Send a ``SyncExchangeRequest``; return the ``SyncExchangeResponse``."""


__all__ = [
    "AppSource",
    "AppSyncableApplier",
    "AppSyncableNamespaceStore",
    "BatchApplier",
    "BlobStateStore",
    "ChangeFeedTransport",
    "DatabaseAdapter",
    "InMemoryStorage",
    "ObjectStorage",
    "PrefetchTransport",
    "RecordCounter",
    "RecordPage",
    "RowCounter",
    "RowReader",
    "ScanPage",
    "SnapshotReader",
    "StoredObject",
    "SyncStateStore",
    "SyncTransport",
    "Watermarks",
    "WireRecordReader",
    "WireRowScanner",
]
