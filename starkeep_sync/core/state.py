"""Requester-side sync state on stdlib ``sqlite3``: watermarks and clock state."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping

from .hlc import ClockState, HLCTimestamp

Watermarks = dict[str, HLCTimestamp]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS starkeep_sync_state (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""


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
            conn.execute(_SCHEMA)

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


def create_sqlite_sync_state_store(
    conn: sqlite3.Connection, namespace: str = "default"
) -> SqliteSyncStateStore:
    return SqliteSyncStateStore(conn, namespace)


class MemorySyncStateStore:
    def __init__(self) -> None:
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
