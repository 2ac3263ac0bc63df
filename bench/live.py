"""Workload 7: live changes under ASGI (``gunicorn example_project.asgi -k uvicorn_worker.UvicornWorker``).

- write -> visible on another device: device A pushes records at random instants; device B in live mode
  and device C polling every 30 s (both ``SyncSupervisor``) note when each record lands; p50 and p95 of
  both, from the same writes;
- what ASGI does to the exchange itself: no-op rounds and a push of metadata records against the same
  database served by WSGI workers and by uvicorn workers, taking turns;
- idle waiters: N long-polls held open on one uvicorn worker (raw sockets, one asyncio loop here): the
  worker's RSS before and with them, and a no-op round of another device without and with them.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.data import metadata_records
from bench.report import Row, at_most, ratio_at_most
from bench.server import Database, Server, log
from bench.workloads import DRIVE, interleaved_medians_ms, noop_round, run_rounds
from starkeep_sync import HLCClock, create_data_record, create_sync_engine
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.constants import LOCAL_DATA_SYNCED
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import SyncSupervisor

ASGI = {"app": "example_project.asgi", "worker_class": "uvicorn_worker.UvicornWorker"}


@dataclass(frozen=True)
class LiveSizes:
    writes: int  # records A pushes, at random instants over ``spread`` seconds
    spread: float
    poll_interval: float  # the polling device's interval (and the live device's fallback)
    idle: int  # long-polls held open on one worker
    rounds: int  # no-op rounds per median
    push: int  # records per push pass (ASGI vs WSGI)
    push_passes: int


SIZES = {
    "full": LiveSizes(writes=100, spread=60.0, poll_interval=30.0, idle=1000, rounds=30, push=1000, push_passes=3),
    "tiny": LiveSizes(writes=10, spread=1.5, poll_interval=1.0, idle=50, rounds=3, push=100, push_passes=1),
}

OWNERS = ["bench-live", "bench-live-noop", "bench-idle", "bench-asgi-push", "bench-wsgi-push"]


def engine(server: Server, token: str, node: str, records: list[Any] | None = None) -> Any:
    base = f"{server.url}/apps/{DRIVE}"
    return create_sync_engine(
        local_database=MemoryDatabaseAdapter(records or []), local_storage=MemoryObjectStorage(),
        remote_storage=HttpObjectStorage(base, auth=token),
        transport=create_http_sync_transport(base_url=base, auth=token, timeout=600),
        clock=HLCClock(node),
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(kind: str, sizes_name: str, workdir: Path, workers: int) -> list[Row]:
    sizes = SIZES[sizes_name]
    db = Database(kind, workdir)
    asgi = Server(db, workdir, workers, **ASGI)  # type: ignore[arg-type]
    wsgi = Server(db, workdir, workers)
    db.create()
    rows: list[Row] = []
    try:
        log(f"{kind}: live changes: migrating, issuing tokens")
        owners = asgi.provision(OWNERS)
        log(f"{kind}: live changes: uvicorn x{workers} on {asgi.url}, gunicorn sync x{workers} on {wsgi.url}")
        asgi.start()
        wsgi.start()
        try:
            rows += latency(kind, asgi, owners, sizes)
            rows += exchange_cost(kind, asgi, wsgi, owners, sizes)
        finally:
            asgi.stop()
            wsgi.stop()
        idle_server = Server(db, workdir, 1, **ASGI,  # type: ignore[arg-type]
                             extra_env={"STARKEEP_LIVE_MAX_WAITERS": str(sizes.idle * 2),
                                        "STARKEEP_LIVE_MAX_TIMEOUT": "300"})
        log(f"{kind}: live changes: {sizes.idle} idle waiters on one uvicorn worker")
        idle_server.start()
        try:
            rows += idle_waiters(kind, idle_server, owners, sizes)
        finally:
            idle_server.stop()
    except BaseException:
        log(f"{kind}: live workload failed; uvicorn log tail:\n{asgi.log_tail()}")
        raise
    finally:
        db.drop()
    return rows


def latency(kind: str, server: Server, owners: dict[str, Any], sizes: LiveSizes) -> list[Row]:
    token = owners["bench-live"]["token"]
    writer = engine(server, token, "live-a")
    live, polling = engine(server, token, "live-b"), engine(server, token, "poll-c")
    arrived: dict[str, dict[str, float]] = {"live": {}, "polling": {}}
    for name, device in (("live", live), ("polling", polling)):
        run_rounds(device)

        def note(event: Any, seen: dict[str, float] = arrived[name]) -> None:
            if event.event_type == LOCAL_DATA_SYNCED:
                now = time.monotonic()
                for rid in event.record_ids:
                    seen.setdefault(rid, now)

        device.change_notifier.subscribe(note)
    supervisors = [SyncSupervisor(live, interval=sizes.poll_interval, live=True),
                   SyncSupervisor(polling, interval=sizes.poll_interval, live=False)]
    for s in supervisors:
        s.start()
    deadline = time.monotonic() + 30
    while not (supervisors[0].live_active and supervisors[0].rounds >= 2):
        if time.monotonic() > deadline:
            raise RuntimeError("the live device never opened its change feed")
        time.sleep(0.01)
    pushed: dict[str, float] = {}
    rng = random.Random(7)
    started = time.monotonic()
    for at in sorted(rng.uniform(0, sizes.spread) for _ in range(sizes.writes)):
        time.sleep(max(0.0, started + at - time.monotonic()))
        record = create_data_record(writer.clock, type="text/plain", origin_app_id="bench-live",
                                    content_hash="", object_storage_key="", size_bytes=0)
        writer.local_database.put(record)
        pushed[record.id] = time.monotonic()
        writer.exchange()
    deadline = time.monotonic() + sizes.poll_interval + 30
    while not all(len(seen) >= len(pushed) for seen in arrived.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"records never arrived: {[len(s) for s in arrived.values()]} of {len(pushed)}")
        time.sleep(0.05)
    for s in supervisors:
        s.stop()
    ms = {name: [(seen[rid] - t) * 1000 for rid, t in pushed.items()] for name, seen in arrived.items()}
    n = f"{sizes.writes} writes"
    note = (f"A pushes {sizes.writes} records at random instants over {sizes.spread:g} s; B live (long-poll), C "
            f"polling every {sizes.poll_interval:g} s")
    return [
        Row(7, "write -> visible on another device, p50 (live vs polling)", kind, n, "ms",
            statistics.median(ms["live"]), statistics.median(ms["polling"]), f"{sizes.poll_interval:g} s polling",
            targets=(at_most(300, "p50 < 300 ms"),), note=note),
        Row(7, "write -> visible on another device, p95 (live vs polling)", kind, n, "ms",
            percentile(ms["live"], 0.95), percentile(ms["polling"], 0.95), f"{sizes.poll_interval:g} s polling",
            targets=(at_most(1000, "p95 < 1 s"),)),
    ]


def exchange_cost(kind: str, asgi: Server, wsgi: Server, owners: dict[str, Any], sizes: LiveSizes) -> list[Row]:
    """The same exchanges through uvicorn workers and through gunicorn's sync workers, taking turns."""
    token = owners["bench-live-noop"]["token"]
    on_asgi, on_wsgi = engine(asgi, token, "noop-asgi"), engine(wsgi, token, "noop-wsgi")
    run_rounds(on_asgi)
    run_rounds(on_wsgi)
    noop = interleaved_medians_ms({"asgi": lambda: noop_round(on_asgi), "wsgi": lambda: noop_round(on_wsgi)},
                                  sizes.rounds, warm_up=True)
    push: dict[str, list[float]] = {"asgi": [], "wsgi": []}
    for k in range(sizes.push_passes):
        for name, server in (("asgi", asgi), ("wsgi", wsgi)):
            clock = HLCClock(f"push-{name}-{k}")
            device = engine(server, owners[f"bench-{name}-push"]["token"], f"push-{name}-{k}",
                            metadata_records(clock, sizes.push, prefix=f"{name}{k}-"))
            begun = time.perf_counter()
            run_rounds(device)
            push[name].append((time.perf_counter() - begun) * 1000)
    workers = f"{asgi.workers} worker(s) each"
    return [
        Row(7, "no-op round under ASGI (uvicorn) vs WSGI (gunicorn sync)", kind, workers, "ms",
            noop["asgi"], noop["wsgi"], "same under WSGI",
            note="The exchange is a sync view: under ASGI Django runs it in a thread per request, and "
                 "example_project closes the database connection after each request (CONN_MAX_AGE=0)."),
        Row(7, f"push {sizes.push:,} records under ASGI vs WSGI", kind, workers, "ms",
            statistics.median(push["asgi"]), statistics.median(push["wsgi"]), "same under WSGI"),
    ]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def _settle(pid: int, limit: float = 120.0) -> None:
    """Until the worker is idle (under 5% of a core over half a second): every waiter has opened."""
    deadline = time.monotonic() + limit
    time.sleep(0.5)
    while time.monotonic() < deadline:
        before = _cpu_seconds(pid)
        time.sleep(0.5)
        if _cpu_seconds(pid) - before < 0.025:
            return
    raise RuntimeError(f"the worker was still busy {limit:g} s after the waiters opened")


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class IdleWaiters:
    """``count`` long-polls held open from one asyncio loop in a thread of this process."""

    def __init__(self, url: str, token: str, cursor: str, count: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.request = (f"GET /apps/{DRIVE}/sync/changes?cursor={cursor}&timeout=300 HTTP/1.1\r\n"
                        f"Host: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
        self.count = count
        self.loop = asyncio.new_event_loop()
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def open(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(300)

    async def _open(self) -> None:
        for _ in range(self.count):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(self.request)
            await writer.drain()
            self.readers.append(reader)
            self.writers.append(writer)

    def answered(self) -> int:
        """How many got an answer already (they should all still wait)."""
        return asyncio.run_coroutine_threadsafe(self._answered(), self.loop).result(60)

    async def _answered(self) -> int:
        return sum(1 for r in self.readers if r._buffer or r.at_eof())  # type: ignore[attr-defined]

    def close(self) -> None:
        async def shut() -> None:
            for w in self.writers:
                w.close()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def idle_waiters(kind: str, server: Server, owners: dict[str, Any], sizes: LiveSizes) -> list[Row]:
    (worker,) = server.worker_pids()
    token = owners["bench-idle"]["token"]
    cursor = requests.get(f"{server.url}/apps/{DRIVE}/sync/changes", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).json()["cursor"]
    device = engine(server, owners["bench-live-noop"]["token"], "noop-idle")
    run_rounds(device)
    without = interleaved_medians_ms({"noop": lambda: noop_round(device)}, sizes.rounds, warm_up=True)["noop"]
    rss_before, threads_before = _rss_kib(worker), _threads(worker)
    waiters = IdleWaiters(server.url, token, cursor, sizes.idle)
    try:
        waiters.open()
        _settle(worker)  # every request authenticated, compared and waiting
        early = waiters.answered()
        if early:
            raise RuntimeError(f"{early} of {sizes.idle} idle long-polls were answered early")
        rss_with, threads_with = _rss_kib(worker), _threads(worker)
        beside = interleaved_medians_ms({"noop": lambda: noop_round(device)}, sizes.rounds, warm_up=True)["noop"]
        if waiters.answered():
            raise RuntimeError("idle long-polls were answered during the measurement")
    finally:
        waiters.close()
    n = f"{sizes.idle:,} waiters"
    return [
        Row(7, "worker RSS with idle long-polls (vs none)", kind, n, "MiB", rss_with / 1024, rss_before / 1024,
            "RSS with none"),
        Row(7, "worker threads with idle long-polls (vs none)", kind, n, "threads", threads_with, threads_before,
            "threads with none"),
        Row(7, "no-op round beside idle long-polls (vs none)", kind, n, "ms", beside, without,
            "same with none", targets=(ratio_at_most(1.5, "<= 1.5x"),)),
    ]
