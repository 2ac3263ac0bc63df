"""Eight devices against gunicorn -w 4 on PostgreSQL + Redis: everyone converges on the LWW winners.

Also what several workers must agree on: a signature is accepted once, whichever
worker sees it; concurrent writes of the same records, and uploads of the same
blob, neither deadlock nor fail.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import time
from collections import Counter
from pathlib import Path

import requests

from starkeep_sync import DataRecord, HLCTimestamp, SyncExchangeRequest, shared_object_key
from starkeep_sync.client import AppSignatureAuth
from starkeep_sync.client.session import dumps_json
from tests.load.conftest import LoadServer
from tests.load.support import Device, Oracle, check_converged, converge, run_workload

DEVICES = 8
WORKLOAD_SECONDS = 20


def test_many_devices_converge(load_server: LoadServer, device_dir: Path) -> None:
    token = load_server.token
    oracle = Oracle()
    mark = load_server.mark()
    devices = [
        Device(i, load_server.url, token, device_dir, oracle, persistent=i % 2 == 0, seed=1000 + i,
               page_limit=5 if i % 4 == 1 else 1000)
        for i in range(DEVICES)
    ]
    try:
        started = time.monotonic()
        run_workload(devices, WORKLOAD_SECONDS)
        passes = converge(devices)
        counts = check_converged(devices, load_server, "load", oracle)
        elapsed = time.monotonic() - started
    finally:
        for d in devices:
            d.close()

    rounds = sum(d.stats.rounds for d in devices)
    errors = {d.node_id: dict(d.stats.transport_errors + d.stats.blob_errors) for d in devices
              if d.stats.transport_errors or d.stats.blob_errors}
    print(f"\n{DEVICES} devices, {oracle.writes} writes, {rounds} rounds in {elapsed:.1f} s; "
          f"converged in {passes} passes; final state {counts}; retryable errors {errors}")
    assert oracle.writes > 150 and rounds > 100, "the workload did too little to mean anything"
    # "Twice around" suffices without faults, and the third pass moves nothing.
    assert passes <= 3, passes
    # No fault was injected: nothing may have failed on the server, not even once.
    assert not any(re.search(r"(^|:)5\d\d$", code) for e in errors.values() for code in e), errors
    assert not load_server.server_errors(mark), "\n".join(load_server.server_errors(mark)[:20])


def test_signature_replay_is_refused_across_workers(load_server: LoadServer) -> None:
    secret, key_id = load_server.app_secret("notes", "load")
    auth = AppSignatureAuth("notes", secret, key_id=key_id)
    url = f"{load_server.url}/apps/notes/sync/exchange"

    def signed() -> tuple[bytes, dict[str, str]]:
        body = dumps_json({"watermarks": {}, "limit": 1})
        return body, {"Content-Type": "application/json", **auth.headers("POST", "/sync/exchange", body)}

    def post(body: bytes, headers: dict[str, str]) -> int:
        # A fresh connection each time: gunicorn hands each to whichever worker accepts first.
        with requests.Session() as s:
            return s.post(url, data=body, headers=headers, timeout=20).status_code

    # The same signed request twice in quick succession: the second is a replay.
    for _ in range(3):
        body, headers = signed()
        assert post(body, headers) == 200
        assert post(body, headers) == 401

    # A burst of the same signed request at once, over all workers: exactly one gets through.
    body, headers = signed()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: post(body, headers), range(8)))
    assert statuses == [200] + [401] * 7, statuses

    # A new signature for the same request is not a replay.
    assert post(*signed()) == 200


def test_concurrent_batches_on_the_same_records(load_server: LoadServer) -> None:
    """Devices shipping the same records in opposite orders at once: no deadlock (500), no lost update."""
    token = load_server.new_owner("batches")
    url = f"{load_server.url}/apps/starkeep-drive/sync/exchange"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ids = [f"01BATCH{i:019d}" for i in range(200)]
    wall = int(time.time() * 1000) - 60_000
    statuses: list[int] = []

    def ship(node: str, order: list[str]) -> None:
        with requests.Session() as s:
            for n in range(8):
                records = []
                for j, rid in enumerate(order):
                    ts = HLCTimestamp(wall + n * 1000, j, node)
                    records.append(DataRecord(id=rid, type="text/plain", created_at=ts, updated_at=ts,
                                              content_hash="", object_storage_key="", size_bytes=0,
                                              origin_app_id="load", label=f"{node}/{n}"))
                request = SyncExchangeRequest(watermarks={}, records=records, app_syncable_rows=[], limit=1)
                response = s.post(url, data=dumps_json(request.to_wire()), headers=headers, timeout=60)
                statuses.append(response.status_code)

    nodes = {f"node{k}": ids if k % 2 else ids[::-1] for k in range(4)}
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda item: ship(*item), nodes.items()))
    assert statuses == [200] * len(statuses), Counter(statuses)
    # Every id holds the highest HLC any node sent for it.
    last = wall + 7 * 1000
    want = {rid: max(HLCTimestamp(last, order.index(rid), node) for node, order in nodes.items()) for rid in ids}
    held = load_server.owner_state("batches")["sr"]
    assert {rid: r.updated_at for rid, r in held.items()} == want


def test_concurrent_uploads_of_one_blob(load_server: LoadServer) -> None:
    """Devices pushing the same blob at once (one key: its hash) while others read it: never a 5xx, never absent."""
    token = load_server.new_owner("same-blob")
    data = b"the same photo, from several devices " * 50
    digest = hashlib.sha256(data).hexdigest()
    url = f"{load_server.url}/apps/starkeep-drive/files/{shared_object_key('image/png', digest)}"
    headers = {"Authorization": f"Bearer {token}"}
    seen: Counter[str] = Counter()

    def hammer(_: int) -> None:
        with requests.Session() as s:
            for _ in range(10):
                seen[f"PUT {s.put(url, data=data, headers={**headers, 'Content-Type': 'image/png'}).status_code}"] += 1
                seen[f"HEAD {s.head(url, headers=headers).status_code}"] += 1
                r = s.get(url, headers=headers)
                seen[f"GET {r.status_code}"] += 1
                seen["GET intact" if r.content == data else "GET other bytes"] += 1

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(hammer, range(6)))
    assert set(seen) == {"PUT 201", "HEAD 200", "GET 200", "GET intact"}, seen
