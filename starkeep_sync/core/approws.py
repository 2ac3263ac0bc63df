"""Pure LWW rules for app-syncable rows, shared by every applier."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from .constants import DELETED_AT, FILE_RECORDS_COLUMNS, FILE_RECORDS_TABLE, NODE_ID, UPDATED_AT
from .exceptions import SyncError
from .hlc import HLCTimestamp, deserialize_hlc, serialize_hlc
from .records import AppSyncableRowEntry, AppSyncableTableInfo

BOOKKEEPING = (UPDATED_AT, DELETED_AT, NODE_ID)
#: Longest primary key of an app row, as its canonical JSON text (what a server stores it under).
MAX_ROW_KEY_LENGTH = 1024
#: Longest id of a ``_starkeep_sync_records`` row (the same bound as a shared record's id).
MAX_FILE_RECORD_ID_LENGTH = 256
#: A one-string key at most this long fits both bounds above whatever its characters: as ASCII JSON
#: each takes at most 12 (a surrogate pair's two escapes), plus the brackets and quotes.
_SHORT_KEY = (MAX_ROW_KEY_LENGTH - 4) // 12


def row_key_text(pk: Sequence[Any]) -> str:
    """The canonical text of a primary key: compact JSON, ASCII only, the same for equal keys."""
    if len(pk) == 1:
        # The usual one-column key, as json.dumps writes it, without its encoder: a server computes this
        # several times per pushed row, and json.dumps took 13 times as long (2.0 against 0.15 us).
        value = pk[0]
        if type(value) is str:
            return f"[{encode_basestring_ascii(value)}]"
        if type(value) is int:
            return f"[{value}]"
    return json.dumps(list(pk), separators=(",", ":"), sort_keys=True)


class EntryRefused(SyncError, ValueError):
    """An app row entry that no applier may apply."""

    code = "entry_refused"
    status = 400


def entry_pk(entry: AppSyncableRowEntry, table: AppSyncableTableInfo) -> tuple[Any, ...]:
    """Primary-key values of the row an entry targets: from ``where``, else from ``row``."""
    source: Mapping[str, Any] | None
    if entry.op == "insert":
        source = entry.row
    else:
        source = entry.where if entry.where else entry.row
    if not source:
        raise EntryRefused(f"{entry.app_id}.{entry.table}: entry names no primary key")
    columns = table.pk_columns
    try:
        pk = (source[columns[0]],) if len(columns) == 1 else tuple(source[c] for c in columns)
    except KeyError as err:
        raise EntryRefused(
            f"{entry.app_id}.{entry.table}: primary-key column {err.args[0]!r} missing"
        ) from None
    if len(pk) == 1 and type(pk[0]) is str and len(pk[0]) <= _SHORT_KEY:
        # The usual key, a short string: no JSON text is needed to know it fits. Checking 10,000
        # entries took 23 ms without this and the one-column lookup above, 11 with them (same-run).
        return pk
    for c, v in zip(columns, pk, strict=True):
        if v is None or isinstance(v, (dict, list)):
            raise EntryRefused(f"{entry.app_id}.{entry.table}: primary-key column {c!r} must be a scalar")
    # Too long a key is refused here, by name, rather than failing in a database column later.
    if entry.table == FILE_RECORDS_TABLE and len(str(pk[0])) > MAX_FILE_RECORD_ID_LENGTH:
        raise EntryRefused(f"{entry.app_id}.{entry.table}: primary-key column {table.pk_columns[0]!r} is longer "
                           f"than {MAX_FILE_RECORD_ID_LENGTH} characters")
    if len(row_key_text(pk)) > MAX_ROW_KEY_LENGTH:
        raise EntryRefused(f"{entry.app_id}.{entry.table}: primary key is longer than {MAX_ROW_KEY_LENGTH} "
                           "characters (as compact JSON)")
    return pk


def check_entry(entry: AppSyncableRowEntry, table: AppSyncableTableInfo) -> tuple[Any, ...]:
    """Validate an entry against its table; return its primary key."""
    pk = entry_pk(entry, table)
    row = entry.row or {}
    if UPDATED_AT in row and row[UPDATED_AT] != serialize_hlc(entry.timestamp):
        raise EntryRefused(
            f"{entry.app_id}.{entry.table}: row updated_at {row[UPDATED_AT]!r} disagrees "
            f"with the entry timestamp {serialize_hlc(entry.timestamp)!r}"
        )
    if entry.op == "update":
        for c, v in zip(table.pk_columns, pk, strict=True):
            if c in row and row[c] != v:
                raise EntryRefused(f"{entry.app_id}.{entry.table}: update must not change key column {c!r}")
    if entry.table == FILE_RECORDS_TABLE and entry.op != "delete":
        key = row.get("object_storage_key")
        if key is not None and not isinstance(key, str):
            raise EntryRefused(f"{entry.app_id}.{entry.table}: object_storage_key must be a string")
    return pk


def resolve_table(namespaces: Any, entry: AppSyncableRowEntry) -> AppSyncableTableInfo:
    """The registered table an entry targets; ``SyncError`` naming what is unknown.

    ``namespaces`` is any store with ``get(app_id)`` (the core's namespace-store protocol).
    """
    ns = namespaces.get(entry.app_id)
    if ns is None:
        raise SyncError(f"unknown app {entry.app_id!r}", code="unknown_app")
    info = ns.table(entry.table)
    if info is None:
        raise SyncError(f"unknown table {entry.app_id}.{entry.table}", code="unknown_table")
    return info


def resolve_entry(namespaces: Any, entry: AppSyncableRowEntry) -> tuple[AppSyncableTableInfo, tuple[Any, ...]]:
    """The registered table an entry targets and its primary key; ``SyncError`` naming what is unknown,
    ``EntryRefused`` for an entry its table cannot take (``check_entry``)."""
    info = resolve_table(namespaces, entry)
    return info, check_entry(entry, info)


def resolve_entries(
    namespaces: Any, entries: Sequence[AppSyncableRowEntry], keys: Sequence[tuple[Any, ...]] | None = None,
) -> tuple[list[AppSyncableTableInfo], list[tuple[Any, ...]], Exception | None]:
    """``resolve_entry`` for a run of entries (each table looked up once), up to the first that fails.

    Returns, for the entries that resolved (the first ones), their tables and primary keys, in two
    lists (no tuple per entry: a 10,000-row page is held whole while it applies, and every object
    alive that long brings the next full garbage collection nearer); and the error (``SyncError``
    or ``ValueError``) of the first entry that did not resolve, else ``None``. ``keys``, when
    given, holds each entry's primary key as ``check_entry`` already found it against a table of
    the same namespace store (``ChannelView.inbound_items`` checks every inbound entry so): those
    entries are not checked again, only their tables are looked up.
    """
    tables: dict[tuple[str, str], AppSyncableTableInfo] = {}
    infos: list[AppSyncableTableInfo] = []
    pks: list[tuple[Any, ...]] = []
    for i, entry in enumerate(entries):
        try:
            info = tables.get((entry.app_id, entry.table))
            if info is None:
                info = tables[(entry.app_id, entry.table)] = resolve_table(namespaces, entry)
            pk = check_entry(entry, info) if keys is None else keys[i]
        except (SyncError, ValueError) as err:
            return infos, pks, err
        infos.append(info)
        pks.append(pk)
    return infos, pks, None


def stored_hlc(row: Mapping[str, Any]) -> HLCTimestamp:
    return deserialize_hlc(row[UPDATED_AT])


def next_row(
    stored: Mapping[str, Any] | None,
    entry: AppSyncableRowEntry,
    table: AppSyncableTableInfo,
    pk: tuple[Any, ...],
) -> dict[str, Any] | None:
    """The row after applying ``entry`` to ``stored``; ``None`` when nothing changes.

    LWW: only an entry strictly newer than the stored ``updated_at`` writes.
    An update for a row not held is dropped (the full row arrives as an insert).
    A delete for a row not held stores the tombstone so an older write cannot
    resurrect it. Both sides of a round end with the same tombstone: a scanned
    delete (full row, no ``where``) carries the sender's row, and a tombstone
    always has ``deleted_at == updated_at``.

    ``entry`` has passed ``check_entry`` (``pk`` is what it returned), so a
    ``updated_at`` its row carries is the entry's timestamp, serialized.
    """
    ts = entry.timestamp
    if stored is not None and stored_hlc(stored) >= ts:
        return None
    row = entry.row or {}
    stamp = row[UPDATED_AT] if UPDATED_AT in row else serialize_hlc(ts)
    if entry.op == "insert":
        # A copy less the bookkeeping, in the same key order as a comprehension that leaves it out:
        # 10,000 inserts took 27 ms with the comprehension and a second serialize_hlc, 10 so (same-run).
        new = dict(row)
        new.pop(UPDATED_AT, None)
        new.pop(NODE_ID, None)
        new[DELETED_AT] = new.pop(DELETED_AT, None)
    elif entry.op == "update":
        if stored is None:
            return None
        new = dict(stored)
        new.update({k: v for k, v in (entry.row or {}).items() if k not in BOOKKEEPING})
        if new.get(DELETED_AT):
            # A patched tombstone stays one, re-stamped: scans emit it as a delete,
            # which every receiver applies as deleted_at = updated_at = its HLC.
            new[DELETED_AT] = stamp
    else:  # delete
        if entry.row and not entry.where:
            # A scanned tombstone carries the sender's whole row: store that row, so
            # both sides hold the same tombstone (not the receiver's older content).
            new = {k: v for k, v in entry.row.items() if k not in BOOKKEEPING}
        else:
            new = dict(stored) if stored is not None else {
                k: v for k, v in (entry.row or {}).items() if k not in BOOKKEEPING
            }
        new[DELETED_AT] = stamp
    if entry.op != "insert":  # an insert's key is its row's (``check_entry`` took it from there)
        for c, v in zip(table.pk_columns, pk, strict=True):
            new[c] = v
    if table.name == FILE_RECORDS_TABLE:
        # The reserved table has fixed columns: every applier stores them all,
        # null when an entry (e.g. a tombstone for a row not held) leaves them out.
        for c in FILE_RECORDS_COLUMNS:
            new.setdefault(c, None)
    new[UPDATED_AT] = stamp
    new[NODE_ID] = ts.node_id
    return new


def row_to_entry(app_id: str, table: str, row: Mapping[str, Any]) -> AppSyncableRowEntry:
    """How a scan emits a stored row: live as ``insert``, tombstone as ``delete`` (full row)."""
    wire_row = {k: v for k, v in row.items() if k != NODE_ID}
    return AppSyncableRowEntry(
        deserialize_hlc(row[UPDATED_AT]),
        app_id,
        table,
        "delete" if row.get(DELETED_AT) else "insert",
        wire_row,
        None,
    )
