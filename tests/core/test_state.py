"""Requester-side sync state on sqlite: survives reopening, namespaces are independent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from starkeep_sync.core.hlc import ClockState, HLCClock, HLCTimestamp
from starkeep_sync.core.state import SqliteSyncStateStore, create_sqlite_sync_state_store

OWN = {
    "local": HLCTimestamp(1_700_000_000_000, 3, "local"),
    "cloud": HLCTimestamp(1_700_000_000_500, 0, "cloud"),
}
PEER = {"cloud": HLCTimestamp(1_700_000_001_000, 65535, "cloud")}


def test_fresh_store_is_empty(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = create_sqlite_sync_state_store(conn)
    assert isinstance(store, SqliteSyncStateStore)
    assert store.get_watermarks() == {}
    assert store.get_peer_watermarks() == {}
    assert store.get_hlc_clock_state() is None
    conn.close()


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    store = create_sqlite_sync_state_store(conn, "drive@cloud")
    store.set_watermarks(OWN)
    store.set_peer_watermarks(PEER)
    store.set_hlc_clock_state(ClockState(1_700_000_002_000, 7))
    conn.close()

    conn2 = sqlite3.connect(path)
    store2 = create_sqlite_sync_state_store(conn2, "drive@cloud")
    own = store2.get_watermarks()
    assert own == OWN
    assert all(isinstance(v, HLCTimestamp) for v in own.values())
    assert store2.get_peer_watermarks() == PEER
    state = store2.get_hlc_clock_state()
    assert state == ClockState(1_700_000_002_000, 7)
    assert isinstance(state, ClockState)
    conn2.close()


def test_overwrite_replaces_whole_vector(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    store = create_sqlite_sync_state_store(conn)
    store.set_peer_watermarks(OWN)
    store.set_peer_watermarks(PEER)  # replaced, not merged
    store.set_hlc_clock_state(ClockState(1, 1))
    store.set_hlc_clock_state(ClockState(2, 0))
    conn.close()
    store = create_sqlite_sync_state_store(sqlite3.connect(path))
    assert store.get_peer_watermarks() == PEER
    assert store.get_hlc_clock_state() == ClockState(2, 0)
    store.set_watermarks({})
    assert store.get_watermarks() == {}


def test_namespaces_in_one_file_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    conn = sqlite3.connect(path)
    drive = create_sqlite_sync_state_store(conn, "drive")
    notes = create_sqlite_sync_state_store(conn, "apps/notes")
    drive.set_watermarks(OWN)
    drive.set_hlc_clock_state(ClockState(10, 1))
    notes.set_peer_watermarks(PEER)
    assert notes.get_watermarks() == {}
    assert notes.get_hlc_clock_state() is None
    assert drive.get_peer_watermarks() == {}
    conn.close()

    conn = sqlite3.connect(path)
    drive = create_sqlite_sync_state_store(conn, "drive")
    notes = create_sqlite_sync_state_store(conn, "apps/notes")
    assert drive.get_watermarks() == OWN
    assert drive.get_peer_watermarks() == {}
    assert drive.get_hlc_clock_state() == ClockState(10, 1)
    assert notes.get_watermarks() == {}
    assert notes.get_peer_watermarks() == PEER
    assert notes.get_hlc_clock_state() is None
    conn.close()


def test_clock_persisted_through_on_tick_resumes_above_issued(tmp_path: Path) -> None:
    path = tmp_path / "clock.db"
    conn = sqlite3.connect(path)
    store = create_sqlite_sync_state_store(conn)
    clock = HLCClock("local", wall_clock=lambda: 5000, on_tick=store.set_hlc_clock_state)
    issued = [clock.now() for _ in range(3)]
    conn.close()

    store = create_sqlite_sync_state_store(sqlite3.connect(path))
    restarted = HLCClock("local", wall_clock=lambda: 4000, initial_state=store.get_hlc_clock_state())
    assert restarted.now() > max(issued)
