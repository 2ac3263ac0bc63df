"""Two-sided test harness: a local requester and a cloud responder.

Scenario tests talk only to :class:`Pair` and :class:`Side`, so the same
scenarios run in-process on the memory adapters and over real HTTP against
the Django server (the ``pair`` fixture is parametrized).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from starkeep_sync import (
    FILE_RECORDS_TABLE,
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    DataRecord,
    ExchangeResult,
    HLCClock,
    HLCTimestamp,
    RecordResidency,
    SyncEngine,
    SyncExchangeRequest,
    SyncExchangeResponse,
    create_data_record,
    create_in_process_sync_transport,
    create_sync_engine,
    residency_of,
    serialize_hlc,
    shared_object_key,
)
from starkeep_sync.core.staged import RetryPolicy
from starkeep_sync.device.memory import (
    MemoryAppSource,
    MemoryDatabaseAdapter,
    MemoryObjectStorage,
    MemorySyncStateStore,
)

NOTES_APP = "notes"
NOTES_TABLE = "notes"

#: The app namespace every scenario side registers.
NOTES_NAMESPACE = AppSyncableNamespace(
    NOTES_APP,
    [AppSyncableTableInfo(NOTES_TABLE, ["id"]), AppSyncableTableInfo(FILE_RECORDS_TABLE, ["id"])],
    files_enabled=True,
)
OTHER_NAMESPACE = AppSyncableNamespace("other", [AppSyncableTableInfo("items", ["id"])])


class ManualTime:
    """A wall clock tests move by hand; starts near real time so skew guards stay quiet."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = start_ms if start_ms is not None else (time.time_ns() // 1_000_000) - 3_600_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int = 1) -> None:
        self.ms += ms


class FlakyStorage:
    """Wraps an object storage; ``put`` fails for chosen keys.

    ``fail_once`` keys fail on their first put only (transient), ``fail_always``
    keys fail every time (persistent). ``puts`` records every attempted key.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_once: set[str] = set()
        self.fail_always: set[str] = set()
        self.puts: list[str] = []

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        self.puts.append(key)
        if key in self.fail_always:
            raise OSError(f"injected persistent failure for {key}")
        if key in self.fail_once:
            self.fail_once.discard(key)
            raise OSError(f"injected transient failure for {key}")
        self.inner.put(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def blob_for(text: str) -> tuple[bytes, str]:
    data = f"blob:{text}".encode()
    return data, hashlib.sha256(data).hexdigest()


@dataclass
class Side:
    """One replica: its clock, shared-record database, blob storage and app rows."""

    node_id: str
    time: ManualTime
    database: Any
    storage: Any
    app_source: Any
    clock: HLCClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = HLCClock(self.node_id, wall_clock=self.time)

    # -- shared records -----------------------------------------------------

    def write_record(self, rid: str | None = None, *, text: str | None = None, with_blob: bool = True,
                     type: str = "image/jpeg", label: str | None = None,
                     clock: HLCClock | None = None) -> DataRecord:
        """Insert (or overwrite) a shared record whose blob is held here.

        ``clock`` stamps the write with another node's clock (a third device
        whose writes this side carries, or a pinned clock for HLC ties).
        """
        self.time.advance()
        data, digest = blob_for(text or rid or "x")
        key = shared_object_key(type, digest)
        if with_blob:
            self.storage.put(key, data, type)
        existing = self.database.get(rid) if rid else None
        record = create_data_record(
            clock or self.clock, type=type, origin_app_id="tests", content_hash=digest,
            object_storage_key=key, size_bytes=len(data), mime_type=type, label=label, id=rid,
        )
        if existing is not None:
            from msgspec.structs import replace
            record = replace(record, created_at=existing.created_at, version=existing.version + 1)
        self.database.put(record)
        return record

    def delete_record(self, rid: str, *, clock: HLCClock | None = None) -> DataRecord | None:
        """Soft-delete a held record; ``None`` (and nothing written) when it is not held."""
        self.time.advance()
        return self.database.delete(rid, (clock or self.clock).now())

    def record(self, rid: str) -> DataRecord | None:
        return self.database.get(rid)

    # -- app rows ------------------------------------------------------------

    def _apply(self, op: str, table: str, row: dict[str, Any] | None, where: dict[str, Any] | None,
               app_id: str = NOTES_APP, clock: HLCClock | None = None) -> AppSyncableRowEntry:
        self.time.advance()
        ts = (clock or self.clock).now()
        entry = AppSyncableRowEntry(ts, app_id, table, op, row, where)  # type: ignore[arg-type]
        self.app_source.applier.apply(entry)
        return entry

    def write_row(self, rid: str, body: str, *, app_id: str = NOTES_APP, table: str = NOTES_TABLE,
                  clock: HLCClock | None = None) -> AppSyncableRowEntry:
        return self._apply("insert", table, {"id": rid, "body": body}, None, app_id, clock)

    def update_row(self, rid: str, body: str, *, app_id: str = NOTES_APP, table: str = NOTES_TABLE,
                   clock: HLCClock | None = None) -> AppSyncableRowEntry:
        return self._apply("update", table, {"body": body}, {"id": rid}, app_id, clock)

    def delete_row(self, rid: str, *, app_id: str = NOTES_APP, table: str = NOTES_TABLE,
                   clock: HLCClock | None = None) -> AppSyncableRowEntry:
        return self._apply("delete", table, None, {"id": rid}, app_id, clock)

    def write_file_row(self, rid: str, text: str | None = None, *, with_blob: bool = True,
                       with_key: bool = True, app_id: str = NOTES_APP,
                       clock: HLCClock | None = None) -> AppSyncableRowEntry:
        """Insert (or overwrite) an AR row (``_starkeep_sync_records``) whose blob is held here.

        ``with_key=False`` writes a file row that names no blob at all (metadata only).
        """
        data, digest = blob_for(text or rid)
        key = f"apps/{app_id}/syncable/{digest}"
        if with_blob and with_key:
            self.storage.put(key, data, "application/octet-stream")
        row = {
            "id": rid, "object_storage_key": key, "content_hash": digest,
            "mime_type": "application/octet-stream", "size_bytes": len(data),
            "original_filename": f"{rid}.bin", "origin_app_id": app_id, "created_at": None,
        }
        if not with_key:
            row.update(object_storage_key="", content_hash="", size_bytes=0)
        self.time.advance()
        ts = (clock or self.clock).now()
        row["created_at"] = serialize_hlc(ts)
        entry = AppSyncableRowEntry(ts, app_id, FILE_RECORDS_TABLE, "insert", row)
        self.app_source.applier.apply(entry)
        return entry

    def rows(self, table: str = NOTES_TABLE, app_id: str = NOTES_APP) -> list[dict[str, Any]]:
        return self.app_source.rows(app_id, table)

    def row(self, rid: str, table: str = NOTES_TABLE, app_id: str = NOTES_APP) -> dict[str, Any] | None:
        for r in self.rows(table, app_id):
            if r["id"] == rid:
                return r
        return None

    def file_row(self, rid: str, app_id: str = NOTES_APP) -> dict[str, Any] | None:
        """An AR row (``_starkeep_sync_records``), tombstones included."""
        return self.row(rid, FILE_RECORDS_TABLE, app_id)

    def has_blob(self, key: str) -> bool:
        return bool(self.storage.has(key))

    def residency(self, row: DataRecord | dict[str, Any] | None) -> RecordResidency:
        return residency_of(row, self.storage)

    def node_clock(self, node_id: str) -> HLCClock:
        """A clock for another node on this side's wall time (a device whose writes this side carries)."""
        return HLCClock(node_id, wall_clock=self.time)

    # -- whole-side operations (a wiped or restored server) --------------------

    def all_records(self, page: int = 500) -> list[DataRecord]:
        """Every shared record held, tombstones included, through the adapter's paged query."""
        out: list[DataRecord] = []
        cursor = None
        while True:
            result = self.database.query(page, cursor)
            out.extend(result.records)
            if not result.has_more or not result.next_cursor:
                return out
            cursor = result.next_cursor

    def all_entries(self, app_id: str = NOTES_APP, page: int = 500) -> list[AppSyncableRowEntry]:
        """Every app row of ``app_id`` as scan entries (tombstones as deletes)."""
        out: list[AppSyncableRowEntry] = []
        ns = self.app_source.namespaces.get(app_id)
        for table in ns.tables if ns is not None else ():
            cursor = None
            while True:
                result = self.app_source.applier.scan_since(app_id, table.name, {}, page, cursor)
                out.extend(result.rows)
                if not result.has_more or not result.next_cursor:
                    break
                cursor = result.next_cursor
        return out

    def snapshot(self, app_ids: Iterable[str] = (NOTES_APP,)) -> Snapshot:
        """What a backup of this side would hold: records, app rows and their blobs."""
        records = self.all_records()
        entries = [e for app_id in app_ids for e in self.all_entries(app_id)]
        keys = {r.object_storage_key for r in records if r.object_storage_key}
        keys |= {str(e.row.get("object_storage_key")) for e in entries
                 if e.row and e.row.get("object_storage_key")}
        blobs = {}
        for key in keys:
            obj = self.storage.get(key)
            if obj is not None:
                blobs[key] = (obj.data, obj.content_type)
        return Snapshot(records, entries, blobs)

    def wipe(self) -> None:
        """Lose every record, app row and blob (a server reinstalled from scratch)."""
        self.database.clear()
        self.app_source.clear()
        self.storage.clear()

    def restore(self, snapshot: Snapshot) -> None:
        """Wipe, then reload ``snapshot`` (a server restored from an older backup)."""
        self.wipe()
        for record in snapshot.records:
            self.database.put(record)
        for entry in snapshot.entries:
            self.app_source.applier.apply(entry)
        for key, (data, content_type) in snapshot.blobs.items():
            self.storage.put(key, data, content_type)


@dataclass
class Snapshot:
    records: list[DataRecord]
    entries: list[AppSyncableRowEntry]
    blobs: dict[str, tuple[bytes, str | None]]


@dataclass
class Exchange:
    channel: str
    request: SyncExchangeRequest
    response: SyncExchangeResponse


class RecordingTransport:
    """Passes rounds through to the real transport and remembers them."""

    def __init__(self, inner: Any, channel: str, log: list[Exchange]) -> None:
        self.inner = inner
        self.channel = channel
        self.log = log

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        response = self.inner.exchange(request)
        self.log.append(Exchange(self.channel, request, response))
        return response


@dataclass
class Pair:
    """A local requester and a cloud responder on shared manual time."""

    local: Side
    cloud: Side
    make_transport: Callable[..., Any]
    remote_storage: Any  # the requester's handle on the cloud's blobs
    states: dict[str, MemorySyncStateStore] = field(default_factory=dict)
    engines: dict[str, SyncEngine] = field(default_factory=dict)
    #: Every round the engines ran, in order: what was sent and what came back.
    exchanges: list[Exchange] = field(default_factory=list)
    #: Blob transfers at once (the engine's default unless a set-up cannot serve them side by side).
    transfer_concurrency: int = 4

    def engine(self, channel: str = "drive", *, page_limit: int = 1000, scan_page_size: int = 500,
               local_storage: Any = None, remote_storage: Any = None, fresh: bool = False) -> SyncEngine:
        """The local engine for ``channel`` ("drive" or an app id); state kept per channel."""
        cache_key = f"{channel}:{page_limit}:{scan_page_size}:{id(local_storage)}:{id(remote_storage)}"
        if not fresh and cache_key in self.engines:
            return self.engines[cache_key]
        state = self.states.setdefault(channel, MemorySyncStateStore())
        drive = channel == "drive"
        engine = create_sync_engine(
            local_database=self.local.database,
            local_storage=local_storage or self.local.storage,
            remote_storage=remote_storage or self.remote_storage,
            transport=RecordingTransport(self.make_transport(channel), channel, self.exchanges),
            clock=self.local.clock,
            sync_state=state,
            app_source=None if drive else self.local.app_source,
            sync_shared_records=drive,
            page_limit=page_limit,
            scan_page_size=scan_page_size,
            app_id=None if drive else channel,
            # Failed blob fetches are retried at the next round here; backoff has tests of its own.
            blob_retry=RetryPolicy(base=0.0, cap=0.0),
            transfer_concurrency=self.transfer_concurrency,
        )
        self.engines[cache_key] = engine
        return engine

    def sync(self, channel: str = "drive", **kw: Any) -> ExchangeResult:
        return self.engine(channel, **kw).exchange()

    def sync_until_done(self, channel: str = "drive", max_rounds: int = 50,
                        **kw: Any) -> list[ExchangeResult]:
        results = []
        for _ in range(max_rounds):
            results.append(self.sync(channel, **kw))
            if not results[-1].has_more:
                return results
        raise AssertionError(f"did not converge in {max_rounds} rounds")

    def wipe_local_state(self, channel: str = "drive") -> None:
        self.states[channel] = MemorySyncStateStore()
        self.engines.clear()

    def watermarks(self, channel: str = "drive") -> tuple[dict[str, HLCTimestamp], dict[str, HLCTimestamp]]:
        """The requester's ``(own, peer)`` vectors for ``channel``."""
        state = self.states.setdefault(channel, MemorySyncStateStore())
        return state.get_watermarks(), state.get_peer_watermarks()

    def reset_watermarks(self, channel: str = "drive", *, own: bool = True, peer: bool = True) -> None:
        """Forget one or both of the requester's vectors (keeping its clock state)."""
        state = self.states.setdefault(channel, MemorySyncStateStore())
        if own:
            state.set_watermarks({})
        if peer:
            state.set_peer_watermarks({})

    def transport(self, channel: str = "drive") -> Any:
        """A raw transport to the responder, for hand-made requests."""
        return self.make_transport(channel)


def memory_pair(namespaces: Iterable[AppSyncableNamespace] = (NOTES_NAMESPACE, OTHER_NAMESPACE)) -> Pair:
    t = ManualTime()
    namespaces = list(namespaces)
    local = Side("local", t, MemoryDatabaseAdapter(), MemoryObjectStorage(), MemoryAppSource(namespaces))
    cloud = Side("cloud", t, MemoryDatabaseAdapter(), MemoryObjectStorage(), MemoryAppSource(namespaces))
    # The cloud's blob storage is reached through a pass-through wrapper so
    # tests can inject failures on the requester's pushes.
    remote = FlakyStorage(cloud.storage)

    def make_transport(channel: str) -> Any:
        drive = channel == "drive"
        return create_in_process_sync_transport(
            database=cloud.database,
            storage=cloud.storage,
            clock=cloud.clock,
            app_source=None if drive else cloud.app_source,
            sync_shared_records=drive,
            app_id=None if drive else channel,
        )

    return Pair(local, cloud, make_transport, remote)


def disk_fills_up(monkeypatch: Any, on_write: int, error: OSError) -> None:
    """Make the ``on_write``-th write to a file opened with ``os.fdopen(fd, "wb")`` raise ``error``: a disk
    filling up part-way through a blob (both the device's file storage and Django's write that way)."""
    real_fdopen = os.fdopen
    calls = 0

    class FillsUp(io.BufferedWriter):
        def write(self, chunk: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == on_write:
                raise error
            return super().write(chunk)

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return FillsUp(io.FileIO(fd, "wb")) if mode == "wb" else real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
