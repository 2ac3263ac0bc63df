"""Convergence under faults: dropped connections and 500s, failing uploads, killed workers, dying devices.

Each test runs several devices with the random workload of ``test_many_devices``
under one kind of fault, lets the fault stop (or not), syncs everyone until a
whole pass moves nothing, and checks the LWW winner of every id, and every live
blob, on every device and on the server. Devices treat every transport error
(``SyncTransportError``: 500, reset, truncated answer) as "retry later".
"""

from __future__ import annotations

import random
import re
import socket
import threading
from collections import Counter
from pathlib import Path

from starkeep_sync.client import HttpObjectStorage
from tests.load.conftest import WORKERS, LoadServer
from tests.load.support import (
    Device,
    FaultProxy,
    Oracle,
    check_converged,
    converge,
    kill_busy_worker,
    run_workload,
)

DEVICES = 6
WORKLOAD_SECONDS = 12


def make_devices(server: LoadServer, username: str, root: Path, oracle: Oracle, *, url: str | None = None,
                 persistent: bool | None = None, seed: int = 0, **kw: object) -> list[Device]:
    token = server.new_owner(username)
    return [
        Device(i, url or server.url, token, root, oracle, seed=seed + i,
               persistent=(i % 2 == 0) if persistent is None else persistent,
               page_limit=5 if i % 3 == 1 else 1000, **kw)  # type: ignore[arg-type]
        for i in range(DEVICES)
    ]


def summary(devices: list[Device]) -> str:
    errors: Counter[str] = Counter()
    for d in devices:
        errors += d.stats.transport_errors + d.stats.blob_errors
    rounds = sum(d.stats.rounds for d in devices)
    writes = sum(d.stats.writes for d in devices)
    failed = sum(d.stats.failed_transfers for d in devices)
    return f"{writes} writes, {rounds} rounds, {failed} failed blob transfers, errors {dict(errors)}"


def close_all(devices: list[Device]) -> None:
    for d in devices:
        d.close()


def test_dropped_connections_and_500s(load_server: LoadServer, device_dir: Path) -> None:
    """(a) A proxy cuts connections mid-request or mid-response and answers 500 for some requests."""
    proxy = FaultProxy(load_server.port, seed=7)
    oracle = Oracle()
    mark = load_server.mark()
    devices = make_devices(load_server, "faults-proxy", device_dir, oracle, url=proxy.url, seed=100)
    try:
        run_workload(devices, WORKLOAD_SECONDS)
        proxy.faults = False
        passes = converge(devices)
        counts = check_converged(devices, load_server, "faults-proxy", oracle)
    finally:
        close_all(devices)
        proxy.close()
    print(f"\nproxy: {dict(proxy.counts)}; {summary(devices)}; {passes} passes; {counts}")
    assert proxy.counts["500"] >= 5 and proxy.counts["cut-request"] >= 5 and proxy.counts["cut-response"] >= 5
    assert sum(sum(d.stats.transport_errors.values()) for d in devices) >= 10, summary(devices)
    # The server itself never failed: every 500 the devices saw was the proxy's. (A request whose
    # body the proxy cut makes Django answer 500 to a client that is gone: 0 bytes sent, ignored.)
    errors = [line for line in load_server.server_errors(mark)
              if not re.search(r'"(POST|PUT) [^"]*" 500 0 ', line)]
    assert not errors, "\n".join(errors[:20])


def test_transient_blob_upload_failures(load_server: LoadServer, device_dir: Path) -> None:
    """(b) Half the new blobs fail their first upload: their records wait, then ship, nothing is lost."""
    oracle = Oracle()
    devices = make_devices(load_server, "faults-blobs", device_dir, oracle, seed=200, flaky_blobs=0.5)
    try:
        run_workload(devices, WORKLOAD_SECONDS)
        passes = converge(devices)  # the failures stay armed: each key fails once, whenever it is first pushed
        counts = check_converged(devices, load_server, "faults-blobs", oracle)
    finally:
        close_all(devices)
    print(f"\n{summary(devices)}; {passes} passes; {counts}")
    injected = sum(1 for d in devices for f in d.flaky.values() for key in set(f.puts) if f.puts.count(key) > 1)
    assert sum(d.stats.failed_transfers for d in devices) >= 5 and injected >= 5, summary(devices)


def test_worker_killed_mid_exchange(load_server: LoadServer, device_dir: Path) -> None:
    """(c) gunicorn workers are SIGKILLed while devices sync; the master restarts them; nothing is lost."""
    oracle = Oracle()
    mark = load_server.mark()
    devices = make_devices(load_server, "faults-kill", device_dir, oracle, seed=300)
    rng = random.Random(3)
    kills: list[tuple[int, bool]] = []
    stop = threading.Event()

    def killer() -> None:
        for _ in range(4):
            if stop.wait(2.0):
                return
            kills.append(kill_busy_worker(load_server, rng))

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    try:
        thread.start()
        run_workload(devices, WORKLOAD_SECONDS)
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
        workers = load_server.wait_workers(WORKERS)
        passes = converge(devices)
        counts = check_converged(devices, load_server, "faults-kill", oracle)
    finally:
        stop.set()
        close_all(devices)
    print(f"\nkilled {kills}; workers now {workers}; {summary(devices)}; {passes} passes; {counts}")
    assert len(kills) == 4 and not {pid for pid, _ in kills} & set(workers)
    assert any(mid for _, mid in kills), "no worker was caught inside a database transaction"
    # No 5xx from a live worker; the only errors logged are the kills themselves.
    errors = [line for line in load_server.server_errors(mark)
              if not re.search(r"Worker \(pid:\d+\) was sent SIGKILL", line)]
    assert not errors, "\n".join(errors[:20])


def test_device_dies_before_saving_watermarks(load_server: LoadServer, device_dir: Path) -> None:
    """(d) Devices die after applying items but before saving their vectors, or in the middle of
    applying; each reopens its sqlite store from disk and syncs on: no loss, no duplicates."""
    oracle = Oracle()
    devices = make_devices(load_server, "faults-crash", device_dir, oracle, seed=400, persistent=True,
                           crash_rate=0.3)
    try:
        run_workload(devices, WORKLOAD_SECONDS)
        passes = converge(devices)
        counts = check_converged(devices, load_server, "faults-crash", oracle)
    finally:
        close_all(devices)
    fired: Counter[str] = Counter()
    for d in devices:
        fired += d.crash.fired
    print(f"\ncrashes {dict(fired)}; {summary(devices)}; {passes} passes; {counts}")
    assert fired["own"] and fired["peer"] and fired["apply"] and sum(fired.values()) >= 6, fired
    assert sum(d.stats.reopened for d in devices) == sum(fired.values())


def test_upload_cut_mid_body_stores_nothing(load_server: LoadServer) -> None:
    """A blob upload whose connection drops mid-body must not leave a truncated blob under the key.

    The key is not a hash here, so nothing else would notice: every later push would find the key
    present and skip it, and every pull would get the truncated bytes.
    """
    token = load_server.new_owner("cut-upload")
    key = "apps/notes/syncable/photo-without-hash-name.bin"
    with socket.create_connection(("127.0.0.1", load_server.port), timeout=20) as s:
        s.sendall(
            f"PUT /apps/notes/files/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n".encode() + b"x" * 1500
        )
        s.shutdown(socket.SHUT_WR)  # the connection ends after 1500 of the 4000 bytes
        answer = s.recv(4096)
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    storage = HttpObjectStorage(f"{load_server.url}/apps/notes", auth=token)
    assert not storage.has(key)
    storage.put(key, b"y" * 4000, "application/octet-stream")  # the retry stores the whole blob
    obj = storage.get(key)
    assert obj is not None and obj.data == b"y" * 4000
