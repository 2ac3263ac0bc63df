"""A plain-Python device store: records, app rows and sync state in one stdlib ``sqlite3`` file,
blobs in a directory. No Django needed.

    store = SqliteDeviceStore("device.db", blob_dir="blobs")
    engine = create_sync_engine(local_database=store.database, local_storage=store.storage,
                                sync_state=store.state("drive@https://cloud"), ...)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from ..core import paging
from ..core.approws import BOOKKEEPING, next_row, resolve_entries, row_to_entry
from ..core.constants import DELETED_AT, NODE_ID, UPDATED_AT
from ..core.hlc import HLCTimestamp, deserialize_hlc, serialize_hlc
from ..core.protocols import RecordPage, ScanPage
from ..core.records import AppSyncableNamespace, AppSyncableRowEntry, AppSyncableTableInfo, DataRecord, tombstone_of
from ..core.state import SqliteSyncStateStore
from ..core.watermarks import node_floor_bound
from .files import FileSystemObjectStorage

Watermarks = dict[str, HLCTimestamp]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sk_records (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, type TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, deleted_at TEXT,
    version INTEGER NOT NULL, content_hash TEXT NOT NULL, object_storage_key TEXT NOT NULL,
    mime_type TEXT, size_bytes INTEGER NOT NULL, original_filename TEXT, origin_app_id TEXT NOT NULL,
    parent_id TEXT, label TEXT, node_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sk_records_node ON sk_records (node_id, updated_at);
CREATE TABLE IF NOT EXISTS sk_app_rows (
    app_id TEXT NOT NULL, tbl TEXT NOT NULL, pk TEXT NOT NULL, data TEXT NOT NULL,
    updated_at TEXT NOT NULL, deleted_at TEXT, node_id TEXT NOT NULL,
    PRIMARY KEY (app_id, tbl, pk)
);
CREATE INDEX IF NOT EXISTS sk_app_rows_node ON sk_app_rows (app_id, tbl, node_id, updated_at);
CREATE TABLE IF NOT EXISTS sk_coverage (
    scope TEXT NOT NULL, node_id TEXT NOT NULL, hlc TEXT NOT NULL, PRIMARY KEY (scope, node_id)
);
CREATE TABLE IF NOT EXISTS sk_namespaces (
    app_id TEXT PRIMARY KEY, files_enabled INTEGER NOT NULL, tables TEXT NOT NULL
);
"""

_RECORD_COLS = (
    "id", "kind", "type", "created_at", "updated_at", "deleted_at", "version", "content_hash",
    "object_storage_key", "mime_type", "size_bytes", "original_filename", "origin_app_id",
    "parent_id", "label", "node_id",
)
RECORDS_SCOPE = "records"
#: Keys per ``IN (...)`` read: under SQLite's smallest bound on parameters (999).
_IN_CHUNK = 900


def _record_row(r: DataRecord) -> tuple[Any, ...]:
    return (
        r.id, r.kind, r.type, serialize_hlc(r.created_at), serialize_hlc(r.updated_at),
        serialize_hlc(r.deleted_at) if r.deleted_at is not None else None, r.version, r.content_hash,
        r.object_storage_key, r.mime_type, r.size_bytes, r.original_filename, r.origin_app_id,
        r.parent_id, r.label, r.updated_at[2],
    )


def _record_from(row: sqlite3.Row | tuple[Any, ...]) -> DataRecord:
    d = dict(zip(_RECORD_COLS, row, strict=True))
    return DataRecord(
        id=d["id"], kind=d["kind"], type=d["type"], created_at=deserialize_hlc(d["created_at"]),
        updated_at=deserialize_hlc(d["updated_at"]),
        deleted_at=deserialize_hlc(d["deleted_at"]) if d["deleted_at"] else None,
        version=d["version"], content_hash=d["content_hash"], object_storage_key=d["object_storage_key"],
        mime_type=d["mime_type"], size_bytes=d["size_bytes"], original_filename=d["original_filename"],
        origin_app_id=d["origin_app_id"], parent_id=d["parent_id"], label=d["label"],
    )


class _Db:
    """The connection and its lock, shared by the adapters of one store."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.RLock()
        with self.lock, conn:
            conn.executescript(_SCHEMA)

    def coverage(self, scopes: Sequence[str]) -> Watermarks:
        out: Watermarks = {}
        marks = ",".join("?" * len(scopes))
        with self.lock:
            rows = self.conn.execute(
                f"SELECT node_id, hlc FROM sk_coverage WHERE scope IN ({marks})", tuple(scopes)
            ).fetchall()
        for node, hlc in rows:
            h = deserialize_hlc(hlc)
            if node not in out or h > out[node]:
                out[node] = h
        return out

    def bump(self, scope: str, hlcs: Iterable[HLCTimestamp]) -> None:
        self.conn.executemany(
            "INSERT INTO sk_coverage (scope, node_id, hlc) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, node_id) DO UPDATE SET hlc = excluded.hlc WHERE sk_coverage.hlc < excluded.hlc",
            [(scope, node, serialize_hlc(h)) for node, h in paging.coverage_bump(hlcs).items()],
        )

    def since(self, select: str, params: tuple[Any, ...], coverage: Watermarks,
              watermarks: Mapping[str, HLCTimestamp], limit: int | None, cursor: str | None,
              exclude: Collection[tuple[Any, HLCTimestamp]] | None = None,
              ident: Callable[[Any], str] = str) -> tuple[list[tuple[Any, ...]], bool]:
        """Rows above the per-node floors in HLC order (:func:`paging.page_since`).

        ``select`` selects rows whose first column is the row's identity text and
        whose last is ``updated_at``; ``ident`` turns an excluded id into that text.
        """
        def read(node: str, floor: HLCTimestamp, fetch: int | None,
                 skip: Collection[tuple[Any, HLCTimestamp]]) -> list[tuple[Any, ...]]:
            op, bound = node_floor_bound(node, floor)
            rows = self.conn.execute(
                f"{select} AND node_id = ? AND updated_at {op} ? ORDER BY updated_at LIMIT ?",
                (*params, node, serialize_hlc(bound), -1 if fetch is None else fetch + len(skip)),
            ).fetchall()
            if skip:
                drop = {(ident(i), serialize_hlc(h)) for i, h in skip}
                rows = [r for r in rows if (r[0], r[-1]) not in drop][:fetch]
            return rows

        with self.lock:
            return paging.page_since(coverage, watermarks, read, _last, limit, cursor, exclude)

    def count(self, table: str, where: str, params: tuple[Any, ...], coverage: Watermarks,
              watermarks: Mapping[str, HLCTimestamp]) -> int:
        def count_node(node: str, floor: HLCTimestamp) -> int:
            op, bound = node_floor_bound(node, floor)
            return int(self.conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {where} AND node_id = ? AND updated_at {op} ?",
                (*params, node, serialize_hlc(bound)),
            ).fetchone()[0])

        with self.lock:
            return paging.count_since(coverage, watermarks, count_node)


def _last(row: tuple[Any, ...]) -> Any:
    return row[-1]


class SqliteDatabaseAdapter:
    """Shared records in sqlite (the core's ``DatabaseAdapter``)."""

    def __init__(self, db: _Db) -> None:
        self._db = db

    def get(self, id: str) -> DataRecord | None:
        with self._db.lock:
            row = self._db.conn.execute(
                f"SELECT {', '.join(_RECORD_COLS)} FROM sk_records WHERE id = ?", (id,)
            ).fetchone()
        return _record_from(row) if row else None

    def _write(self, records: Sequence[DataRecord], conditional: bool) -> list[bool]:
        cols = ", ".join(_RECORD_COLS)
        marks = ", ".join("?" * len(_RECORD_COLS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _RECORD_COLS[1:])
        where = " WHERE sk_records.updated_at < excluded.updated_at" if conditional else ""
        sql = (f"INSERT INTO sk_records ({cols}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}"
               f"{where} RETURNING id")
        out = []
        with self._db.lock, self._db.conn:
            for r in records:
                out.append(self._db.conn.execute(sql, _record_row(r)).fetchone() is not None)
            self._db.bump(RECORDS_SCOPE, (r.updated_at for r in records))
        return out

    def put(self, record: DataRecord) -> None:
        self._write([record], conditional=False)

    def delete(self, id: str, hlc: HLCTimestamp) -> DataRecord | None:
        with self._db.lock:
            r = self.get(id)
            if r is None:
                return None
            new = tombstone_of(r, hlc)
            self.put(new)
            return new

    def merge(self, records: Sequence[DataRecord]) -> list[bool]:
        return self._write(records, conditional=True)

    def query(self, limit: int, cursor: str | None = None) -> RecordPage:
        return self.query_since({}, limit, cursor)

    def query_since(self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None = None,
                    exclude: Collection[tuple[str, HLCTimestamp]] | None = None) -> RecordPage:
        rows, more = self._db.since(
            f"SELECT {', '.join(_RECORD_COLS)}, updated_at FROM sk_records WHERE 1 = 1", (),
            self.get_node_watermarks(), watermarks, limit, cursor, exclude,
        )
        records = [_record_from(r[:-1]) for r in rows]
        return RecordPage(records, rows[-1][-1] if more and rows else None, more)

    def count_since(self, watermarks: Mapping[str, HLCTimestamp]) -> int:
        return self._db.count("sk_records", "1 = 1", (), self.get_node_watermarks(), watermarks)

    def get_node_watermarks(self) -> Watermarks:
        return self._db.coverage([RECORDS_SCOPE])

    def clear(self) -> None:
        """Forget every record and its coverage (a wipe)."""
        with self._db.lock, self._db.conn:
            self._db.conn.execute("DELETE FROM sk_records")
            self._db.conn.execute("DELETE FROM sk_coverage WHERE scope = ?", (RECORDS_SCOPE,))

    def all(self) -> list[DataRecord]:
        with self._db.lock:
            rows = self._db.conn.execute(f"SELECT {', '.join(_RECORD_COLS)} FROM sk_records").fetchall()
        return [_record_from(r) for r in rows]


class SqliteNamespaceStore:
    def __init__(self, db: _Db) -> None:
        self._db = db

    def register(self, namespace: AppSyncableNamespace) -> None:
        tables = json.dumps([[t.name, list(t.pk_columns)] for t in namespace.tables])
        with self._db.lock, self._db.conn:
            self._db.conn.execute(
                "INSERT INTO sk_namespaces (app_id, files_enabled, tables) VALUES (?, ?, ?) "
                "ON CONFLICT (app_id) DO UPDATE SET files_enabled = excluded.files_enabled, tables = excluded.tables",
                (namespace.app_id, int(namespace.files_enabled), tables),
            )

    @staticmethod
    def _build(row: tuple[Any, ...]) -> AppSyncableNamespace:
        return AppSyncableNamespace(
            row[0], [AppSyncableTableInfo(n, pk) for n, pk in json.loads(row[2])], files_enabled=bool(row[1])
        )

    def get(self, app_id: str) -> AppSyncableNamespace | None:
        with self._db.lock:
            row = self._db.conn.execute(
                "SELECT app_id, files_enabled, tables FROM sk_namespaces WHERE app_id = ?", (app_id,)
            ).fetchone()
        return self._build(row) if row else None

    def list(self) -> list[AppSyncableNamespace]:
        with self._db.lock:
            rows = self._db.conn.execute("SELECT app_id, files_enabled, tables FROM sk_namespaces").fetchall()
        return [self._build(r) for r in rows]


def _pk_text(pk: Sequence[Any]) -> str:
    return json.dumps(list(pk), separators=(",", ":"))


class SqliteApplier:
    def __init__(self, db: _Db, namespaces: SqliteNamespaceStore) -> None:
        self._db = db
        self._namespaces = namespaces

    @staticmethod
    def _to_row(data: str, updated_at: str, deleted_at: str | None, node_id: str) -> dict[str, Any]:
        row = json.loads(data)
        row[UPDATED_AT], row[DELETED_AT], row[NODE_ID] = updated_at, deleted_at, node_id
        return row

    def apply(self, entry: AppSyncableRowEntry) -> bool:
        _, applied, error = self.apply_many([entry])
        if error is not None:
            raise error
        return applied == 1

    def apply_many(self, entries: Sequence[AppSyncableRowEntry], written: list[AppSyncableRowEntry] | None = None,
                   keys: Sequence[tuple[Any, ...]] | None = None) -> tuple[int, int, Exception | None]:
        """``BatchApplier.apply_many`` in one transaction: the stored rows of the run read at once,
        LWW per entry in order (``next_row``), then one upsert of the rows that changed and one
        coverage update per table (losers included)."""
        infos, pks, error = resolve_entries(self._namespaces, entries, keys)
        if not pks:
            return 0, 0, error
        # Those that resolved: ``entries`` may go on past the first that did not.
        keyed = [((e.app_id, e.table, _pk_text(pk)), e, info, pk)
                 for e, info, pk in zip(entries, infos, pks, strict=False)]
        with self._db.lock, self._db.conn:
            stored = self._stored([k for k, *_ in keyed])
            dirty: dict[tuple[str, str, str], dict[str, Any]] = {}
            covered: dict[str, list[HLCTimestamp]] = {}
            applied = 0
            for key, entry, info, pk in keyed:
                new = next_row(stored.get(key), entry, info, pk)
                covered.setdefault(f"{entry.app_id}/{entry.table}", []).append(entry.timestamp)
                if new is None:
                    continue
                stored[key] = dirty[key] = new
                applied += 1
                if written is not None:
                    written.append(entry)
            for scope, hlcs in covered.items():
                self._db.bump(scope, hlcs)
            self._db.conn.executemany(
                "INSERT INTO sk_app_rows (app_id, tbl, pk, data, updated_at, deleted_at, node_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, tbl, pk) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at, deleted_at = excluded.deleted_at, node_id = excluded.node_id",
                [(*key, json.dumps({k: v for k, v in new.items() if k not in BOOKKEEPING}), new[UPDATED_AT],
                  new.get(DELETED_AT), new[NODE_ID]) for key, new in dirty.items()],
            )
        return len(pks), applied, error

    def _stored(self, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The stored rows of these ``(app_id, tbl, pk)`` keys (lock held), read a table and a chunk at a time."""
        by_table: dict[tuple[str, str], set[str]] = {}
        for app_id, table, pk in keys:
            by_table.setdefault((app_id, table), set()).add(pk)
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for (app_id, table), pks in by_table.items():
            listed = sorted(pks)
            for start in range(0, len(listed), _IN_CHUNK):
                chunk = listed[start:start + _IN_CHUNK]
                for pk, *found in self._db.conn.execute(
                    "SELECT pk, data, updated_at, deleted_at, node_id FROM sk_app_rows WHERE app_id = ? AND tbl = ? "
                    f"AND pk IN ({', '.join('?' * len(chunk))})", (app_id, table, *chunk),
                ):
                    out[(app_id, table, pk)] = self._to_row(*found)
        return out

    def scan_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp],
                   limit: int | None = None, cursor: str | None = None,
                   exclude: Collection[tuple[tuple[Any, ...], HLCTimestamp]] | None = None) -> ScanPage:
        rows, more = self._db.since(
            "SELECT pk, data, updated_at, deleted_at, node_id, updated_at FROM sk_app_rows "
            "WHERE app_id = ? AND tbl = ?",
            (app_id, table), self.get_node_watermarks(app_id, table), since, limit, cursor, exclude, _pk_text,
        )
        entries = [row_to_entry(app_id, table, self._to_row(*r[1:5])) for r in rows]
        return ScanPage(entries, rows[-1][-1] if more and rows else None, more)

    def count_since(self, app_id: str, table: str, since: Mapping[str, HLCTimestamp]) -> int:
        return self._db.count("sk_app_rows", "app_id = ? AND tbl = ?", (app_id, table),
                              self.get_node_watermarks(app_id, table), since)

    def get_node_watermarks(self, app_id: str, table: str) -> Watermarks:
        return self._db.coverage([f"{app_id}/{table}"])

    def get_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        with self._db.lock:
            found = self._db.conn.execute(
                "SELECT data, updated_at, deleted_at, node_id FROM sk_app_rows WHERE app_id = ? AND tbl = ? AND pk = ?",
                (app_id, table, _pk_text(pk)),
            ).fetchone()
        return self._to_row(*found) if found else None

    def rows(self, app_id: str, table: str) -> list[dict[str, Any]]:
        with self._db.lock:
            found = self._db.conn.execute(
                "SELECT data, updated_at, deleted_at, node_id FROM sk_app_rows WHERE app_id = ? AND tbl = ?",
                (app_id, table),
            ).fetchall()
        return [self._to_row(*f) for f in found]


class SqliteAppSource:
    def __init__(self, db: _Db) -> None:
        self.namespaces = SqliteNamespaceStore(db)
        self.applier = SqliteApplier(db, self.namespaces)

    def rows(self, app_id: str, table: str) -> list[dict[str, Any]]:
        return self.applier.rows(app_id, table)

    def get_row(self, app_id: str, table: str, pk: Sequence[Any]) -> dict[str, Any] | None:
        return self.applier.get_row(app_id, table, pk)

    def clear(self) -> None:
        """Forget every app row and its coverage (namespaces stay registered)."""
        with self.applier._db.lock, self.applier._db.conn:
            self.applier._db.conn.execute("DELETE FROM sk_app_rows")
            self.applier._db.conn.execute("DELETE FROM sk_coverage WHERE scope != ?", (RECORDS_SCOPE,))


class SqliteDeviceStore:
    """Everything a Python device needs on disk: ``database``, ``app_source``, ``storage``, ``state()``."""

    def __init__(self, path: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None,
                 namespaces: Iterable[AppSyncableNamespace] = ()) -> None:
        self.conn = sqlite3.connect(str(path), check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a crash of the process loses nothing committed; only
        # power loss can drop the last transactions, which a re-sync restores.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._db = _Db(self.conn)
        self.database = SqliteDatabaseAdapter(self._db)
        self.app_source = SqliteAppSource(self._db)
        for ns in namespaces:
            self.app_source.namespaces.register(ns)
        self.storage = FileSystemObjectStorage(blob_dir if blob_dir is not None else f"{path}-blobs")

    def state(self, namespace: str = "default") -> SqliteSyncStateStore:
        """Requester state for one (peer, channel) pair, in the same file."""
        return SqliteSyncStateStore(self.conn, namespace)

    def close(self) -> None:
        self.conn.close()
