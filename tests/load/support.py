"""Devices, their random workload, a fault-injecting proxy, and the convergence check.

A :class:`Device` is one node: its own store (memory adapters, or a
:class:`~starkeep_sync.device.sqlite.SqliteDeviceStore` on disk), its own node id, an
``HLCClock`` on real time, and one engine per channel (the Drive channel for
shared records, the ``notes`` channel for app rows), both over HTTP.

Every local write is also reported to an :class:`Oracle`, which keeps, per id,
the row as it stood on the writing device right after the write with the
highest HLC. After convergence every device, and the server's own tables, must
hold exactly that: the LWW winner of every id, tombstones included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import selectors
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from msgspec.structs import replace

from starkeep_sync import (
    FILE_RECORDS_TABLE,
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    ExchangeResult,
    HLCClock,
    HLCTimestamp,
    SyncEngine,
    SyncTransportError,
    create_data_record,
    create_sync_engine,
    serialize_hlc,
    shared_object_key,
)
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.staged import RetryPolicy
from starkeep_sync.device.memory import (
    MemoryAppSource,
    MemoryDatabaseAdapter,
    MemoryObjectStorage,
    MemorySyncStateStore,
)
from starkeep_sync.device.sqlite import SqliteDeviceStore
from tests.harness import FlakyStorage

APP = "notes"
CHANNELS = ("drive", APP)
NOTES_NS = AppSyncableNamespace(
    APP, [AppSyncableTableInfo("notes", ["id"]), AppSyncableTableInfo(FILE_RECORDS_TABLE, ["id"])],
    files_enabled=True,
)
#: Small id pools, so devices keep writing over each other's rows.
SR_IDS = [f"01LOADSHAREDRECORD{i:08d}" for i in range(10)]
AW_IDS = [f"note-{i:02d}" for i in range(12)]
AR_IDS = [f"file-{i:02d}" for i in range(8)]
#: A few blob contents every device may pick: several devices then upload the same key at once.
COMMON_BLOBS = [(f"common-blob-{i}:".encode() * 40) for i in range(4)]
#: (connect, read) seconds: a request stuck on a dead worker or a cut connection ends soon.
HTTP_TIMEOUT = (5.0, 20.0)


class SimulatedCrash(Exception):
    """The device process "dies" here; the device is reopened from disk."""


# -- the oracle -------------------------------------------------------------------------


class Oracle:
    """The LWW winner of every id, from the writers' side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._best: dict[tuple[str, str], tuple[HLCTimestamp, Any]] = {}
        self.writes = 0

    def record(self, kind: str, rid: str, hlc: HLCTimestamp, snapshot: Any) -> None:
        assert snapshot is not None, (kind, rid)
        with self._lock:
            self.writes += 1
            current = self._best.get((kind, rid))
            if current is None or hlc > current[0]:
                self._best[(kind, rid)] = (hlc, snapshot)

    def expected(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"sr": {}, "aw": {}, "ar": {}}
        with self._lock:
            for (kind, rid), (_, snapshot) in self._best.items():
                out[kind][rid] = snapshot
        return out


# -- fault wrappers -------------------------------------------------------------------------


class CountingStorage:
    """The remote object storage, counting the HTTP errors it meets (they are retried later)."""

    def __init__(self, inner: HttpObjectStorage, errors: Counter[str]) -> None:
        self.inner = inner
        self.errors = errors

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.inner, name)(*args)
        except SyncTransportError as err:
            self.errors[f"{name}:{err.status or err.code}"] += 1
            raise

    def has(self, key: str) -> bool:
        return bool(self._call("has", key))

    def open(self, key: str) -> IO[bytes] | None:
        return self._call("open", key)  # type: ignore[no-any-return]

    def get(self, key: str) -> Any:
        return self._call("get", key)

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        self._call("put", key, data, content_type)

    def delete(self, key: str) -> None:
        self._call("delete", key)


class CrashPoints:
    """Where an armed device dies next: ``own`` (saving own watermarks, after applying),
    ``peer`` (saving the peer vector, own already saved) or ``apply`` (after applying one item)."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.fired: Counter[str] = Counter()

    def fire(self, point: str) -> None:
        if self.armed == point:
            self.armed = None
            self.fired[point] += 1
            raise SimulatedCrash(point)


class CrashingState:
    def __init__(self, inner: Any, points: CrashPoints) -> None:
        self.inner = inner
        self.points = points

    def set_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        if dict(w) != self.inner.get_watermarks():  # only a round that took something in
            self.points.fire("own")
        self.inner.set_watermarks(w)

    def set_peer_watermarks(self, w: Mapping[str, HLCTimestamp]) -> None:
        self.points.fire("peer")
        self.inner.set_peer_watermarks(w)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CrashingDatabase:
    def __init__(self, inner: Any, points: CrashPoints) -> None:
        self.inner = inner
        self.points = points

    def merge(self, records: Any) -> list[bool]:
        out = self.inner.merge(records)
        self.points.fire("apply")
        return out  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CrashingApplier:
    def __init__(self, inner: Any, points: CrashPoints) -> None:
        self.inner = inner
        self.points = points

    def apply(self, entry: AppSyncableRowEntry) -> bool:
        out = bool(self.inner.apply(entry))
        self.points.fire("apply")
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CrashingAppSource:
    def __init__(self, inner: Any, points: CrashPoints) -> None:
        self.inner = inner
        self.namespaces = inner.namespaces
        self.applier = CrashingApplier(inner.applier, points)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- the device -------------------------------------------------------------------------------


@dataclass
class DeviceStats:
    rounds: int = 0
    shipped: int = 0
    applied: int = 0
    writes: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    blob_errors: Counter[str] = field(default_factory=Counter)
    failed_transfers: int = 0
    crashes: int = 0
    reopened: int = 0
    round_seconds: float = 0.0
    write_seconds: float = 0.0


class Device:
    """One node with its own store, clock and two engines (Drive and ``notes``) over HTTP."""

    def __init__(
        self,
        index: int,
        url: str,
        token: str,
        root: Path,
        oracle: Oracle,
        *,
        persistent: bool,
        seed: int,
        page_limit: int = 1000,
        flaky_blobs: float = 0.0,
        crash_rate: float = 0.0,
    ) -> None:
        self.node_id = f"dev{index:02d}"
        self.url = url.rstrip("/")
        self.token = token
        self.root = root
        self.oracle = oracle
        self.persistent = persistent
        self.rng = random.Random(seed)
        self.page_limit = page_limit
        self.flaky_blobs = flaky_blobs
        self.crash_rate = crash_rate
        self.crash = CrashPoints()
        self.stats = DeviceStats()
        self.seq = 0
        self.store: SqliteDeviceStore | None = None
        self.flaky: dict[str, FlakyStorage] = {}
        self._memory_states: dict[str, MemorySyncStateStore] = {}
        self.open()

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store (from disk when persistent) and build the clock and the engines."""
        if self.persistent:
            self.store = SqliteDeviceStore(self.root / f"{self.node_id}.db", self.root / f"{self.node_id}-blobs",
                                           namespaces=[NOTES_NS])
            self.database: Any = self.store.database
            self.storage: Any = self.store.storage
            self.app_source: Any = self.store.app_source
            states: dict[str, Any] = {name: self.store.state(f"{name}@{self.url}") for name in (*CHANNELS, "clock")}
        else:
            self.database = MemoryDatabaseAdapter()
            self.storage = MemoryObjectStorage()
            self.app_source = MemoryAppSource([NOTES_NS])
            states = {name: self._memory_states.setdefault(name, MemorySyncStateStore())
                      for name in (*CHANNELS, "clock")}
        clock_state = states["clock"]
        self.clock = HLCClock(self.node_id, initial_state=clock_state.get_hlc_clock_state(),
                              on_tick=clock_state.set_hlc_clock_state)
        self.engines: dict[str, SyncEngine] = {ch: self._engine(ch, states[ch]) for ch in CHANNELS}

    def reopen(self) -> None:
        """The process died: drop everything in memory and start again from what is on disk."""
        assert self.store is not None, "only a persistent device survives a crash"
        self.store.close()
        self.stats.reopened += 1
        self.open()

    def close(self) -> None:
        for engine in self.engines.values():
            for client in (engine.transport, getattr(engine.remote_storage, "inner", None)):
                close = getattr(client, "close", None)
                if close is not None:
                    close()
        if self.store is not None:
            self.store.close()

    def _engine(self, channel: str, state: Any) -> SyncEngine:
        drive = channel == "drive"
        base = f"{self.url}/apps/{'starkeep-drive' if drive else APP}"
        remote: Any = CountingStorage(HttpObjectStorage(base, auth=self.token, timeout=HTTP_TIMEOUT),
                                      self.stats.blob_errors)
        if self.flaky_blobs:
            remote = self.flaky[channel] = FlakyStorage(remote)
        database, app_source = self.database, self.app_source
        if self.crash_rate:
            state = CrashingState(state, self.crash)
            database = CrashingDatabase(database, self.crash)
            app_source = CrashingAppSource(app_source, self.crash)
        return create_sync_engine(
            local_database=database if drive else None,
            local_storage=self.storage,
            remote_storage=remote,
            transport=create_http_sync_transport(base_url=base, auth=self.token, timeout=HTTP_TIMEOUT),
            clock=self.clock,
            sync_state=state,
            app_source=None if drive else app_source,
            sync_shared_records=drive,
            page_limit=self.page_limit,
            app_id=None if drive else APP,
            # Staged blobs are retried soon here: the checks want every blob home within the test.
            blob_retry=RetryPolicy(base=0.05, cap=0.5),
        )

    # -- rounds -------------------------------------------------------------------------------

    def round(self, channel: str, *, may_crash: bool = False) -> ExchangeResult | None:
        """One exchange round; ``None`` when it failed in a retryable way (or the device died)."""
        if may_crash and self.crash_rate and self.rng.random() < self.crash_rate:
            self.crash.armed = self.rng.choice(["own", "peer", "apply"])
        started = time.monotonic()
        try:
            result = self.engines[channel].exchange()
        except SyncTransportError as err:
            self.stats.transport_errors[str(err.status or err.code)] += 1
            return None
        except SimulatedCrash:
            self.stats.crashes += 1
            self.reopen()
            return None
        finally:
            self.crash.armed = None
            self.stats.round_seconds += time.monotonic() - started
        self.stats.rounds += 1
        self.stats.shipped += result.shipped
        self.stats.applied += result.applied
        self.stats.failed_transfers += len(result.failed_pushes) + len(result.failed_pulls)
        return result

    def sync_until_done(self, channel: str, deadline: float, max_rounds: int = 60) -> bool:
        """Rounds until one reports no ``has_more``, retrying transport errors; whether anything moved."""
        moved = False
        for _ in range(max_rounds):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node_id}/{channel}: out of time while syncing")
            result = self.round(channel)
            if result is None:
                moved = True
                time.sleep(0.05)
                continue
            if result.shipped or result.applied or result.errors:
                moved = True
            if not result.has_more and result.staged:
                # Done with metadata; blobs still staged wait for their backoff (they never set has_more).
                moved = True
                time.sleep(0.1)
                continue
            if not result.has_more:
                return moved
        raise AssertionError(f"{self.node_id}/{channel}: still has_more after {max_rounds} rounds")

    # -- local writes ----------------------------------------------------------------------------

    def _label(self) -> str:
        self.seq += 1
        return f"{self.node_id}#{self.seq}"

    def _blob(self) -> bytes:
        if self.rng.random() < 0.25:
            return self.rng.choice(COMMON_BLOBS)
        return f"{self.node_id}:{self.seq}:".encode() + self.rng.randbytes(self.rng.randint(64, 3000))

    def _flaky(self, channel: str, key: str) -> None:
        """With flaky blobs, the first upload of some new keys fails (a transient error)."""
        if self.flaky_blobs and self.rng.random() < self.flaky_blobs:
            self.flaky[channel].fail_once.add(key)

    def write_record(self) -> None:
        rid = self.rng.choice(SR_IDS)
        existing = self.database.get(rid)
        if existing is not None and existing.deleted_at is None and self.rng.random() < 0.2:
            rec = self.database.delete(rid, self.clock.now())
        else:
            data = self._blob()
            digest = hashlib.sha256(data).hexdigest()
            key = shared_object_key("image/png", digest)
            self.storage.put(key, data, "image/png")
            self._flaky("drive", key)
            rec = create_data_record(
                self.clock, type="image/png", origin_app_id="load", content_hash=digest, object_storage_key=key,
                size_bytes=len(data), mime_type="image/png", original_filename=f"{rid}.png", label=self._label(),
                id=rid,
            )
            if existing is not None:
                rec = replace(rec, created_at=existing.created_at, version=existing.version + 1)
            self.database.put(rec)
        assert rec is not None
        self.oracle.record("sr", rid, rec.updated_at, self.database.get(rid))
        self.stats.writes += 1

    def _apply(self, kind: str, table: str, op: str, rid: str, row: dict[str, Any] | None,
               where: dict[str, Any] | None, ts: HLCTimestamp | None = None) -> None:
        ts = ts or self.clock.now()
        entry = AppSyncableRowEntry(ts, APP, table, op, row, where)  # type: ignore[arg-type]
        if self.app_source.applier.apply(entry):
            self.oracle.record(kind, rid, ts, self.app_source.applier.get_row(APP, table, (rid,)))
            self.stats.writes += 1

    def write_note(self) -> None:
        rid = self.rng.choice(AW_IDS)
        held = self.app_source.applier.get_row(APP, "notes", (rid,)) is not None
        x = self.rng.random()
        if x < 0.2:
            # Also for a row not held: the tombstone is stored and travels.
            self._apply("aw", "notes", "delete", rid, None, {"id": rid})
        elif held and x < 0.6:
            self._apply("aw", "notes", "update", rid, {"body": self._label()}, {"id": rid})
        else:
            self._apply("aw", "notes", "insert", rid, {"id": rid, "body": self._label(), "n": self.seq}, None)

    def write_file_row(self) -> None:
        rid = self.rng.choice(AR_IDS)
        if self.rng.random() < 0.2:
            self._apply("ar", FILE_RECORDS_TABLE, "delete", rid, None, {"id": rid})
            return
        data = self._blob()
        digest = hashlib.sha256(data).hexdigest()
        key = f"apps/{APP}/syncable/{digest}"
        self.storage.put(key, data, "application/octet-stream")
        self._flaky(APP, key)
        ts = self.clock.now()
        row = {
            "id": rid, "object_storage_key": key, "content_hash": digest, "mime_type": "application/octet-stream",
            "size_bytes": len(data), "original_filename": f"{self._label()}.bin", "origin_app_id": APP,
            "created_at": serialize_hlc(ts),
        }
        self._apply("ar", FILE_RECORDS_TABLE, "insert", rid, row, None, ts)

    def step(self) -> None:
        """One to three random local writes, then one exchange round on a random channel."""
        started = time.monotonic()
        for _ in range(self.rng.randint(1, 3)):
            self.rng.choice([self.write_record, self.write_note, self.write_note, self.write_file_row])()
        self.stats.write_seconds += time.monotonic() - started
        self.round(self.rng.choice(CHANNELS), may_crash=True)

    # -- what it holds ----------------------------------------------------------------------------

    def state(self) -> dict[str, dict[str, Any]]:
        sr = {r.id: r for r in self.database.all()}
        aw = {r["id"]: r for r in self.app_source.rows(APP, "notes")}
        ar = {r["id"]: r for r in self.app_source.rows(APP, FILE_RECORDS_TABLE)}
        return {"sr": sr, "aw": aw, "ar": ar}


# -- running many devices ---------------------------------------------------------------------


def run_threads(targets: Iterable[tuple[str, Callable[[], None]]], timeout: float) -> None:
    """Run callables in threads; join within ``timeout``; re-raise the first failure."""
    errors: list[tuple[str, BaseException]] = []

    def wrap(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as err:
                errors.append((name, err))
        return run

    threads = [threading.Thread(target=wrap(n, fn), name=n, daemon=True) for n, fn in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout} s: {stuck}"
    if errors:
        name, err = errors[0]
        raise AssertionError(f"{name} failed: {err!r}") from err


def run_workload(devices: list[Device], seconds: float, max_steps: int = 400,
                 pause: tuple[float, float] = (0.1, 0.4)) -> None:
    """Every device runs its random workload in its own thread for ``seconds`` (bounded by ``max_steps``)."""
    end = time.monotonic() + seconds

    def work(device: Device) -> Callable[[], None]:
        def run() -> None:
            for _ in range(max_steps):
                if time.monotonic() > end:
                    return
                device.step()
                time.sleep(device.rng.uniform(*pause))
        return run

    run_threads([(d.node_id, work(d)) for d in devices], timeout=seconds + 90)


def converge(devices: list[Device], *, max_passes: int = 6, seconds: float = 90) -> int:
    """Every device syncs both channels until done, pass after pass, until a whole pass moves nothing.

    Returns the number of passes including the quiet one.
    """
    deadline = time.monotonic() + seconds
    for n in range(1, max_passes + 1):
        moved = False
        for device in devices:
            for channel in CHANNELS:
                moved |= device.sync_until_done(channel, deadline)
        if not moved and n > 1:
            return n
    raise AssertionError(f"no quiet pass after {max_passes} passes")


# -- the checks -----------------------------------------------------------------------------------


def _diff(name: str, got: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    out = []
    for rid in sorted(set(got) | set(want)):
        if rid not in got:
            out.append(f"{name}: missing {rid} (want {want[rid]})")
        elif rid not in want:
            out.append(f"{name}: unexpected {rid}: {got[rid]}")
        elif got[rid] != want[rid]:
            out.append(f"{name}: {rid}: got {got[rid]}, want {want[rid]}")
    return out


def live_blobs(expected: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{key: sha256}`` of every blob a live record or AR row of the expected state needs."""
    keys = {}
    for rec in expected["sr"].values():
        if rec.deleted_at is None and rec.object_storage_key:
            keys[rec.object_storage_key] = rec.content_hash
    for row in expected["ar"].values():
        if not row.get("deleted_at") and row.get("object_storage_key"):
            keys[row["object_storage_key"]] = row["content_hash"]
    return keys


def check_converged(devices: list[Device], server: Any, username: str, oracle: Oracle) -> dict[str, int]:
    """Devices and server hold the oracle's LWW winner of every id, and every live blob, hash-correct."""
    expected = oracle.expected()
    problems: list[str] = []
    server_state = server.owner_state(username)
    for kind in ("sr", "aw", "ar"):
        problems += _diff(f"server {kind}", server_state[kind], expected[kind])
    for device in devices:
        state = device.state()
        for kind in ("sr", "aw", "ar"):
            problems += _diff(f"{device.node_id} {kind}", state[kind], expected[kind])
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:25])

    blobs = live_blobs(expected)
    token = server.users[username]
    remote = {
        "shared": HttpObjectStorage(f"{server.url}/apps/starkeep-drive", auth=token, timeout=HTTP_TIMEOUT),
        "apps": HttpObjectStorage(f"{server.url}/apps/{APP}", auth=token, timeout=HTTP_TIMEOUT),
    }
    for key, digest in blobs.items():
        storage = remote[key.split("/", 1)[0]]
        assert storage.has(key), f"server lacks blob {key}"
        obj = storage.get(key)
        assert obj is not None and hashlib.sha256(obj.data).hexdigest() == digest, f"server blob {key} is corrupt"
        for device in devices:
            local = device.storage.get(key)
            assert local is not None, f"{device.node_id} lacks blob {key}"
            assert hashlib.sha256(local.data).hexdigest() == digest, f"{device.node_id}: blob {key} is corrupt"
    for storage in remote.values():
        storage.close()
    return {kind: len(rows) for kind, rows in expected.items()} | {"blobs": len(blobs)}


# -- a TCP proxy that drops connections and answers 500 -------------------------------------------


class FaultProxy:
    """Loopback TCP proxy in front of gunicorn; with faults on, a fraction of connections
    get a ``500`` without reaching the server, or are cut after a random number of bytes
    of the request or of the response (sometimes with a reset).

    gunicorn's sync workers close every connection after one response, so one
    connection carries one request and a fate per connection is a fate per request.
    """

    def __init__(self, upstream_port: int, *, seed: int, p_500: float = 0.08, p_cut: float = 0.12) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.p_500 = p_500
        self.p_cut = p_cut
        self.rng = random.Random(seed)
        self.faults = True
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _fate(self) -> tuple[str, int]:
        with self._lock:
            if not self.faults:
                fate, budget = "pass", 0
            else:
                x = self.rng.random()
                if x < self.p_500:
                    fate, budget = "500", 0
                elif x < self.p_500 + self.p_cut / 2:
                    fate, budget = "cut-request", self.rng.randint(1, 800)
                elif x < self.p_500 + self.p_cut:
                    fate, budget = "cut-response", self.rng.randint(1, 600)
                else:
                    fate, budget = "pass", 0
            self.counts[fate] += 1
            return fate, budget

    def _serve(self, client: socket.socket) -> None:
        fate, budget = self._fate()
        upstream: socket.socket | None = None
        client.settimeout(20)
        try:
            if fate == "500":
                self._answer_500(client)
                return
            upstream = socket.create_connection(self.upstream, timeout=20)
            self._pump(client, upstream, fate, budget)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _answer_500(self, client: socket.socket) -> None:
        # Read the whole request first, so the client reads our answer instead of a reset.
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        remaining = length - len(body)
        deadline = time.monotonic() + 20
        while remaining > 0 and time.monotonic() < deadline:
            chunk = client.recv(min(65536, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
        payload = b'{"error": {"code": "injected", "message": "fault proxy says 500"}}'
        client.sendall(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
        )

    def _pump(self, client: socket.socket, upstream: socket.socket, fate: str, budget: int) -> None:
        sel = selectors.DefaultSelector()
        peers = {client: upstream, upstream: client}
        cut_from = {"cut-request": client, "cut-response": upstream}.get(fate)
        passed = 0
        for s in peers:
            s.setblocking(True)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        open_sides = 2
        try:
            while open_sides and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst = peers[src]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(src)
                        open_sides -= 1
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        continue
                    if src is cut_from and passed + len(data) >= budget:
                        dst.sendall(data[: budget - passed])
                        self._abort(client, upstream)
                        return
                    passed += len(data) if src is cut_from else 0
                    dst.sendall(data)
        finally:
            sel.close()

    def _abort(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            reset = self.rng.random() < 0.5
            self.counts["reset" if reset else "closed"] += 1
        for s in (client, upstream):
            if reset:  # RST instead of FIN
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.close()


# -- killing a worker in the middle of a request ----------------------------------------------------


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the loopback TCP socket ``local_port -> remote_port``, from /proc/net/tcp."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                return inode
    return None


def _owner_of_socket(pids: Iterable[int], inode: str) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
    return None


def kill_busy_worker(server: Any, rng: random.Random, *, look_for: float = 3.0) -> tuple[int, bool]:
    """SIGKILL a gunicorn worker, preferably one inside a database transaction right now.

    Returns ``(pid, caught_mid_request)``. The worker with a PostgreSQL session
    that is active or idle in a transaction is found through pg_stat_activity's
    client port and the owner of that socket.
    """
    workers = server.worker_pids()
    assert workers, "gunicorn has no workers"
    deadline = time.monotonic() + look_for
    with server.connect() as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT client_port FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND client_port IS NOT NULL AND (state = 'active' OR state LIKE 'idle in transaction%%')",
                (server.db_name,),
            ).fetchall()
            for (port,) in rows:
                inode = _socket_inode(port, 5432)
                pid = _owner_of_socket(workers, inode) if inode else None
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        return pid, True
            time.sleep(0.005)
    pid = rng.choice(workers)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return pid, False
