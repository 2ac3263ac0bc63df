"""Raw baselines in the same run: what the database and the disk do without us.

Rows are built before the clock starts, so a baseline times the database alone
(a generous baseline: our side also pays for JSON, HTTP and Django).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data import APP_ID, TABLE
from bench.server import Database
from starkeep_sync import AppSyncableRowEntry, DataRecord, serialize_hlc

RECORD_TABLE = "starkeep_sync_sharedrecord"
APPROW_TABLE = "starkeep_sync_approw"
RECORD_COLUMNS = (
    "owner_id", "record_id", "kind", "type", "created_at", "updated_at", "deleted_at", "version", "content_hash",
    "object_storage_key", "mime_type", "size_bytes", "original_filename", "origin_app_id", "parent_id",
    "label", "node_id",
)
APPROW_COLUMNS = ("owner_id", "app_id", '"table"', "row_key", "data", "updated_at", "deleted_at", "node_id")


def _record_tuple(owner_id: int, r: DataRecord) -> tuple[Any, ...]:
    return (
        owner_id, r.id, r.kind, r.type, serialize_hlc(r.created_at), serialize_hlc(r.updated_at),
        serialize_hlc(r.deleted_at) if r.deleted_at is not None else None, r.version, r.content_hash,
        r.object_storage_key, r.mime_type, r.size_bytes, r.original_filename, r.origin_app_id, r.parent_id,
        r.label, r.updated_at[2],
    )


def _timed_executemany(db: Database, sql: str, rows: Sequence[tuple[Any, ...]]) -> float:
    conn = db.connect()
    try:
        started = time.perf_counter()
        cur = conn.cursor()
        cur.executemany(sql, rows)
        conn.commit()
        return time.perf_counter() - started
    finally:
        conn.close()


def _execute(db: Database, sql: str, params: Sequence[Any]) -> None:
    conn = db.connect()
    try:
        conn.cursor().execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def bulk_insert_records(db: Database, owner_id: int, records: Sequence[DataRecord]) -> float:
    """Seconds to insert ``records`` into the shared-record table with one executemany, then remove them."""
    p = db.placeholder
    sql = f"INSERT INTO {RECORD_TABLE} ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join([p] * len(RECORD_COLUMNS))})"
    rows = [_record_tuple(owner_id, r) for r in records]
    seconds = _timed_executemany(db, sql, rows)
    _execute(db, f"DELETE FROM {RECORD_TABLE} WHERE owner_id = {p}", [owner_id])
    return seconds


def select_records(db: Database, owner_id: int) -> tuple[float, int]:
    """Seconds to read every shared record of ``owner_id`` in HLC order per node (one query), and how many."""
    p = db.placeholder
    cols = ", ".join(RECORD_COLUMNS[1:])
    conn = db.connect()
    try:
        started = time.perf_counter()
        cur = conn.cursor()
        cur.execute(f"SELECT {cols} FROM {RECORD_TABLE} WHERE owner_id = {p} ORDER BY node_id, updated_at",
                    [owner_id])
        n = len(cur.fetchall())
        return time.perf_counter() - started, n
    finally:
        conn.close()


def bulk_insert_app_rows(db: Database, owner_id: int, entries: Sequence[AppSyncableRowEntry]) -> float:
    """Seconds to insert the rows of ``entries`` into the app-row table with one executemany, then remove them."""
    p = db.placeholder
    data_p = f"{p}::jsonb" if db.kind == "postgres" else p
    marks = [p, p, p, p, data_p, p, p, p]
    sql = f"INSERT INTO {APPROW_TABLE} ({', '.join(APPROW_COLUMNS)}) VALUES ({', '.join(marks)})"
    rows = [
        (owner_id, APP_ID, TABLE, json.dumps([e.row["id"]], separators=(",", ":")),  # type: ignore[index]
         json.dumps(dict(e.row or {})), serialize_hlc(e.timestamp), None, e.timestamp[2])
        for e in entries
    ]
    seconds = _timed_executemany(db, sql, rows)
    _execute(db, f"DELETE FROM {APPROW_TABLE} WHERE owner_id = {p}", [owner_id])
    return seconds


def select_app_rows(db: Database, owner_id: int) -> tuple[float, int]:
    p = db.placeholder
    conn = db.connect()
    try:
        started = time.perf_counter()
        cur = conn.cursor()
        cur.execute(f'SELECT row_key, data, updated_at, deleted_at, node_id FROM {APPROW_TABLE} '
                    f'WHERE owner_id = {p} AND app_id = {p} AND "table" = {p} ORDER BY node_id, updated_at',
                    [owner_id, APP_ID, TABLE])
        n = len(cur.fetchall())
        return time.perf_counter() - started, n
    finally:
        conn.close()


def copy_files(sources: Sequence[Path], dest_dir: Path, repeat: int = 3) -> float:
    """Median seconds to ``shutil.copyfile`` every source into ``dest_dir`` (copies removed after each pass)."""
    passes = []
    for _ in range(repeat):
        dest_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for i, src in enumerate(sources):
            shutil.copyfile(src, dest_dir / f"copy-{i}")
        passes.append(time.perf_counter() - started)
        shutil.rmtree(dest_dir, ignore_errors=True)
    return statistics.median(passes)


def sha256_files(sources: Sequence[Path], repeat: int = 3) -> float:
    """Median seconds to sha256 every source (read in 1 MiB blocks, as the transfers hash them)."""
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        for src in sources:
            digest = hashlib.sha256()
            with open(src, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        passes.append(time.perf_counter() - started)
    return statistics.median(passes)


def hash_copy_files(sources: Sequence[Path], dest_dir: Path, repeat: int = 3) -> float:
    """Median seconds to copy every source while hashing it: read 1 MiB blocks, sha256 each, write it.

    What one leg of a blob transfer must do at least (the receiver checks every byte
    against the hash, PROTOCOL §7), in one process with nothing else.
    """
    passes = []
    for _ in range(repeat):
        dest_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for i, src in enumerate(sources):
            digest = hashlib.sha256()
            with open(src, "rb") as f, open(dest_dir / f"copy-{i}", "wb") as out:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        passes.append(time.perf_counter() - started)
        shutil.rmtree(dest_dir, ignore_errors=True)
    return statistics.median(passes)


def first_touch_write(nbytes: int, dest: Path) -> float:
    """Seconds to write ``nbytes`` (1 MiB blocks of one buffer, nothing read, nothing hashed) into a new
    file, before anything is freed: what the receiving side of a leg must at least do, into page-cache
    pages the VM has not handed out lately. The file is removed afterwards."""
    block = b"\x5a" * (1 << 20)
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(dest, "wb") as out:
        left = nbytes
        while left > 0:
            out.write(block if left >= len(block) else block[:left])
            left -= len(block)
    elapsed = time.perf_counter() - started
    dest.unlink()
    return elapsed
