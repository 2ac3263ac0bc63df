"""The staged set and the blob pipeline of the requester, in process (PROTOCOL §5, §5c).

Every test runs a real ``SyncEngine`` against an in-process responder over
memory adapters (``tests.harness.memory_pair``); the requester's handle on the
cloud's blobs is :class:`Remote`, which counts what it is asked, injects
failures and measures how many transfers are in flight at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import pytest

from starkeep_sync import (
    BLOB_RESIDENT,
    FILE_RECORDS_TABLE,
    ITEM_REJECTED,
    LOCAL_DATA_SYNCED,
    ChangeEvent,
    DataRecord,
    SyncEngine,
    create_data_record,
    shared_object_key,
)
from starkeep_sync.core.exceptions import ItemsRejected, SyncTransportError
from starkeep_sync.core.protocols import StoredObject
from starkeep_sync.core.staged import RetryPolicy, StagedBlob, identity_of, ref_of
from starkeep_sync.core.state import MemorySyncStateStore
from starkeep_sync.core.transfers import TransferProgress
from starkeep_sync.device.supervisor import sync_until_done
from tests.harness import NOTES_APP, Pair, RecordingTransport, Side, memory_pair

#: Failed fetches are due again at once (for tests that are not about backoff).
NO_BACKOFF = RetryPolicy(base=0.0, cap=0.0)


class Now:
    """The engine's ``now``: seconds that only move when the test moves them."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Tracked:
    """A blob stream whose ``close`` ends its transfer in :class:`Remote`'s in-flight count."""

    def __init__(self, raw: IO[bytes], on_close: Callable[[], None]) -> None:
        self._raw = raw
        self._on_close: Callable[[], None] | None = on_close

    def read(self, size: int | None = -1) -> bytes:
        return self._raw.read(-1 if size is None else size)

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        self._raw.close()


class Remote:
    """The requester's handle on the cloud's blobs: counts calls, injects failures, measures concurrency.

    ``delay`` holds each transfer open that long (pacing, so side-by-side
    transfers overlap); ``in_flight``/``peak`` count transfers between the
    start of a read (``open``) or write (``put``) and its end.
    """

    def __init__(self, inner: Any, *, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self._lock = threading.Lock()
        self.opens: list[str] = []
        self.puts: list[str] = []
        self.has_calls: list[str] = []
        self.fail_open_once: set[str] = set()
        self.fail_open: set[str] = set()
        self.put_errors: dict[str, BaseException] = {}
        self.in_flight = 0
        self.peak = 0

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.opens.clear()
            self.puts.clear()
            self.has_calls.clear()
            self.peak = 0

    def has(self, key: str) -> bool:
        with self._lock:
            self.has_calls.append(key)
        return bool(self.inner.has(key))

    def open(self, key: str) -> IO[bytes] | None:
        with self._lock:
            self.opens.append(key)
            if key in self.fail_open_once:
                self.fail_open_once.discard(key)
                raise OSError(f"injected transient read failure for {key}")
        if key in self.fail_open:
            raise OSError(f"injected read failure for {key}")
        raw = self.inner.open(key)
        if raw is None:
            return None
        self._enter()
        if self.delay:
            time.sleep(self.delay)
        return _Tracked(raw, self._leave)  # type: ignore[return-value]

    def get(self, key: str) -> StoredObject | None:
        raise AssertionError("the engine streams blobs (open), it never reads one whole (get)")

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        with self._lock:
            self.puts.append(key)
        err = self.put_errors.get(key)
        if err is not None:
            raise err
        self._enter()
        try:
            if self.delay:
                time.sleep(self.delay)
            self.inner.put(key, data, content_type)
        finally:
            self._leave()

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def opened(self, key: str) -> int:
        with self._lock:
            return self.opens.count(key)


def write(side: Side, rid: str, data: bytes, *, label: str | None = None, store_blob: bool = True,
          type: str = "image/jpeg") -> DataRecord:
    """Write (or overwrite) record ``rid`` on ``side`` naming a blob of ``data``."""
    side.time.advance()
    digest = hashlib.sha256(data).hexdigest()
    key = shared_object_key(type, digest)
    if store_blob:
        side.storage.put(key, data, type)
    record = create_data_record(side.clock, type=type, origin_app_id="tests", content_hash=digest,
                                object_storage_key=key, size_bytes=len(data), mime_type=type, label=label, id=rid)
    existing = side.database.get(rid)
    if existing is not None:
        from msgspec.structs import replace

        record = replace(record, created_at=existing.created_at, version=existing.version + 1)
    side.database.put(record)
    return record


def make_engine(pair: Pair, remote: Any, *, state: Any = None, now: Callable[[], float] | None = None,
                channel: str = "drive", **kw: Any) -> SyncEngine:
    """The local engine for ``channel`` ("drive" or an app id) with ``remote`` as its handle on the cloud's blobs."""
    kw.setdefault("blob_retry", NO_BACKOFF)
    drive = channel == "drive"
    return SyncEngine(
        local_database=pair.local.database,
        local_storage=pair.local.storage,
        remote_storage=remote,
        transport=RecordingTransport(pair.make_transport(channel), channel, pair.exchanges),
        clock=pair.local.clock,
        sync_state=state if state is not None else MemorySyncStateStore(),
        app_source=None if drive else pair.local.app_source,
        sync_shared_records=drive,
        app_id=None if drive else channel,
        now=now or Now(),
        **kw,
    )


def listen(engine: SyncEngine, event_type: str) -> list[list[str]]:
    seen: list[list[str]] = []

    def listener(event: ChangeEvent) -> None:
        if event.event_type == event_type:
            seen.append(list(event.record_ids))

    engine.change_notifier.subscribe(listener)
    return seen


def resident(side: Side, record: DataRecord) -> bool:
    obj = side.storage.get(record.object_storage_key)
    return obj is not None and hashlib.sha256(obj.data).hexdigest() == record.content_hash


# -- pulls: metadata first, the blob from the staged set ---------------------------------------


def test_a_failed_download_mid_page_lands_all_metadata_and_is_fetched_later_from_the_staged_set() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", f"blob {i}".encode()) for i in range(5)]
    remote = Remote(pair.cloud.storage)
    remote.fail_open_once.add(records[2].object_storage_key)
    now = Now()
    engine = make_engine(pair, remote, now=now, blob_retry=RetryPolicy(base=5.0, jitter=0.0))
    synced = listen(engine, LOCAL_DATA_SYNCED)
    landed = listen(engine, BLOB_RESIDENT)

    r1 = engine.exchange()
    assert (r1.received, r1.applied, r1.has_more) == (5, 5, False)
    assert synced == [[r.id for r in records]]  # the staged one is announced too
    assert sorted(r1.resident) == ["r0", "r1", "r3", "r4"] and sorted(landed[0]) == sorted(r1.resident)
    assert r1.failed_pulls == [records[2].object_storage_key]
    assert engine.sync_state.get_watermarks()["cloud"] == records[4].updated_at  # covers all five
    assert (r1.staged, r1.staged_bytes) == (1, records[2].size_bytes)
    (failing,) = r1.staged_failing
    assert (failing.item_id, failing.attempts) == ("r2", 1) and "injected transient" in failing.last_error
    assert {r.id for r in pair.local.database.all()} == {f"r{i}" for i in range(5)}
    assert not pair.local.has_blob(records[2].object_storage_key)

    # Not due yet (backoff): a round in between does not fetch it.
    remote.reset()
    early = engine.exchange()
    assert (early.received, early.resident, remote.opens) == (0, [], [])

    now.t += 5.0  # storage recovered and the backoff passed
    r2 = engine.exchange()
    last = pair.exchanges[-1]
    assert last.request.watermarks["cloud"] >= records[4].updated_at  # metadata is not asked for again
    assert last.response.records == [] and r2.received == 0 and r2.applied == 0
    assert r2.resident == ["r2"] and landed[-1] == ["r2"]
    assert remote.opens == [records[2].object_storage_key]
    assert (r2.staged, r2.staged_bytes, r2.staged_failing, r2.has_more) == (0, 0, [], False)
    assert all(resident(pair.local, r) for r in records)
    assert synced == [[r.id for r in records]]  # a blob retry is not "newly synced" metadata


def test_a_persistently_missing_blob_never_stalls_a_large_catch_up_and_backs_off() -> None:
    pair = memory_pair()
    missing_at = 2345
    records = [write(pair.cloud, f"r{i:05d}", f"blob {i}".encode(), store_blob=i != missing_at)
               for i in range(5000)]
    missing = records[missing_at]
    remote = Remote(pair.cloud.storage)
    now = Now()
    policy = RetryPolicy(base=2.0, factor=2.0, cap=40.0, jitter=0.25)
    engine = make_engine(pair, remote, now=now, blob_retry=policy, page_limit=1000)

    results = []
    for _ in range(math.ceil(5000 / 1000) + 1):
        results.append(engine.exchange())
        if not results[-1].has_more:
            break
    assert not results[-1].has_more, "the catch-up did not end within ceil(5000/1000)+1 rounds"
    assert sum(r.applied for r in results) == 5000
    assert len(pair.local.database.all()) == 5000
    landed = [r for r in records if r is not missing]
    assert all(resident(pair.local, r) for r in landed)
    assert not pair.local.has_blob(missing.object_storage_key)
    assert engine.sync_state.get_watermarks()["cloud"] == records[-1].updated_at
    # Tried once in the round its metadata landed; not again in the rounds after (not due).
    assert remote.opened(missing.object_storage_key) == 1
    assert (results[-1].staged, [e.item_id for e in results[-1].staged_failing]) == (1, [missing.id])

    def entry() -> StagedBlob:
        (e,) = engine.blob_state.staged_blobs()
        return e

    failed_at = now.t
    for attempts in range(1, 8):
        e = entry()
        assert e.attempts == attempts
        assert "FileNotFoundError" in e.last_error
        raw = min(policy.cap, policy.base * policy.factor ** (attempts - 1))
        assert raw * (1 - policy.jitter) - 1e-9 <= e.next_attempt - failed_at <= raw + 1e-9, (attempts, e)
        # Just before it is due: not tried.
        now.t = e.next_attempt - 0.01
        r = engine.exchange()
        assert remote.opened(missing.object_storage_key) == attempts
        assert (r.received, r.failed_pulls, entry().attempts, r.has_more) == (0, [], attempts, False)
        # Due: tried once more, and backs off further.
        now.t = failed_at = e.next_attempt
        r = engine.exchange()
        assert remote.opened(missing.object_storage_key) == attempts + 1
        assert r.failed_pulls == [missing.object_storage_key] and r.has_more is False
    assert entry().attempts == 8
    assert entry().next_attempt - failed_at <= policy.cap  # capped
    # The blob turns up at last: the next due round fetches it.
    pair.cloud.storage.put(missing.object_storage_key, f"blob {missing_at}".encode(), "image/jpeg")
    now.t = entry().next_attempt
    r = engine.exchange()
    assert (r.resident, r.staged) == ([missing.id], 0)
    assert resident(pair.local, missing)


# -- blob policy ------------------------------------------------------------------------------------


def test_lazy_policy_moves_metadata_only_and_fetch_blobs_fetches_exactly_those_asked() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", f"blob {i}".encode()) for i in range(10)]
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote, blob_policy="lazy")

    results = sync_until_done(engine)
    assert sum(r.applied for r in results) == 10
    assert remote.opens == []  # no blob GET at all
    assert (results[-1].staged, results[-1].staged_failing) == (10, [])
    assert results[-1].staged_bytes == sum(r.size_bytes for r in records)
    assert not any(pair.local.has_blob(r.object_storage_key) for r in records)
    assert engine.exchange().resident == [] and remote.opens == []  # later rounds leave them too

    got = engine.fetch_blobs(["r1", "r5", "r7", "not-staged"])
    assert sorted(got.resident) == ["r1", "r5", "r7"]
    assert sorted(remote.opens) == sorted(records[i].object_storage_key for i in (1, 5, 7))
    assert got.pulled_bytes == sum(records[i].size_bytes for i in (1, 5, 7))
    assert got.staged == 7
    assert [r.id for r in records if resident(pair.local, r)] == ["r1", "r5", "r7"]

    remote.reset()
    assert engine.exchange().resident == [] and remote.opens == []


def test_lazy_fetch_blobs_that_fails_is_retried_by_later_rounds() -> None:
    pair = memory_pair()
    record = write(pair.cloud, "r1", b"wanted later")
    remote = Remote(pair.cloud.storage)
    remote.fail_open_once.add(record.object_storage_key)
    engine = make_engine(pair, remote, blob_policy="lazy")
    engine.exchange()
    failed = engine.fetch_blobs(["r1"])
    assert (failed.resident, failed.failed_pulls, failed.staged) == ([], [record.object_storage_key], 1)
    assert engine.blob_state.staged_blobs()[0].wanted is True  # asked for: now due like an eager one
    assert engine.exchange().resident == ["r1"]
    assert resident(pair.local, record)


def test_fetch_blobs_fetches_every_asked_blob_at_once_whatever_the_round_budget() -> None:
    """PROTOCOL §5c: a lazy entry becomes due when the application asks, "e.g. engine.fetch_blobs([record_id]),
    which fetches at once"; the per-round budget bounds what a round fetches on its own, not an explicit ask."""
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", bytes([i]) * 100) for i in range(6)]
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote, blob_policy="lazy", fetch_budget_bytes=150)
    engine.exchange()
    got = engine.fetch_blobs(["r0", "r1", "r2", "r3"])
    assert sorted(got.resident) == ["r0", "r1", "r2", "r3"], (got.resident, got.failed_pulls)
    assert sorted(remote.opens) == sorted(records[i].object_storage_key for i in range(4))
    assert got.staged == 2


def test_a_callable_policy_fetches_small_blobs_eagerly_and_leaves_large_ones_on_demand() -> None:
    pair = memory_pair()
    small = [write(pair.cloud, f"small{i}", os.urandom(50)) for i in range(3)]
    large = [write(pair.cloud, f"large{i}", os.urandom(500), type="video/mp4") for i in range(3)]
    remote = Remote(pair.cloud.storage)
    seen: list[str] = []

    def policy(record: Any) -> bool:
        seen.append(record.id)
        return record.size_bytes < 100

    engine = make_engine(pair, remote, blob_policy=policy)
    r = engine.exchange()
    assert sorted(seen) == sorted(x.id for x in small + large)
    assert sorted(r.resident) == sorted(x.id for x in small)
    assert sorted(remote.opens) == sorted(x.object_storage_key for x in small)
    assert (r.staged, r.staged_bytes) == (3, 1500)
    assert {e.item_id: e.wanted for e in engine.blob_state.staged_blobs()} == {x.id: False for x in large}
    assert all(resident(pair.local, x) for x in small) and not any(resident(pair.local, x) for x in large)
    assert engine.fetch_blobs([large[0].id]).resident == [large[0].id]


def test_two_records_naming_one_blob_fetch_it_once_and_both_become_resident() -> None:
    pair = memory_pair()
    a = write(pair.cloud, "a", b"the same bytes")
    b = write(pair.cloud, "b", b"the same bytes")
    assert a.object_storage_key == b.object_storage_key
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    r = engine.exchange()
    assert sorted(r.resident) == ["a", "b"] and r.staged == 0
    assert remote.opens == [a.object_storage_key] and r.pulled_bytes == a.size_bytes


# -- side by side -------------------------------------------------------------------------------------


def test_pulls_run_exactly_transfer_concurrency_at_once() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i:02d}", f"blob {i}".encode()) for i in range(20)]
    remote = Remote(pair.cloud.storage, delay=0.02)
    engine = make_engine(pair, remote, transfer_concurrency=3)
    assert engine.transfer_concurrency == 3
    r = engine.exchange()
    assert sorted(r.resident) == sorted(x.id for x in records)
    assert remote.peak == 3  # never more than 3, and really side by side
    assert engine.transfers.peak == 3
    assert all(resident(pair.local, x) for x in records)
    engine.close()


def test_pushes_run_exactly_transfer_concurrency_at_once() -> None:
    pair = memory_pair()
    records = [write(pair.local, f"r{i:02d}", f"blob {i}".encode()) for i in range(20)]
    remote = Remote(pair.cloud.storage, delay=0.02)
    engine = make_engine(pair, remote, transfer_concurrency=3)
    r = engine.exchange()
    assert r.shipped == 20 and sorted(remote.puts) == sorted(x.object_storage_key for x in records)
    assert remote.peak == 3
    assert engine.transfers.peak == 3
    assert all(resident(pair.cloud, x) for x in records)
    engine.close()


def test_transfer_concurrency_one_moves_one_blob_at_a_time_in_the_calling_thread() -> None:
    pair = memory_pair()
    for i in range(5):
        write(pair.cloud, f"r{i}", f"blob {i}".encode())
    remote = Remote(pair.cloud.storage, delay=0.005)
    threads: set[str] = set()
    original = remote.open

    def open_noting_thread(key: str) -> Any:
        threads.add(threading.current_thread().name)
        return original(key)

    remote.open = open_noting_thread  # type: ignore[method-assign]
    engine = make_engine(pair, remote, transfer_concurrency=1)
    assert len(engine.exchange().resident) == 5
    assert (remote.peak, engine.transfers.peak) == (1, 1)
    assert threads == {threading.current_thread().name}
    with pytest.raises(ValueError):
        make_engine(pair, remote, transfer_concurrency=0)


# -- progress ------------------------------------------------------------------------------------------


BIG = 5 * 1024 * 1024


def _check_progress(reports: list[TransferProgress], direction: str, records: list[DataRecord],
                    big: DataRecord) -> None:
    mine = [p for p in reports if p.direction == direction]
    assert mine, f"no {direction} progress reported"
    total_bytes = sum(r.size_bytes for r in records)
    opening = mine[0]
    assert (opening.key, opening.items_done, opening.items_total, opening.bytes_done, opening.bytes_total) == (
        None, 0, len(records), 0, total_bytes)
    assert all(p.items_total == len(records) and p.bytes_total == total_bytes for p in mine)
    assert all(0 <= p.items_done <= p.items_total and 0 <= p.bytes_done <= p.bytes_total for p in mine)
    # Within the large blob, bytes are reported in several steps as they pass, each one further.
    steps = [p.bytes_done for p in mine if p.key == big.object_storage_key]
    assert len(set(steps)) >= 4, steps
    assert steps == sorted(steps)
    # Each item is reported done once; the final report has everything done.
    assert max(p.items_done for p in mine) == len(records)
    assert any(p.items_done == p.items_total and p.bytes_done == total_bytes for p in mine)
    assert {p.key for p in mine} == {None, *(r.object_storage_key for r in records)}


def recorded_progress() -> tuple[list[TransferProgress], Callable[[TransferProgress], None]]:
    """A list and a progress callback that appends to it (from any transfer thread)."""
    reports: list[TransferProgress] = []
    lock = threading.Lock()

    def on_progress(p: TransferProgress) -> None:
        with lock:
            reports.append(p)

    return reports, on_progress


def test_progress_reports_items_and_bytes_of_a_pull_within_a_large_blob() -> None:
    pair = memory_pair()
    big = write(pair.cloud, "big", os.urandom(BIG), type="video/mp4")
    small = [write(pair.cloud, f"s{i}", f"small {i}".encode()) for i in range(3)]
    reports, on_progress = recorded_progress()
    engine = make_engine(pair, Remote(pair.cloud.storage), on_progress=on_progress)
    r = engine.exchange()
    assert len(r.resident) == 4 and r.pulled_bytes == BIG + sum(x.size_bytes for x in small)
    assert all(p.direction == "pull" for p in reports)
    _check_progress(reports, "pull", [big, *small], big)


def test_progress_reports_items_and_bytes_of_a_push_within_a_large_blob() -> None:
    pair = memory_pair()
    big = write(pair.local, "big", os.urandom(BIG), type="video/mp4")
    small = [write(pair.local, f"s{i}", f"small {i}".encode()) for i in range(3)]
    reports, on_progress = recorded_progress()
    engine = make_engine(pair, Remote(pair.cloud.storage), on_progress=on_progress)
    r = engine.exchange()
    assert r.shipped == 4 and r.pushed_bytes == BIG + sum(x.size_bytes for x in small)
    assert all(p.direction == "push" for p in reports)
    _check_progress(reports, "push", [big, *small], big)


# -- keys the peer holds ------------------------------------------------------------------------------------


def test_label_edits_of_a_record_with_a_blob_push_no_blob_bytes() -> None:
    pair = memory_pair()
    data = os.urandom(4096)
    first = write(pair.local, "photo", data, label="v0")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    r = engine.exchange()
    assert (r.shipped, r.pushed_bytes, remote.puts) == (1, 4096, [first.object_storage_key])

    for n in range(1, 6):
        remote.reset()
        edited = write(pair.local, "photo", data, label=f"v{n}")
        assert edited.object_storage_key == first.object_storage_key
        r = engine.exchange()
        assert (r.shipped, r.pushed_bytes) == (1, 0), n
        # Not uploaded, and not even asked about (no HEAD): the peer is known to hold it.
        assert (remote.puts, remote.has_calls, remote.opens) == ([], [], []), n
        assert pair.cloud.database.get("photo").label == f"v{n}"


def test_a_peer_that_lost_its_data_makes_the_engine_forget_known_keys_and_upload_again() -> None:
    pair = memory_pair()
    data = os.urandom(2048)
    record = write(pair.local, "photo", data, label="v0")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    assert engine.exchange().pushed_bytes == 2048
    assert engine.blob_state.remote_keys_known([record.object_storage_key]) == {record.object_storage_key}

    pair.cloud.wipe()  # the cloud is reinstalled from scratch
    remote.reset()
    results = sync_until_done(engine)
    assert engine.blob_state.remote_keys_known([record.object_storage_key]) == {record.object_storage_key}
    assert remote.puts == [record.object_storage_key]
    assert sum(r.pushed_bytes for r in results) == 2048
    assert resident(pair.cloud, record)
    assert pair.cloud.database.get("photo") == pair.local.database.get("photo")


def test_a_peer_that_lost_data_gets_the_blobs_again_though_their_keys_were_known() -> None:
    """Known keys are forgotten once the peer's vector shows it lost data, so the re-ship uploads the blobs.

    (A wipe is seen through ``responderWatermarks`` in the first round after it. An edit shipped in that
    very round is not covered: the vector then already holds it. See README, "Blobs".)
    """
    pair = memory_pair()
    data = os.urandom(2048)
    write(pair.local, "photo", data, label="v0")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    engine.exchange()
    key = pair.local.database.get("photo").object_storage_key
    assert engine.blob_state.remote_keys_known([key]) == {key}
    pair.cloud.wipe()
    detect = engine.exchange()
    assert detect.has_more and engine.blob_state.remote_keys_known([key]) == set()
    edited = write(pair.local, "photo", data, label="v1")
    sync_until_done(engine)
    assert pair.cloud.database.get("photo") == edited
    assert resident(pair.cloud, edited)


def test_a_blob_that_arrived_here_by_another_route_is_not_taken_for_one_the_peer_holds() -> None:
    """Keys the peer holds are learnt from an upload, a 412, a HEAD or a pull (PROTOCOL §5c, staged.py);
    a blob the application copied in locally proves nothing about the peer."""
    pair = memory_pair()
    data = os.urandom(1024)
    orphan = write(pair.cloud, "photo", data, store_blob=False)  # the cloud holds the record, not its blob
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    first = engine.exchange()
    assert (first.applied, first.staged, first.failed_pulls) == (1, 1, [orphan.object_storage_key])
    pair.local.storage.put(orphan.object_storage_key, data, "image/jpeg")  # the app copies the file in
    assert engine.exchange().resident == ["photo"]

    edited = write(pair.local, "photo", data, label="renamed")
    results = sync_until_done(engine)
    assert sum(r.shipped for r in results) == 1
    assert pair.cloud.database.get("photo") == edited
    assert resident(pair.cloud, edited)  # uploaded with the edit: the peer never had it


def test_a_pulled_blob_is_known_to_the_peer_and_never_pushed_back() -> None:
    pair = memory_pair()
    data = os.urandom(1024)
    write(pair.cloud, "photo", data, label="theirs")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    assert engine.exchange().resident == ["photo"]
    remote.reset()
    write(pair.local, "photo", data, label="mine")  # a local edit of the label only
    r = engine.exchange()
    assert (r.shipped, r.pushed_bytes, remote.puts, remote.has_calls) == (1, 0, [], [])


def test_blobs_uploaded_in_a_round_whose_exchange_failed_are_not_uploaded_again() -> None:
    pair = memory_pair()
    records = [write(pair.local, f"r{i}", os.urandom(500)) for i in range(3)]
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    inner = engine.transport
    calls = {"n": 0}

    class DropsTheFirstRequest:
        def exchange(self, request: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise SyncTransportError("connection reset", code="connection_error")
            return inner.exchange(request)

    engine.transport = DropsTheFirstRequest()  # type: ignore[assignment]
    with pytest.raises(SyncTransportError):
        engine.exchange()
    assert sorted(remote.puts) == sorted(r.object_storage_key for r in records)  # the blobs went up
    assert pair.cloud.database.all() == []  # the metadata did not
    remote.reset()
    r = engine.exchange()
    assert (r.shipped, r.pushed_bytes, remote.puts, remote.has_calls) == (3, 0, [], [])
    assert all(pair.cloud.database.get(x.id) == x for x in records)


# -- entries leaving the set ------------------------------------------------------------------------------


def test_superseded_deleted_and_arrived_entries_leave_the_staged_set() -> None:
    pair = memory_pair()
    r1 = write(pair.cloud, "r1", b"one")
    r2 = write(pair.cloud, "r2", b"two")
    r3 = write(pair.cloud, "r3", b"three")
    r4 = write(pair.cloud, "r4", b"four")
    remote = Remote(pair.cloud.storage)
    remote.fail_open |= {r.object_storage_key for r in (r1, r2, r3, r4)}
    engine = make_engine(pair, remote)
    landed = listen(engine, BLOB_RESIDENT)
    first = engine.exchange()
    assert (first.applied, first.staged, first.resident) == (4, 4, [])

    r1b = write(pair.cloud, "r1", b"one, edited")  # superseded by a version naming another blob
    pair.cloud.delete_record("r2")  # deleted
    pair.local.storage.put(r3.object_storage_key, b"three", "image/jpeg")  # arrived by another route
    remote.fail_open.clear()
    remote.reset()
    second = engine.exchange()
    assert second.applied == 2
    assert sorted(second.resident) == ["r1", "r3", "r4"]
    assert [sorted(ids) for ids in landed] == [["r1", "r3", "r4"]]
    assert (second.staged, second.staged_bytes, second.staged_failing) == (0, 0, [])
    assert engine.blob_state.staged_blobs() == []
    # Only the blobs still wanted and not here were read: not r1's old one, not r2's, not r3's.
    assert sorted(remote.opens) == sorted([r1b.object_storage_key, r4.object_storage_key])
    assert resident(pair.local, r1b) and resident(pair.local, r4)
    assert not pair.local.has_blob(r1.object_storage_key) and not pair.local.has_blob(r2.object_storage_key)


def test_lazy_entries_of_deleted_superseded_or_arrived_records_leave_the_staged_set() -> None:
    """PROTOCOL §5c: an entry leaves the set when its record is deleted or moves to another blob, whatever
    the blob policy, and when its blob turns out to be here already once it is due or asked for."""
    pair = memory_pair()
    write(pair.cloud, "gone", b"to be deleted")
    arrived = write(pair.cloud, "arrived", b"copied in by the app")
    write(pair.cloud, "edited", b"first version")
    kept = write(pair.cloud, "kept", b"still wanted")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote, blob_policy="lazy")
    assert engine.exchange().staged == 4

    pair.cloud.delete_record("gone")
    edited = write(pair.cloud, "edited", b"second version")
    pair.local.storage.put(arrived.object_storage_key, b"copied in by the app", "image/jpeg")
    r = engine.exchange()
    assert remote.opens == []
    # A lazy entry is not looked at until it is asked for: the copied-in blob is found then.
    assert sorted(e.item_id for e in engine.blob_state.staged_blobs()) == ["arrived", "edited", "kept"]
    asked = engine.fetch_blobs(["arrived"])
    assert (asked.resident, asked.pulled_bytes, remote.opens) == (["arrived"], 0, [])
    assert sorted(e.item_id for e in engine.blob_state.staged_blobs()) == ["edited", "kept"]
    assert (asked.staged, asked.staged_bytes) == (2, edited.size_bytes + kept.size_bytes)
    assert r.staged == 3


def test_an_app_file_row_whose_blob_failed_leaves_the_set_when_the_row_is_deleted() -> None:
    pair = memory_pair()
    stuck = pair.cloud.write_file_row("f1", "one")
    fine = pair.cloud.write_file_row("f2", "two")
    stuck_key, fine_key = stuck.row["object_storage_key"], fine.row["object_storage_key"]
    remote = Remote(pair.cloud.storage)
    remote.fail_open.add(stuck_key)
    engine = make_engine(pair, remote, channel=NOTES_APP)
    first = engine.exchange()
    assert (first.applied, first.resident, first.failed_pulls, first.staged) == (2, ["f2"], [stuck_key], 1)
    (entry,) = engine.blob_state.staged_blobs()
    assert (entry.item_id, entry.key, entry.attempts) == ("f1", stuck_key, 1)
    assert pair.local.has_blob(fine_key) and not pair.local.has_blob(stuck_key)

    pair.cloud.delete_row("f1", table=FILE_RECORDS_TABLE)
    remote.fail_open.clear()
    remote.reset()
    second = engine.exchange()
    assert (second.applied, second.resident, second.staged) == (1, [], 0)
    assert remote.opens == []  # a deleted row's blob is not fetched
    assert not pair.local.has_blob(stuck_key)


def test_a_fetch_budget_spreads_a_backlog_over_rounds() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", bytes([i]) * 100) for i in range(10)]
    huge = write(pair.cloud, "huge", os.urandom(1000))  # larger than the whole budget: must still land
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote, fetch_budget_bytes=250)
    fetched: list[int] = []
    while not fetched or engine.blob_state.staged_totals()[0]:
        r = engine.exchange()
        assert r.staged_failing == [] and r.has_more is False
        # At most one blob past the budget is started in a round.
        assert r.pulled_bytes < 250 + 1000 and (r.pulled_bytes < 250 + 100 or "huge" in r.resident), r
        assert r.resident, "a round with due entries fetched nothing"
        fetched.append(len(r.resident))
        assert len(fetched) <= 11, fetched
    assert sum(fetched) == 11 and len(fetched) >= 4 and max(fetched) <= 3
    assert sorted(remote.opens) == sorted(r.object_storage_key for r in [*records, huge])
    assert all(resident(pair.local, r) for r in [*records, huge])
    with pytest.raises(ValueError):
        make_engine(pair, remote, fetch_budget_bytes=0)


def test_sync_until_done_goes_on_while_a_fetch_budget_leaves_due_blobs() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", bytes([i]) * 100) for i in range(10)]
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote, fetch_budget_bytes=250)
    results = sync_until_done(engine)
    # Each round but the last leaves due blobs for later, and says how many.
    assert [r.deferred > 0 for r in results] == [True] * (len(results) - 1) + [False], results
    assert results[0].deferred == 7  # three 100-byte blobs fit a 250-byte budget (the third passes it)
    assert all(not r.has_more for r in results) and len(results) == 4
    assert engine.blob_state.staged_totals()[0] == 0
    assert all(resident(pair.local, r) for r in records)


def test_a_failing_blob_under_a_fetch_budget_does_not_keep_sync_until_done_going() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", bytes([i]) * 100) for i in range(4)]
    remote = Remote(pair.cloud.storage)
    remote.fail_open.update(r.object_storage_key for r in records)
    engine = make_engine(pair, remote, fetch_budget_bytes=150, blob_retry=RetryPolicy(base=60.0, cap=60.0))
    results = sync_until_done(engine)
    # Every blob is tried once (two per round under the budget), then waits out its backoff.
    assert len(results) == 2 and results[-1].deferred == 0
    assert sorted(remote.opens) == sorted(r.object_storage_key for r in records)
    assert engine.blob_state.staged_totals()[0] == 4


# -- pushes the peer refuses for good --------------------------------------------------------------------------


def _too_large(key: str) -> SyncTransportError:
    return SyncTransportError(f"Blob of 9999 bytes exceeds the limit of 1000 bytes. (PUT {key})", status=413,
                              code="payload_too_large")


def test_a_permanent_push_refusal_rejects_that_record_only_and_reports_it_once() -> None:
    pair = memory_pair()
    records = [write(pair.local, f"r{i:03d}", f"blob {i}".encode()) for i in range(100)]
    bad = records[40]
    remote = Remote(pair.cloud.storage)
    remote.put_errors[bad.object_storage_key] = _too_large(bad.object_storage_key)
    engine = make_engine(pair, remote, page_limit=30)
    rejected_events = listen(engine, ITEM_REJECTED)

    rounds: list[Any] = []
    with pytest.raises(ItemsRejected) as raised:
        sync_until_done(engine, strict=True, on_round=rounds.append)
    # The same rounds a clean run takes: 30, 29 (one rejected), 30, 10.
    assert [r.shipped for r in (x.result for x in rounds)] == [30, 29, 30, 10]
    assert [r.id for r in records if pair.cloud.database.get(r.id) is not None] == [
        r.id for r in records if r is not bad]
    assert all(resident(pair.cloud, r) for r in records if r is not bad)
    (rej,) = raised.value.rejected
    assert (rej.item_id, rej.hlc, rej.key) == (bad.id, bad.updated_at, bad.object_storage_key)
    assert "exceeds the limit of 1000 bytes" in rej.reason
    assert "exceeds the limit" in str(raised.value)
    assert [[x.item_id for x in res.rejected] for res in (x.result for x in rounds)] == [[], [bad.id], [], []]
    assert all(not res.failed_pushes for res in (x.result for x in rounds))
    assert rejected_events == [[bad.id]]
    assert engine.blob_state.rejected_items() == [rej]
    assert remote.puts.count(bad.object_storage_key) == 1

    # Later rounds neither retry nor report it again; a later record of the same node ships.
    later = write(pair.local, "r100", b"after the rejected one")
    results = sync_until_done(engine, strict=True)
    assert sum(r.shipped for r in results) == 1 and pair.cloud.database.get("r100") == later
    assert all(not r.rejected for r in results) and rejected_events == [[bad.id]]
    assert remote.puts.count(bad.object_storage_key) == 1

    # Written anew (a new HLC, a smaller blob the peer accepts): it ships and is no longer rejected.
    fixed = write(pair.local, bad.id, b"a smaller version")
    results = sync_until_done(engine, strict=True)
    assert sum(r.shipped for r in results) == 1
    assert pair.cloud.database.get(bad.id) == fixed and resident(pair.cloud, fixed)
    assert engine.blob_state.rejected_items() == []
    assert rejected_events == [[bad.id]]


def test_a_rejected_newest_item_is_not_offered_again_while_the_peer_vector_is_below_it() -> None:
    pair = memory_pair()
    ok = write(pair.local, "ok", b"fine")
    bad = write(pair.local, "bad", b"too big for the peer")
    remote = Remote(pair.cloud.storage)
    remote.put_errors[bad.object_storage_key] = _too_large(bad.object_storage_key)
    engine = make_engine(pair, remote)
    first = engine.exchange()
    assert (first.shipped, [r.item_id for r in first.rejected], first.has_more) == (1, ["bad"], False)
    assert pair.cloud.database.get("ok") == ok and pair.cloud.database.get("bad") is None
    for _ in range(3):
        r = engine.exchange()
        assert (r.shipped, r.rejected, r.failed_pushes, r.has_more) == (0, [], [], False)
    assert remote.puts.count(bad.object_storage_key) == 1
    assert [r.item_id for r in engine.blob_state.rejected_items()] == ["bad"]


def test_a_rejection_is_dropped_when_another_devices_newer_version_arrives() -> None:
    pair = memory_pair()
    bad = write(pair.local, "bad", b"too big for the peer")
    remote = Remote(pair.cloud.storage)
    remote.put_errors[bad.object_storage_key] = _too_large(bad.object_storage_key)
    engine = make_engine(pair, remote)
    assert [x.item_id for x in engine.exchange().rejected] == ["bad"]
    other = write(pair.cloud, "bad", b"another device's smaller version")  # a later HLC: it wins LWW here
    assert other.updated_at > bad.updated_at
    results = sync_until_done(engine, strict=True)  # nothing of ours is rejected any more: no raise
    assert sum(r.applied for r in results) == 1 and pair.local.database.get("bad") == other
    assert resident(pair.local, other)
    assert engine.blob_state.rejected_items() == []


def test_a_rejection_stays_when_other_records_arrive() -> None:
    pair = memory_pair()
    older = write(pair.cloud, "other", b"unrelated")  # applied in the round: not the rejected record
    bad = write(pair.local, "bad", b"too big for the peer")
    remote = Remote(pair.cloud.storage)
    remote.put_errors[bad.object_storage_key] = _too_large(bad.object_storage_key)
    engine = make_engine(pair, remote)
    first = engine.exchange()
    assert [x.item_id for x in first.rejected] == ["bad"] and pair.local.database.get("other") == older
    write(pair.cloud, "other2", b"another record")
    assert engine.exchange().applied == 1
    assert [r.item_id for r in engine.blob_state.rejected_items()] == ["bad"]


def test_a_rejection_survives_a_new_engine_on_the_same_state() -> None:
    pair = memory_pair()
    bad = write(pair.local, "bad", b"refused for good")
    remote = Remote(pair.cloud.storage)
    remote.put_errors[bad.object_storage_key] = _too_large(bad.object_storage_key)
    state = MemorySyncStateStore()
    assert [x.item_id for x in make_engine(pair, remote, state=state).exchange().rejected] == ["bad"]
    again = make_engine(pair, remote, state=state)  # the app restarted; its state store kept the rejection
    events = listen(again, ITEM_REJECTED)
    r = again.exchange()
    assert (r.shipped, r.rejected, r.failed_pushes, events) == (0, [], [], [])
    assert remote.puts.count(bad.object_storage_key) == 1


@pytest.mark.parametrize("error", [
    pytest.param(SyncTransportError("service unavailable", status=503), id="503"),
    pytest.param(SyncTransportError("too many requests", status=429), id="429"),
    pytest.param(OSError("connection reset"), id="network"),
    # The server's own disk is full (not the owner's quota): its operator frees space and the same upload succeeds.
    pytest.param(SyncTransportError("The server's blob storage is full; nothing of this blob was stored.",
                                    status=507, code="insufficient_storage"), id="507-server-disk-full"),
])
def test_a_transient_push_failure_still_halts_its_node(error: BaseException) -> None:
    pair = memory_pair()
    records = [write(pair.local, f"r{i}", f"blob {i}".encode()) for i in range(10)]
    stuck = records[3]
    remote = Remote(pair.cloud.storage)
    remote.put_errors[stuck.object_storage_key] = error
    engine = make_engine(pair, remote)
    rejected_events = listen(engine, ITEM_REJECTED)
    r = engine.exchange()
    assert r.shipped == 3 and r.rejected == [] and r.failed_pushes == [stuck.object_storage_key]
    assert sorted(x.id for x in pair.cloud.database.all()) == ["r0", "r1", "r2"]  # the contiguous prefix
    assert engine.blob_state.rejected_items() == [] and rejected_events == []

    del remote.put_errors[stuck.object_storage_key]
    results = sync_until_done(engine, strict=True)
    assert sum(x.shipped for x in results) == 7
    assert sorted(x.id for x in pair.cloud.database.all()) == [x.id for x in records]


def test_a_local_blob_that_no_longer_matches_its_hash_is_rejected_not_retried() -> None:
    pair = memory_pair()
    records = [write(pair.local, f"r{i}", f"blob {i}".encode()) for i in range(4)]
    corrupt = records[1]
    pair.local.storage.put(corrupt.object_storage_key, b"bit rot", "image/jpeg")
    remote = Remote(pair.cloud.storage)
    engine = make_engine(pair, remote)
    r = engine.exchange()
    assert r.shipped == 3 and [x.item_id for x in r.rejected] == ["r1"]
    assert "BlobIntegrityError" in r.rejected[0].reason
    assert not pair.cloud.has_blob(corrupt.object_storage_key)  # nothing stored for the bad bytes
    assert engine.exchange().rejected == []


def test_blob_counters_stay_consistent_over_a_round_that_pulls_and_pushes() -> None:
    pair = memory_pair()
    theirs = write(pair.cloud, "theirs", os.urandom(300))
    mine = write(pair.local, "mine", os.urandom(700))
    engine = make_engine(pair, Remote(pair.cloud.storage))
    r = engine.exchange()
    assert (r.shipped, r.applied, r.pushed_bytes, r.pulled_bytes, r.bytes_moved) == (1, 1, 700, 300, 1000)
    assert r.resident == ["theirs"] and resident(pair.local, theirs) and resident(pair.cloud, mine)


def test_a_relayed_older_version_does_not_displace_the_newer_one_staged_in_the_same_round() -> None:
    """A device that lost its peer vector re-ships what it holds, staged blobs included; when the same round
    brings a newer version of such a record, the newer version's blob is the one wanted (found by the
    crash-recovery load test: the older entry replaced the newer one and was then dropped as superseded)."""
    pair = memory_pair()
    first = write(pair.cloud, "photo", b"first bytes")
    remote = Remote(pair.cloud.storage)
    remote.fail_open.add(first.object_storage_key)
    state = MemorySyncStateStore()
    engine = make_engine(pair, remote, state=state)
    assert engine.exchange().staged == 1  # v1 here as metadata only
    second = write(pair.cloud, "photo", b"second bytes")
    state.set_peer_watermarks({})  # as after a crash before the peer vector was saved

    r = engine.exchange()

    assert pair.local.database.get("photo") == second
    assert r.resident == ["photo"] and resident(pair.local, second)
    assert (r.staged, engine.blob_state.staged_blobs()) == (0, [])


def test_a_progress_callback_that_raises_does_not_fail_the_transfers() -> None:
    pair = memory_pair()
    records = [write(pair.cloud, f"r{i}", os.urandom(300)) for i in range(3)]
    calls: list[TransferProgress] = []

    def broken(p: TransferProgress) -> None:
        calls.append(p)
        raise RuntimeError("the display is gone")

    engine = make_engine(pair, Remote(pair.cloud.storage), on_progress=broken)
    r = engine.exchange()
    assert sorted(r.resident) == ["r0", "r1", "r2"] and not r.errors
    assert all(resident(pair.local, x) for x in records)
    assert len(calls) == 1  # reported once, then left alone for the batch


@pytest.mark.parametrize("identity", [
    ("r", "01HF7Y8Z9ABCDEFGHJKMNPQRST"), ("r", 'quote " backslash \\ nul \x00 del \x7f \u2028 é 😀'),
    ("a", "notes", "_starkeep_sync_records", "f1"), ("a", "notes", "items", 7, 1.5, None, True),
])
def test_a_ref_is_the_compact_json_of_its_identity_and_names_it_back(identity: tuple[Any, ...]) -> None:
    # Refs are stored by the state stores: their text must not change between releases.
    ref = ref_of(identity)
    assert ref == json.dumps(list(identity), separators=(",", ":"), ensure_ascii=False)
    assert identity_of(ref) == identity
