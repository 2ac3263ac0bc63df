"""Requester-side sync state: watermarks, clock state and blob state (PROTOCOL §5, §5c).

In memory (:class:`MemorySyncStateStore`) and on stdlib ``sqlite3``
(:class:`SqliteSyncStateStore`, durable across restarts).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from .hlc import ClockState, HLCTimestamp, deserialize_hlc, serialize_hlc
from .staged import MemoryBlobState, RejectedItem, StagedBlob

Watermarks = dict[str, HLCTimestamp]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS starkeep_sync_state (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS starkeep_sync_staged (
    namespace TEXT NOT NULL,
    ref TEXT NOT NULL,
    item_id TEXT NOT NULL,
    key TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mime_type TEXT,
    wanted INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (namespace, ref)
);
CREATE INDEX IF NOT EXISTS starkeep_sync_staged_due ON starkeep_sync_staged (namespace, wanted, next_attempt);
CREATE TABLE IF NOT EXISTS starkeep_sync_remote_keys (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS starkeep_sync_rejected (
    namespace TEXT NOT NULL,
    ref TEXT NOT NULL,
    item_id TEXT NOT NULL,
    hlc TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (namespace, ref)
);
"""

_STAGED_COLUMNS = "ref, item_id, key, file_hash, size, mime_type, wanted, attempts, next_attempt, last_error"


def _staged_row(e: StagedBlob) -> tuple[Any, ...]:
    return (e.ref, e.item_id, e.key, e.file_hash, e.size, e.mime_type, int(e.wanted), e.attempts,
            e.next_attempt, e.last_error)


def _staged_of(row: tuple[Any, ...]) -> StagedBlob:
    ref, item_id, key, file_hash, size, mime, wanted, attempts, next_attempt, error = row
    return StagedBlob(ref, item_id, key, file_hash, size, mime, bool(wanted), attempts, next_attempt, error)


def watermarks_to_json(w: Mapping[str, HLCTimestamp]) -> str:
    return json.dumps({node: [h[0], h[1], h[2]] for node, h in w.items()}, sort_keys=True)


def watermarks_from_json(text: str | None) -> Watermarks:
    if not text:
        return {}
    return {node: HLCTimestamp(int(v[0]), int(v[1]), str(v[2])) for node, v in json.loads(text).items()}


class SqliteSyncStateStore:
    """One namespace (a channel/peer pair) of state in a sqlite file shared with others."""

    def __init__(self, conn: sqlite3.Connection, namespace: str = "default") -> None:
        self._conn = conn
        self.namespace = namespace
        self._lock = threading.Lock()
        with self._lock, conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _get(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM starkeep_sync_state WHERE namespace = ? AND name = ?",
                (self.namespace, name),
            ).fetchone()
        return row[0] if row else None

    def _set(self, name: str, value: str) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO starkeep_sync_state (namespace, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, name) DO UPDATE SET value = excluded.value",
                (self.namespace, name, value),
            )

    def get_watermarks(self) -> Watermarks:
        return watermarks_from_json(self._get("own"))

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self._set("own", watermarks_to_json(w))

    def get_peer_watermarks(self) -> Watermarks:
        return watermarks_from_json(self._get("peer"))

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self._set("peer", watermarks_to_json(w))

    def get_hlc_clock_state(self) -> ClockState | None:
        text = self._get("clock")
        if not text:
            return None
        wall, counter = json.loads(text)
        return ClockState(int(wall), int(counter))

    def set_hlc_clock_state(self, state: ClockState) -> None:
        self._set("clock", json.dumps([state[0], state[1]]))

    # blob state (BlobStateStore)

    def _many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(sql, ((self.namespace, *row) for row in rows))

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, (self.namespace, *params)).fetchall()

    def stage_blobs(self, entries: Iterable[StagedBlob]) -> None:
        # The same blob for the same ref keeps its history; another blob starts afresh.
        self._many(
            f"INSERT INTO starkeep_sync_staged (namespace, {_STAGED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, ref) DO UPDATE SET "
            "wanted = CASE WHEN starkeep_sync_staged.key = excluded.key "
            "THEN max(starkeep_sync_staged.wanted, excluded.wanted) ELSE excluded.wanted END, "
            "attempts = CASE WHEN starkeep_sync_staged.key = excluded.key "
            "THEN starkeep_sync_staged.attempts ELSE excluded.attempts END, "
            "next_attempt = CASE WHEN starkeep_sync_staged.key = excluded.key "
            "THEN starkeep_sync_staged.next_attempt ELSE excluded.next_attempt END, "
            "last_error = CASE WHEN starkeep_sync_staged.key = excluded.key "
            "THEN starkeep_sync_staged.last_error ELSE excluded.last_error END, "
            "item_id = excluded.item_id, key = excluded.key, file_hash = excluded.file_hash, "
            "size = excluded.size, mime_type = excluded.mime_type",
            (_staged_row(e) for e in entries),
        )

    def staged_blobs(self, *, due_at: float | None = None, limit: int | None = None,
                     failing: bool = False) -> list[StagedBlob]:
        sql = f"SELECT {_STAGED_COLUMNS} FROM starkeep_sync_staged WHERE namespace = ?"
        params: list[Any] = []
        if due_at is not None:
            sql += " AND wanted = 1 AND next_attempt <= ?"
            params.append(due_at)
        if failing:
            sql += " AND attempts > 0"
        sql += " ORDER BY next_attempt, ref"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_staged_of(r) for r in self._select(sql, params)]

    def staged_for(self, refs: Collection[str]) -> list[StagedBlob]:
        found: list[StagedBlob] = []
        refs = list(refs)
        for start in range(0, len(refs), 500):  # within SQLite's bound on parameters
            chunk = refs[start:start + 500]
            found += [_staged_of(r) for r in self._select(
                f"SELECT {_STAGED_COLUMNS} FROM starkeep_sync_staged WHERE namespace = ? "
                f"AND ref IN ({', '.join('?' * len(chunk))})", chunk)]
        return found

    def update_staged(self, entries: Iterable[StagedBlob]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE starkeep_sync_staged SET wanted = ?, attempts = ?, next_attempt = ?, last_error = ? "
                "WHERE namespace = ? AND ref = ? AND key = ?",
                [(int(e.wanted), e.attempts, e.next_attempt, e.last_error, self.namespace, e.ref, e.key)
                 for e in entries],
            )

    def unstage_blobs(self, refs: Collection[str]) -> None:
        self._many("DELETE FROM starkeep_sync_staged WHERE namespace = ? AND ref = ?", ((r,) for r in refs))

    def staged_totals(self) -> tuple[int, int]:
        count, size = self._select(
            "SELECT count(*), coalesce(sum(size), 0) FROM starkeep_sync_staged WHERE namespace = ?")[0]
        return int(count), int(size)

    def remote_keys_known(self, keys: Collection[str]) -> set[str]:
        known: set[str] = set()
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            known.update(k for (k,) in self._select(
                "SELECT key FROM starkeep_sync_remote_keys WHERE namespace = ? "
                f"AND key IN ({', '.join('?' * len(chunk))})", chunk))
        return known

    def remember_remote_keys(self, keys: Collection[str]) -> None:
        self._many("INSERT OR IGNORE INTO starkeep_sync_remote_keys (namespace, key) VALUES (?, ?)",
                   ((k,) for k in keys))

    def forget_remote_keys(self, keys: Collection[str] | None = None) -> None:
        if keys is None:
            with self._lock, self._conn:
                self._conn.execute("DELETE FROM starkeep_sync_remote_keys WHERE namespace = ?", (self.namespace,))
            return
        self._many("DELETE FROM starkeep_sync_remote_keys WHERE namespace = ? AND key = ?", ((k,) for k in keys))

    def reject_items(self, items: Iterable[RejectedItem]) -> None:
        self._many(
            "INSERT OR REPLACE INTO starkeep_sync_rejected (namespace, ref, item_id, hlc, key, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((i.ref, i.item_id, serialize_hlc(i.hlc), i.key, i.reason, i.at) for i in items),
        )

    def rejected_items(self) -> list[RejectedItem]:
        rows = self._select("SELECT ref, item_id, hlc, key, reason, at FROM starkeep_sync_rejected "
                            "WHERE namespace = ? ORDER BY at, ref")
        return [RejectedItem(ref, item_id, deserialize_hlc(hlc), key, reason, at)
                for ref, item_id, hlc, key, reason, at in rows]

    def clear_rejected(self, refs: Collection[str]) -> None:
        self._many("DELETE FROM starkeep_sync_rejected WHERE namespace = ? AND ref = ?", ((r,) for r in refs))


def create_sqlite_sync_state_store(
    conn: sqlite3.Connection, namespace: str = "default"
) -> SqliteSyncStateStore:
    return SqliteSyncStateStore(conn, namespace)


class MemorySyncStateStore(MemoryBlobState):
    def __init__(self) -> None:
        super().__init__()
        self._own: Watermarks = {}
        self._peer: Watermarks = {}
        self._clock: ClockState | None = None

    def get_watermarks(self) -> Watermarks:
        return dict(self._own)

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self._own = dict(w)

    def get_peer_watermarks(self) -> Watermarks:
        return dict(self._peer)

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self._peer = dict(w)

    def get_hlc_clock_state(self) -> ClockState | None:
        return self._clock

    def set_hlc_clock_state(self, state: ClockState) -> None:
        self._clock = ClockState(*state)
