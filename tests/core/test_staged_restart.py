"""A device killed mid-fetch resumes its staged blobs after a restart (PROTOCOL §5c: "A crash or restart loses none").

The "cloud" is a ``SqliteDeviceStore`` (database + blob folder) in a temporary
directory. The device runs in a REAL child process (:data:`CHILD`): its own
``SqliteDeviceStore`` and ``SqliteSyncStateStore`` on files, an in-process
responder over the cloud store, and a remote storage that can be slowed down
per blob read. The first run is slowed and killed with SIGKILL once the metadata
landed and while blobs are being fetched; a second run, not slowed, finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from starkeep_sync import HLCClock, create_data_record, shared_object_key
from starkeep_sync.device.files import FileSystemObjectStorage
from starkeep_sync.device.sqlite import SqliteDeviceStore

RECORDS = 30
NAMESPACE = "cloud-drive"
REPO = Path(__file__).resolve().parents[2]

CHILD = r'''
import json, sys, time
from starkeep_sync import LOCAL_DATA_SYNCED, BLOB_RESIDENT, HLCClock, create_in_process_sync_transport
from starkeep_sync.core.engine import SyncEngine
from starkeep_sync.core.staged import RetryPolicy
from starkeep_sync.device.sqlite import SqliteDeviceStore
from starkeep_sync.device.supervisor import sync_until_done

tmp, run, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
log = open(f"{tmp}/log.jsonl", "a", buffering=1)

def note(**fields):
    log.write(json.dumps({"run": run, **fields}) + "\n")
    log.flush()


class Slow:
    """The cloud's blobs as the device reaches them; each read of a blob is held ``delay`` seconds."""

    def __init__(self, inner):
        self.inner = inner

    def has(self, key):
        return self.inner.has(key)

    def open(self, key):
        note(event="opened", key=key)
        raw = self.inner.open(key)
        if raw is None or not delay:
            return raw
        return SlowReader(raw)

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, data, content_type=None):
        self.inner.put(key, data, content_type)

    def delete(self, key):
        self.inner.delete(key)


class SlowReader:
    def __init__(self, raw):
        self.raw = raw
        self.first = True

    def read(self, size=-1):
        if self.first:
            self.first = False
            time.sleep(delay)
        return self.raw.read(size)

    def close(self):
        self.raw.close()


cloud = SqliteDeviceStore(f"{tmp}/cloud.db", f"{tmp}/cloud-blobs")
device = SqliteDeviceStore(f"{tmp}/device.db", f"{tmp}/device-blobs")
engine = SyncEngine(
    local_database=device.database, local_storage=device.storage, remote_storage=Slow(cloud.storage),
    transport=create_in_process_sync_transport(database=cloud.database, storage=cloud.storage,
                                               clock=HLCClock("cloud")),
    clock=HLCClock("device"), sync_state=device.state("cloud-drive"), transfer_concurrency=2,
    blob_retry=RetryPolicy(base=0.0, cap=0.0),
)
engine.change_notifier.subscribe(lambda e: note(event=e.event_type, ids=list(e.record_ids)))
note(event="start")
results = sync_until_done(engine, on_round=lambda r: note(
    event="round", received=r.result.received, applied=r.result.applied, staged=r.result.staged,
    resident=sorted(r.result.resident), failed=list(r.result.failed_pulls)))
note(event="done")
engine.close()
'''


def _count(db: Path, sql: str) -> int:
    """One number from the device's state DB, read-only (the child owns it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return -1  # not created yet
    finally:
        conn.close()


def _staged_rows(tmp: Path) -> int:
    if not (tmp / "device.db").exists():
        return -1
    return _count(tmp / "device.db", f"SELECT count(*) FROM starkeep_sync_staged WHERE namespace = '{NAMESPACE}'")


def _landed(tmp: Path) -> list[str]:
    root = tmp / "device-blobs"
    return FileSystemObjectStorage(root).keys() if root.exists() else []


def _log(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _start(tmp: Path, run: str, delay: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(tmp / "child.py"), str(tmp), run, str(delay)],
                            cwd=str(tmp), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_device_killed_mid_fetch_finishes_its_staged_blobs_after_a_restart(tmp_path: Path) -> None:
    tmp = tmp_path
    cloud = SqliteDeviceStore(tmp / "cloud.db", tmp / "cloud-blobs")
    clock = HLCClock("cloud")
    expected: dict[str, tuple[str, str]] = {}
    for i in range(RECORDS):
        data = os.urandom(4096) + f"record {i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("image/jpeg", digest)
        cloud.storage.put(key, data, "image/jpeg")
        record = create_data_record(clock, type="image/jpeg", origin_app_id="tests", content_hash=digest,
                                    object_storage_key=key, size_bytes=len(data), mime_type="image/jpeg",
                                    id=f"r{i:02d}")
        cloud.database.put(record)
        expected[record.id] = (key, digest)
    cloud_records = {r.id: r for r in cloud.database.all()}
    cloud.close()
    (tmp / "child.py").write_text(CHILD)

    # Run 1: slowed (each blob read held 0.25 s, two at a time); killed mid-fetch.
    child = _start(tmp, "first", 0.25)
    killed_with: tuple[int, int] | None = None
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and child.poll() is None:
            staged, landed = _staged_rows(tmp), len(_landed(tmp))
            if staged == RECORDS and 4 <= landed < RECORDS:
                child.send_signal(signal.SIGKILL)
                killed_with = (staged, landed)
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None and killed_with is None:
            child.kill()
        _, err = child.communicate(timeout=10)
    assert killed_with is not None, f"never caught run 1 mid-fetch (exit {child.returncode}): {err.decode()[-2000:]}"
    assert child.returncode == -signal.SIGKILL

    first = _log(tmp)
    assert not any(e["event"] == "done" for e in first), "run 1 finished before it was killed"
    synced_first = [i for e in first if e["event"] == "local-data-synced" for i in e["ids"]]
    assert sorted(synced_first) == sorted(expected)  # the metadata of all 30 landed in run 1
    landed_before = set(_landed(tmp))
    assert 4 <= len(landed_before) < RECORDS
    assert _staged_rows(tmp) == RECORDS  # durable: the kill lost none of the staged set
    watermark = _count(tmp / "device.db", "SELECT count(*) FROM starkeep_sync_state "
                       f"WHERE namespace = '{NAMESPACE}' AND name = 'own'")
    assert watermark == 1

    # Run 2: not slowed; it finishes.
    child = _start(tmp, "second", 0.0)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()[-3000:]
    second = [e for e in _log(tmp) if e["run"] == "second"]
    assert second[-1]["event"] == "done"
    rounds = [e for e in second if e["event"] == "round"]
    # No metadata asked for or applied again: the watermarks already covered all 30.
    assert rounds[0]["received"] == 0 and sum(r["applied"] for r in rounds) == 0
    assert not any(e["event"] == "local-data-synced" for e in second)
    # Every blob not already here was fetched once; the ones that landed before the kill were not fetched again.
    opened = [e["key"] for e in second if e["event"] == "opened"]
    assert sorted(opened) == sorted(k for k, _ in expected.values() if k not in landed_before)
    resident = [i for e in second if e["event"] == "blob-resident" for i in e["ids"]]
    assert sorted(resident) == sorted(expected)
    assert rounds[-1]["staged"] == 0 and all(not r["failed"] for r in rounds)

    device = SqliteDeviceStore(tmp / "device.db", tmp / "device-blobs")
    try:
        assert device.state(NAMESPACE).staged_blobs() == []
        assert device.state(NAMESPACE).staged_totals() == (0, 0)
        assert {r.id: r for r in device.database.all()} == cloud_records  # each record once, as the cloud has it
        for key, digest in expected.values():
            obj = device.storage.get(key)
            assert obj is not None and hashlib.sha256(obj.data).hexdigest() == digest, key
    finally:
        device.close()
