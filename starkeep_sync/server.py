"""Write synced data from Django code on the server, so devices receive it on their next round.

Every function works on one owner (a user instance). Shared records live on
the Drive channel; app rows on their app's channel (the app must be
registered, see ``manage.py starkeep_app register``). The reserved table
``_starkeep_sync_records`` is reached through the row functions with the
primary key ``[record_id]``.

Each write:

- is stamped by the server's own persisted clock (:class:`~starkeep_sync.models.ServerClock`
  for ``NODE_ID``), locked for the write's transaction, moved past the stored
  version of the item being changed, so a server edit always beats the version
  it edits, even when a device's clock runs ahead; two workers never issue the
  same HLC, and a restarted server never goes back;
- goes through the ORM adapters the exchange view uses (``OrmDatabaseAdapter.merge``,
  ``OrmApplier.apply_many``), so last-write-wins, coverage (``responderWatermarks``),
  key rules and quotas are exactly an exchange's;
- is one transaction with the clock update, and sends
  :mod:`starkeep_sync.signals` once it commits (``source="server"``).

Values are checked as a device's would be (through the wire codec), so what
the server writes is always something every device accepts.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

import msgspec
from django.db import transaction
from django.db.models import F

from .adapters.orm import OrmAppSource, OrmDatabaseAdapter, record_from_model, synced_db
from .adapters.storage import BlobTooLarge, DjangoObjectStorage
from .api.quotas import QuotaExceeded, blob_bytes_remaining, check_record_quota
from .conf import sync_settings
from .core.approws import BOOKKEEPING, resolve_entry
from .core.blobs import CHUNK_SIZE
from .core.constants import DELETED_AT, DRIVE_APP_ID, FILE_RECORDS_TABLE, UPDATED_AT
from .core.exceptions import SyncError
from .core.hlc import HLCClock, HLCTimestamp, deserialize_hlc
from .core.keys import validate_key
from .core.records import AppSyncableRowEntry, DataRecord, shared_object_key, tombstone_of
from .core.ulid import new_ulid
from .core.wire import SyncExchangeRequest, entry_from_wire, entry_to_wire, record_from_wire, record_to_wire
from .models import ServerClock, SharedRecord
from .signals import notify_blob_stored, notify_records_applied, notify_rows_applied

__all__ = [
    "EDITABLE_RECORD_FIELDS",
    "BlobMissing",
    "RecordNotFound",
    "RowNotFound",
    "WriteConflict",
    "delete_record",
    "delete_row",
    "get_record",
    "get_row",
    "put_file",
    "put_record",
    "put_row",
    "records",
    "rows",
    "update_record",
    "update_row",
]

#: Shared-record fields ``update_record`` changes: what a device edits as metadata. The content
#: (``content_hash``, ``object_storage_key``, ``size_bytes``, ``type``) is replaced by writing the
#: record again (``put_record``/``put_file`` with its id); ids, stamps and ``version`` are the sync's own.
EDITABLE_RECORD_FIELDS = frozenset({"label", "parent_id", "original_filename", "mime_type"})
_RECORD_FIELDS = frozenset(DataRecord.__struct_fields__)


class RecordNotFound(SyncError, LookupError):
    """No live shared record with this id for this owner (absent, or deleted)."""

    code = "record_not_found"
    status = 404


class RowNotFound(SyncError, LookupError):
    """No live app row with this primary key for this owner (absent, or deleted)."""

    code = "row_not_found"
    status = 404


class BlobMissing(SyncError, ValueError):
    """A record or file row names a blob this owner's storage does not hold; nothing written.

    Devices pulling such an item would fail to fetch its blob, round after round.
    """

    code = "blob_missing"
    status = 400


class WriteConflict(SyncError):
    """A device wrote a newer version of a brand-new id between this write's stamp and its commit."""

    code = "write_conflict"
    status = 409


# -- the server's clock ----------------------------------------------------------


def _stamp(current: HLCTimestamp | None) -> HLCTimestamp:
    """The next HLC of this server's node, above ``current``; call inside the write's transaction.

    The clock row stays locked until the transaction ends, so concurrent writers
    (threads, worker processes) take turns and never issue the same stamp.
    """
    node = sync_settings.NODE_ID
    if synced_db().vendor == "sqlite":
        # Take SQLite's write lock with the first statement: a transaction that reads first
        # and writes later cannot upgrade its lock while another writer waits.
        ServerClock.objects.filter(node_id=node).update(counter=F("counter"))
    locked = ServerClock.objects.select_for_update()
    row = locked.filter(node_id=node).first()
    if row is None:
        # First write ever: create the row; a concurrent creator makes this a no-op.
        ServerClock.objects.bulk_create([ServerClock(node_id=node)], ignore_conflicts=True)
        row = locked.get(node_id=node)
    # No skew bound: ``current`` is a stored HLC, already checked when it was taken in.
    clock = HLCClock(node, initial_state=(row.wall_time, row.counter), max_skew_ms=None)
    if current is not None:
        clock.receive(current)
    stamp = clock.now()
    row.wall_time, row.counter = clock.state
    row.save(update_fields=["wall_time", "counter"])
    return stamp


# -- shared records (Drive channel) ------------------------------------------------


def _owner_id(owner: Any) -> int:
    pk = getattr(owner, "pk", None)
    if not isinstance(pk, int):
        raise TypeError(f"owner must be a saved user instance, got {owner!r}")
    return pk


def _checked_record(record: DataRecord) -> DataRecord:
    """``record`` as a device would receive it: the wire codec's checks, and the Drive key rules."""
    checked = record_from_wire(record_to_wire(record), "record")
    if checked.object_storage_key:
        validate_key(checked.object_storage_key, DRIVE_APP_ID)
    return checked


def _require_blob(owner: Any, key: str) -> None:
    if key and not DjangoObjectStorage(owner).has(key):
        raise BlobMissing(f"no blob stored at {key!r} for this owner; store it first (or use put_file)")


def _locked_record(owner: Any, record_id: str) -> DataRecord | None:
    m = SharedRecord.objects.select_for_update().filter(owner_id=_owner_id(owner), record_id=record_id).first()
    return record_from_model(m) if m is not None else None


def _write_record(owner: Any, record: DataRecord) -> DataRecord:
    """Merge ``record`` through the exchange's adapter; announce it after commit."""
    if not OrmDatabaseAdapter(owner).merge([record])[0]:
        raise WriteConflict(f"record {record.id!r} was written concurrently by a device with a newer HLC")
    notify_records_applied(owner, [record.id], [record.updated_at.node_id], source="server")
    return record


def put_record(
    owner: Any,
    *,
    type: str,
    record_id: str | None = None,
    content_hash: str = "",
    object_storage_key: str = "",
    mime_type: str | None = None,
    size_bytes: int = 0,
    original_filename: str | None = None,
    origin_app_id: str = "",
    parent_id: str | None = None,
    label: str | None = None,
) -> DataRecord:
    """Create a shared record, or replace one whole (a live version; a tombstone comes back to life).

    ``record_id`` defaults to a new ULID. A replaced record keeps its ``created_at``
    and gets the next ``version``. ``object_storage_key``, when given, must be a
    Drive key whose blob this owner's storage already holds (``BlobMissing`` else);
    ``put_file`` stores the bytes and writes the record in one call.
    """
    with transaction.atomic(using=synced_db().alias):
        current = _locked_record(owner, record_id) if record_id else None
        stamp = _stamp(current.updated_at if current else None)
        record = _checked_record(DataRecord(
            id=record_id or new_ulid(stamp.wall_time), type=type,
            created_at=current.created_at if current else stamp, updated_at=stamp,
            content_hash=content_hash, object_storage_key=object_storage_key, size_bytes=size_bytes,
            origin_app_id=origin_app_id, version=current.version + 1 if current else 1,
            mime_type=mime_type, original_filename=original_filename, parent_id=parent_id, label=label,
        ))
        _require_blob(owner, record.object_storage_key)
        if current is None:
            check_record_quota(_owner_id(owner), True, DRIVE_APP_ID, SyncExchangeRequest(records=[record]))
        return _write_record(owner, record)


def update_record(owner: Any, record_id: str, **changes: Any) -> DataRecord:
    """Change metadata fields (``EDITABLE_RECORD_FIELDS``) of a live record; its next version.

    Unknown field names raise ``TypeError``; fields that are not editable
    metadata raise ``ValueError``; a missing or deleted record ``RecordNotFound``.
    """
    unknown = sorted(set(changes) - _RECORD_FIELDS)
    if unknown:
        raise TypeError(f"update_record() got unknown field(s): {', '.join(unknown)}")
    fixed = sorted(set(changes) - EDITABLE_RECORD_FIELDS)
    if fixed:
        raise ValueError(f"update_record() cannot change {', '.join(fixed)}; editable fields: "
                         f"{', '.join(sorted(EDITABLE_RECORD_FIELDS))} (replace the content with put_record/put_file)")
    if not changes:
        raise ValueError("update_record() needs at least one field to change")
    with transaction.atomic(using=synced_db().alias):
        current = _locked_record(owner, record_id)
        if current is None or current.is_deleted:
            raise RecordNotFound(f"no live shared record {record_id!r} for this owner")
        stamp = _stamp(current.updated_at)
        record = _checked_record(msgspec.structs.replace(current, updated_at=stamp, version=current.version + 1,
                                                     **changes))
        return _write_record(owner, record)


def delete_record(owner: Any, record_id: str) -> DataRecord:
    """Soft-delete a record: a tombstone with ``deleted_at == updated_at`` (PROTOCOL §2) that devices receive.

    Deleting a record already deleted changes nothing and returns its tombstone;
    an unknown id raises ``RecordNotFound``. The blob stays (sync never deletes blobs).
    """
    with transaction.atomic(using=synced_db().alias):
        current = _locked_record(owner, record_id)
        if current is None:
            raise RecordNotFound(f"no shared record {record_id!r} for this owner")
        if current.is_deleted:
            return current
        stamp = _stamp(current.updated_at)
        return _write_record(owner, tombstone_of(current, stamp))


def get_record(owner: Any, record_id: str) -> DataRecord | None:
    """The stored record, tombstones included; ``None`` when this owner has none with that id."""
    return OrmDatabaseAdapter(owner).get(record_id)


def records(owner: Any, *, include_deleted: bool = False) -> list[DataRecord]:
    """Every shared record of ``owner`` in HLC order; tombstones only with ``include_deleted``."""
    qs = SharedRecord.objects.filter(owner_id=_owner_id(owner)).order_by("updated_at")
    if not include_deleted:
        qs = qs.filter(deleted_at__isnull=True)
    return [record_from_model(m) for m in qs]


def _spool(data: bytes | IO[bytes], limit: int) -> tuple[IO[bytes] | bytes, str, int]:
    """``(source, sha256, size)``: bytes as they are; a stream copied to a temporary file while hashed.

    The key names the hash, so it is known only once every byte is read; a
    stream goes to disk on the way, never whole into memory.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > limit:
            raise BlobTooLarge(f"blob is larger than {limit} bytes")
        return raw, hashlib.sha256(raw).hexdigest(), len(raw)
    spool = tempfile.TemporaryFile()
    try:
        digest = hashlib.sha256()
        size = 0
        while chunk := data.read(CHUNK_SIZE):
            size += len(chunk)
            if size > limit:
                raise BlobTooLarge(f"blob is larger than {limit} bytes")
            digest.update(chunk)
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, digest.hexdigest(), size


def put_file(
    owner: Any,
    data: bytes | IO[bytes],
    *,
    type: str,
    mime_type: str | None = None,
    original_filename: str | None = None,
    label: str | None = None,
    parent_id: str | None = None,
    origin_app_id: str = "",
    record_id: str | None = None,
) -> DataRecord:
    """Store ``data`` (bytes or a binary stream, read in chunks) and write its shared record.

    The blob goes to ``shared/<category>/<hash[:2]>/<hash>`` in the owner's
    storage first; the record is written only once the bytes are stored. The
    blob size limit and the owner's blob quota apply as to an upload
    (``QuotaExceeded``; ``BlobTooLarge`` past ``MAX_BLOB_BYTES``). ``mime_type``
    defaults to ``type``.
    """
    owner_id = _owner_id(owner)
    if not isinstance(type, str) or not type.split("/", 1)[0] or "/" not in type:
        raise ValueError(f"type must be '<category>/<format>', got {type!r}")
    # Check the key's shape before reading a byte: its category comes from ``type``.
    validate_key(shared_object_key(type, "0" * 64), DRIVE_APP_ID)
    source, digest, size = _spool(data, sync_settings.MAX_BLOB_BYTES)
    key = shared_object_key(type, digest)
    try:
        # As for an upload: every other blob counts; the same key replaced frees its old size.
        remaining = blob_bytes_remaining(owner_id, key)
        if remaining is not None and size > remaining:
            raise QuotaExceeded(f"A blob of {size} bytes exceeds this owner's remaining quota of {remaining} bytes.")
        storage = DjangoObjectStorage(owner)
        content_type = mime_type or type
        storage.put(key, source, content_type, sha256=digest)
    finally:
        if not isinstance(source, bytes):
            source.close()
    notify_blob_stored(owner, DRIVE_APP_ID, key, size, content_type, source="server")
    return put_record(owner, type=type, record_id=record_id, content_hash=digest, object_storage_key=key,
                      mime_type=content_type, size_bytes=size, original_filename=original_filename,
                      origin_app_id=origin_app_id, parent_id=parent_id, label=label)


# -- app rows (per-app channels) ---------------------------------------------------


def _pk_tuple(pk: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(pk, (str, bytes)) or not isinstance(pk, Sequence):
        raise TypeError(f"pk must be a sequence of the primary-key values (e.g. ['n1']), got {pk!r}")
    return tuple(pk)


def _data_columns(row: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A row's own columns, as JSON gives them back: the bookkeeping columns are the server's to set.

    Rows travel as JSON; a value JSON cannot carry (a datetime, a set, NaN)
    would make every later exchange of this channel fail to encode its answer.
    """
    if not isinstance(row, Mapping):
        raise TypeError(f"{what} must be a mapping of column names to values, got {type(row).__name__}")
    data = {k: v for k, v in row.items() if k not in BOOKKEEPING}
    if not all(isinstance(k, str) for k in data):
        raise TypeError(f"{what}: column names must be strings")
    try:
        return json.loads(json.dumps(data, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: every value must be JSON (str, int, float, bool, None, list, dict): {err}") from None


class _Rows:
    """One write of app rows: the exchange's applier, on one owner, in one transaction."""

    def __init__(self, owner: Any, app_id: str, table: str) -> None:
        _owner_id(owner)
        self.owner = owner
        self.app_id = app_id
        self.table = table
        self.source = OrmAppSource(owner)
        ns = self.source.namespaces.get(app_id)
        if ns is None:
            raise SyncError(f"unknown app {app_id!r} (register it with: manage.py starkeep_app register)",
                            code="unknown_app")
        info = ns.table(table)
        if info is None:
            raise SyncError(f"unknown table {app_id}.{table}", code="unknown_table")
        self.info = info

    def where(self, pk: Sequence[Any]) -> dict[str, Any]:
        values = _pk_tuple(pk)
        if len(values) != len(self.info.pk_columns):
            raise ValueError(f"{self.app_id}.{self.table} has primary key {list(self.info.pk_columns)}; "
                             f"got {len(values)} value(s)")
        return dict(zip(self.info.pk_columns, values, strict=True))

    def pk_of(self, entry: AppSyncableRowEntry) -> tuple[Any, ...]:
        return resolve_entry(self.source.namespaces, entry)[1]

    def write(self, op: str, row: Mapping[str, Any] | None, where: Mapping[str, Any] | None,
              pk: tuple[Any, ...], current: Mapping[str, Any] | None) -> dict[str, Any]:
        """Stamp and apply one entry through ``OrmApplier.apply_many``; the stored row after it."""
        stamp = _stamp(deserialize_hlc(current[UPDATED_AT]) if current else None)
        entry = AppSyncableRowEntry(stamp, self.app_id, self.table, op, row, where)  # type: ignore[arg-type]
        entry = entry_from_wire(entry_to_wire(entry), "row")  # what a device would be sent, checked alike
        if self.table == FILE_RECORDS_TABLE and op != "delete" and row and row.get("object_storage_key"):
            key = str(row["object_storage_key"])
            validate_key(key, self.app_id)
            _require_blob(self.owner, key)
        if current is None:
            check_record_quota(_owner_id(self.owner), False, self.app_id,
                               SyncExchangeRequest(app_syncable_rows=[entry]))
        written: list[AppSyncableRowEntry] = []
        _, _, error = self.source.applier.apply_many([entry], written)
        if error is not None:
            raise error
        if not written:
            raise WriteConflict(f"{self.app_id}.{self.table} {list(pk)!r} was written concurrently with a newer HLC")
        notify_rows_applied(self.owner, self.app_id, [(self.table, pk)], [stamp.node_id], source="server")
        stored = self.source.applier.get_row(self.app_id, self.table, pk)
        assert stored is not None
        return stored


def put_row(owner: Any, app_id: str, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Write a full row (LWW upsert, like a device's ``insert``); returns the stored row.

    The row must carry its primary-key columns. ``updated_at``, ``deleted_at`` and
    ``node_id`` in ``row`` are ignored (a row from ``get_row`` can be passed back
    changed): the stamp is the server's, and the row written is live.
    """
    rows_ = _Rows(owner, app_id, table)
    data = _data_columns(row, "row")
    with transaction.atomic(using=synced_db().alias):
        probe = AppSyncableRowEntry(HLCTimestamp(0, 0, ""), app_id, table, "insert", data, None)
        pk = rows_.pk_of(probe)
        current = rows_.source.applier.lock_row(app_id, table, pk)
        return rows_.write("insert", data, None, pk, current)


def update_row(owner: Any, app_id: str, table: str, pk: Sequence[Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Patch columns of a live row (like a device's ``update``); returns the stored row.

    Primary-key columns cannot change; bookkeeping columns in ``changes`` are
    ignored. A missing or deleted row raises ``RowNotFound``.
    """
    rows_ = _Rows(owner, app_id, table)
    where = rows_.where(pk)
    data = _data_columns(changes, "changes")
    if not data:
        raise ValueError("update_row() needs at least one column to change")
    with transaction.atomic(using=synced_db().alias):
        key = tuple(where.values())
        current = rows_.source.applier.lock_row(app_id, table, key)
        if current is None or current.get(DELETED_AT):
            raise RowNotFound(f"no live row {list(key)!r} in {app_id}.{table} for this owner")
        return rows_.write("update", data, where, key, current)


def delete_row(owner: Any, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any]:
    """Soft-delete a row (``deleted_at == updated_at``, PROTOCOL §2); returns the tombstone.

    Deleting a row already deleted changes nothing and returns its tombstone;
    an unknown key raises ``RowNotFound``.
    """
    rows_ = _Rows(owner, app_id, table)
    where = rows_.where(pk)
    with transaction.atomic(using=synced_db().alias):
        key = tuple(where.values())
        current = rows_.source.applier.lock_row(app_id, table, key)
        if current is None:
            raise RowNotFound(f"no row {list(key)!r} in {app_id}.{table} for this owner")
        if current.get(DELETED_AT):
            return current
        return rows_.write("delete", None, where, key, current)


def get_row(owner: Any, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
    """The stored row (tombstones included, with ``updated_at``, ``deleted_at``, ``node_id``), or ``None``."""
    rows_ = _Rows(owner, app_id, table)
    return rows_.source.applier.get_row(app_id, table, tuple(rows_.where(pk).values()))


def rows(owner: Any, app_id: str, table: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    """The stored rows of one table, in HLC order; tombstones only with ``include_deleted``."""
    rows_ = _Rows(owner, app_id, table)
    stored = sorted(rows_.source.applier.rows(app_id, table), key=lambda r: r[UPDATED_AT])
    return [row for row in stored if include_deleted or not row.get(DELETED_AT)]
