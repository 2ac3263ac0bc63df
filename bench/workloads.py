"""The workloads. Each returns result rows; setup (data generation, servers) is never timed."""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench import baselines
from bench.data import (
    APP_ID,
    MIB,
    NAMESPACE,
    TABLE,
    app_rows,
    blob_record,
    large_blob_record,
    metadata_records,
    random_bytes,
)
from bench.report import Row, at_least, at_most, ratio_at_least, ratio_at_most
from bench.server import PAGE_LIMIT, Database, Server, log
from starkeep_sync import HLCClock, create_in_process_sync_transport, create_sync_engine
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.sqlite import SqliteDeviceStore
from starkeep_sync.device.supervisor import sync_until_done

DRIVE = "starkeep-drive"
PUSH_PAGE = 1000  # the engine's default page_limit: what a device sends per round
MAX_ROUNDS = 1000  # every sync loop is bounded


@dataclass(frozen=True)
class Sizes:
    name: str
    w0: tuple[int, ...]
    w0_blobs: tuple[int, ...]
    noop_rounds: int
    http: tuple[int, ...]
    app_rows: int
    small_blobs: tuple[int, int]  # (count, bytes each)
    large_blob: int
    devices: int
    device_records: int
    #: Workload 1's push and its baseline, each this many times in turn (medians reported).
    push_passes: int = 3
    #: Workload 8: file-backed records pulled with the lazy blob policy.
    lazy_records: int = 10_000


FULL = Sizes("full", (1_000, 10_000, 100_000), (1_000, 10_000), 20, (1_000, 10_000, 100_000), 10_000,
             (100, MIB), 256 * MIB, 8, 5_000)
TINY = Sizes("tiny", (100, 300, 1_000), (100, 300), 20, (100, 300, 1_000), 200, (5, 256 * 1024), 4 * MIB, 8, 100,
             push_passes=2, lazy_records=200)
SIZES = {"full": FULL, "tiny": TINY}

# The TypeScript reference engine, in-process, Node 20, pageLimit 1000.
REF_PUSH = {1_000: 31_277, 10_000: 17_510, 100_000: 1_615}
REF_PULL = {1_000: 40_618, 10_000: 20_821, 100_000: 1_470}
REF_NOOP_MS = {1_000: 7.0, 10_000: 66, 100_000: 1_297}
REF_BLOB_PUSH = {1_000: 14_277, 10_000: 14_736}


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class RssSampler:
    """The largest growth of resident memory over a stretch of work, sampled every 20 ms, for
    this process and (separately) the most grown of a server's worker processes."""

    def __init__(self, server_pid: int | None = None) -> None:
        self._stop = threading.Event()
        self._pids = child_pids(server_pid) if server_pid else []
        self._base_self = rss_bytes(os.getpid())
        self._base = {p: rss_bytes(p) for p in self._pids}
        self.self_growth = 0
        self.server_growth = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.self_growth = max(self.self_growth, rss_bytes(os.getpid()) - self._base_self)
        for p, base in self._base.items():
            self.server_growth = max(self.server_growth, rss_bytes(p) - base)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def n_label(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000:,}k"
    return str(n)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def run_rounds(engine: Any) -> list[Any]:
    return sync_until_done(engine, max_rounds=MAX_ROUNDS)


def median_noop_ms(engine: Any, rounds: int) -> float:
    """Median latency of ``rounds`` exchange rounds that must move nothing."""
    return interleaved_medians_ms({"round": lambda: noop_round(engine)}, rounds, warm_up=True)["round"]


def noop_round(engine: Any) -> None:
    result = engine.exchange()
    if result.shipped or result.applied or result.has_more:
        raise RuntimeError(f"a no-op round moved something: {result}")


def interleaved_medians_ms(probes: dict[Any, Callable[[], Any]], rounds: int, *, warm_up: bool) -> dict[Any, float]:
    """Median ms of each probe over ``rounds`` passes, the probes taking turns (so they share the load)."""
    if warm_up:
        for probe in probes.values():
            probe()
    samples: dict[Any, list[float]] = {k: [] for k in probes}
    gc.collect()
    for _ in range(rounds):
        for key, probe in probes.items():
            started = time.perf_counter()
            probe()
            samples[key].append((time.perf_counter() - started) * 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


# -- 0: in-process ----------------------------------------------------------------------


def in_process(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for n in sizes.w0:
        log(f"0: in-process N={n}")
        server_db, server_storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
        transport = create_in_process_sync_transport(database=server_db, storage=server_storage,
                                                     clock=HLCClock("cloud"))
        clock_a = HLCClock("dev-a")
        device_a = create_sync_engine(
            local_database=MemoryDatabaseAdapter(metadata_records(clock_a, n)), local_storage=MemoryObjectStorage(),
            remote_storage=server_storage, transport=transport, clock=clock_a, page_limit=1000)
        push_s, _ = timed(lambda e=device_a: run_rounds(e))
        assert len(server_db) == n, (len(server_db), n)
        db_b = MemoryDatabaseAdapter()
        device_b = create_sync_engine(local_database=db_b, local_storage=MemoryObjectStorage(),
                                      remote_storage=server_storage, transport=transport, clock=HLCClock("dev-b"),
                                      page_limit=1000)
        pull_s, _ = timed(lambda e=device_b: run_rounds(e))
        assert len(db_b) == n, (len(db_b), n)
        noop = median_noop_ms(device_a, sizes.noop_rounds)
        label = n_label(n)
        ref_n = FULL.w0[sizes.w0.index(n)]
        tag = "" if sizes is FULL else f" (at {n_label(ref_n)})"
        rows.append(Row(0, "initial push", "memory", label, "records/s", n / push_s,
                        reference=f"{REF_PUSH[ref_n]:,}{tag}", targets=(at_least(REF_PUSH[ref_n], ">= reference"),)))
        rows.append(Row(0, "initial pull", "memory", label, "records/s", n / pull_s,
                        reference=f"{REF_PULL[ref_n]:,}{tag}", targets=(at_least(REF_PULL[ref_n], ">= reference"),)))
        targets = (at_most(REF_NOOP_MS[ref_n], "<= reference"),)
        if n == sizes.w0[-1]:
            targets += (at_most(5.0, "< 5 ms"),)
        rows.append(Row(0, f"no-op round (median of {sizes.noop_rounds})", "memory", label, "ms", noop,
                        reference=f"{REF_NOOP_MS[ref_n]:,}{tag}", targets=targets))
        del device_a, device_b, server_db, db_b, transport
    for n in sizes.w0_blobs:
        log(f"0: in-process push with 1 KiB blobs N={n}")
        server_db, server_storage = MemoryDatabaseAdapter(), MemoryObjectStorage()
        transport = create_in_process_sync_transport(database=server_db, storage=server_storage,
                                                     clock=HLCClock("cloud"))
        clock_a, storage_a = HLCClock("dev-a"), MemoryObjectStorage()
        records = [blob_record(clock_a, storage_a, random_bytes(1024)) for _ in range(n)]
        device_a = create_sync_engine(local_database=MemoryDatabaseAdapter(records), local_storage=storage_a,
                                      remote_storage=server_storage, transport=transport, clock=clock_a,
                                      page_limit=1000)
        push_s, _ = timed(lambda e=device_a: run_rounds(e))
        assert len(server_db) == n and len(server_storage.keys()) == n
        ref_n = FULL.w0_blobs[sizes.w0_blobs.index(n)]
        tag = "" if sizes is FULL else f" (at {n_label(ref_n)})"
        rows.append(Row(0, "push with 1 KiB blobs", "memory", n_label(n), "records/s", n / push_s,
                        reference=f"{REF_BLOB_PUSH[ref_n]:,}{tag}",
                        targets=(at_least(REF_BLOB_PUSH[ref_n], ">= reference"),)))
    return rows


# -- HTTP workloads -----------------------------------------------------------------------


class HttpBench:
    """The HTTP workloads against one server (one database)."""

    def __init__(self, server: Server, db: Database, owners: dict[str, dict[str, Any]], sizes: Sizes,
                 workdir: Path) -> None:
        self.server = server
        self.db = db
        self.owners = owners
        self.sizes = sizes
        self.workdir = workdir
        self.kind = db.kind
        self.rows: list[Row] = []

    def token(self, owner: str) -> str:
        return str(self.owners[owner]["token"])

    def owner_id(self, owner: str) -> int:
        return int(self.owners[owner]["id"])

    def engine(self, owner: str, clock: HLCClock, *, channel: str = DRIVE, page_limit: int = PUSH_PAGE,
               database: Any = None, app_source: Any = None, storage: Any = None, state: Any = None,
               blob_policy: str = "eager") -> Any:
        base = f"{self.server.url}/apps/{channel}"
        token = self.token(owner)
        drive = channel == DRIVE
        return create_sync_engine(
            local_database=database if drive else None,
            local_storage=storage if storage is not None else MemoryObjectStorage(),
            remote_storage=HttpObjectStorage(base, auth=token),
            transport=create_http_sync_transport(base_url=base, auth=token, timeout=600),
            clock=clock, sync_state=state, app_source=None if drive else app_source,
            sync_shared_records=drive, app_id=None if drive else channel, page_limit=page_limit,
            blob_policy=blob_policy,  # type: ignore[arg-type]
        )

    def health_probe(self) -> Callable[[], None]:
        """One GET /health: the server's HTTP + one-query floor."""
        session = requests.Session()
        url = f"{self.server.url}/health"

        def probe() -> None:
            session.get(url, timeout=30).raise_for_status()

        return probe

    def warm_up(self) -> None:
        """Every worker has served pushes and pulls before anything is timed (connections, caches)."""
        log(f"{self.kind}: warming up {self.server.workers} worker(s)")
        clock = HLCClock("warm-up")
        records = metadata_records(clock, 200, prefix="warm-up")
        for _ in range(2 * self.server.workers):
            run_rounds(self.engine("bench-warmup", clock, database=MemoryDatabaseAdapter(records)))
            run_rounds(self.engine("bench-warmup", HLCClock("warm-up-reader"), database=MemoryDatabaseAdapter(),
                                   page_limit=PAGE_LIMIT))

    # 1, 2, 3

    def records(self, selected: set[int]) -> None:
        sizes = self.sizes.http
        converged: dict[int, Any] = {}
        for n in sizes:
            owner = f"bench-n{n}"
            label = n_label(n)
            log(f"{self.kind}: initial push N={n}")
            clock_a = HLCClock("phone")
            records = metadata_records(clock_a, n)
            device_a = self.engine(owner, clock_a, database=MemoryDatabaseAdapter(records))
            push_s, _ = timed(lambda e=device_a: run_rounds(e))
            held = baselines.select_records(self.db, self.owner_id(owner))[1]
            assert held == n, f"server holds {held} of {n} records"
            if 1 in selected:
                # The machine's speed drifts within seconds: the push (each pass a new owner, so
                # again an initial push) and the baseline take turns, and the medians are compared.
                pushes = [push_s]
                bases = [baselines.bulk_insert_records(self.db, self.owner_id("bench-baseline"), records)]
                for k in range(1, self.sizes.push_passes):
                    again = self.engine(f"{owner}-p{k}", clock_a, database=MemoryDatabaseAdapter(records))
                    pushes.append(timed(lambda e=again: run_rounds(e))[0])
                    held = baselines.select_records(self.db, self.owner_id(f"{owner}-p{k}"))[1]
                    assert held == n, f"pass {k}: server holds {held} of {n} records"
                    bases.append(baselines.bulk_insert_records(self.db, self.owner_id("bench-baseline"), records))
                push_s, base_s = statistics.median(pushes), statistics.median(bases)
                targets = (ratio_at_least(0.2, "within 5x of baseline"),)
                if self.kind == "postgres":
                    targets = (at_least(10_000), *targets)
                self.rows.append(Row(1, f"initial push, metadata only (page {PUSH_PAGE:,})", self.kind, label,
                                     "records/s", n / push_s, n / base_s, "executemany insert",
                                     reference="Kinto ~100" if self.kind == "postgres" else "", targets=targets))
            if 2 in selected:
                log(f"{self.kind}: initial pull N={n}")
                db_b = MemoryDatabaseAdapter()
                device_b = self.engine(owner, HLCClock("laptop"), database=db_b, page_limit=PAGE_LIMIT)
                pull_s, _ = timed(lambda e=device_b: run_rounds(e))
                assert len(db_b) == n, (len(db_b), n)
                base_s, got = baselines.select_records(self.db, self.owner_id(owner))
                assert got == n
                big = n == sizes[-1]
                self.rows.append(Row(
                    2, f"initial pull (page {PAGE_LIMIT:,})", self.kind, label, "records/s", n / pull_s,
                    n / base_s, "plain SELECT",
                    reference="Kinto ~35,700 (100k)" if self.kind == "postgres" and big else "",
                    targets=(at_least(35_000),) if self.kind == "postgres" else ()))
            if 3 in selected and n in (sizes[0], sizes[-1]):
                converged[n] = device_a
        if 3 in selected:
            log(f"{self.kind}: no-op rounds at N={sizes[0]} and N={sizes[-1]}, interleaved with GET /health")
            probes: dict[Any, Callable[[], Any]] = {
                n: (lambda e=engine: noop_round(e)) for n, engine in converged.items()}
            probes["health"] = self.health_probe()
            noop = interleaved_medians_ms(probes, self.sizes.noop_rounds, warm_up=True)
            floor = noop["health"]
            limit = 8.0 if self.kind == "postgres" else 20.0
            small, big = sizes[0], sizes[-1]
            unit = f"ms (median of {self.sizes.noop_rounds})"
            self.rows.append(Row(3, "no-op round", self.kind, n_label(small), unit, noop[small], floor,
                                 "GET /health"))
            self.rows.append(Row(3, "no-op round", self.kind, n_label(big), unit, noop[big], floor, "GET /health",
                                 reference="Kinto ~8 (100k)" if self.kind == "postgres" else "",
                                 targets=(at_most(limit, f"< {limit:g} ms"),)))
            self.rows.append(Row(3, f"no-op round {n_label(big)} vs {n_label(small)}", self.kind,
                                 f"{n_label(big)} / {n_label(small)}", "ms", noop[big], noop[small],
                                 f"no-op at {n_label(small)}", targets=(ratio_at_most(1.5, "<= 1.5x"),)))

    # 4

    def app_rows(self) -> None:
        n = self.sizes.app_rows
        log(f"{self.kind}: app rows push N={n}")
        clock_a = HLCClock("phone-app")
        source_a = MemoryAppSource([NAMESPACE])
        entries = app_rows(clock_a, source_a, n)
        device_a = self.engine("bench", clock_a, channel=APP_ID, app_source=source_a)
        push_s, _ = timed(lambda: run_rounds(device_a))
        base_s = baselines.bulk_insert_app_rows(self.db, self.owner_id("bench-baseline"), entries)
        self.rows.append(Row(4, f"app rows push (page {PUSH_PAGE:,})", self.kind, n_label(n), "rows/s",
                             n / push_s, n / base_s, "executemany insert"))
        log(f"{self.kind}: app rows pull N={n}")
        source_b = MemoryAppSource([NAMESPACE])
        device_b = self.engine("bench", HLCClock("laptop-app"), channel=APP_ID, app_source=source_b,
                               page_limit=PAGE_LIMIT)
        pull_s, _ = timed(lambda: run_rounds(device_b))
        got = len(source_b.rows(APP_ID, TABLE))
        assert got == n, (got, n)
        base_s, held = baselines.select_app_rows(self.db, self.owner_id("bench"))
        assert held == n
        self.rows.append(Row(4, f"app rows pull (page {PAGE_LIMIT:,})", self.kind, n_label(n), "rows/s",
                             n / pull_s, n / base_s, "plain SELECT"))

    # 5

    def blobs(self) -> None:
        work = self.workdir / f"blobs-{self.kind}"
        work.mkdir(parents=True, exist_ok=True)
        store_a = SqliteDeviceStore(work / "a.db", work / "a-blobs")
        store_b = SqliteDeviceStore(work / "b.db", work / "b-blobs")
        try:
            clock_a = HLCClock("camera")
            device_a = self.engine("bench", clock_a, database=store_a.database, storage=store_a.storage,
                                   state=store_a.state("drive"))
            device_b = self.engine("bench", HLCClock("tablet"), database=store_b.database, storage=store_b.storage,
                                   state=store_b.state("drive"))
            count, size = self.sizes.small_blobs
            log(f"{self.kind}: blobs {count} x {size} B")
            keys = []
            for _ in range(count):
                record = blob_record(clock_a, store_a.storage, random_bytes(size))
                store_a.database.put(record)
                keys.append(record.object_storage_key)
            small = self._blob_rows(f"{count} x {size // 1024:,} KiB", keys, count * size, device_a, device_b,
                                    store_a, store_b, work, target=False)
            small_label = f"{count} x {size // 1024:,} KiB"
            size = self.sizes.large_blob
            log(f"{self.kind}: one blob of {size} B")
            record, _ = large_blob_record(clock_a, store_a.storage, size, work / "large.src", seed=size)
            store_a.database.put(record)
            # Kept until both legs ran: its pages, freed just before the push, would have gone to
            # the push alone (on this VM a write into pages not used for a while is several times
            # slower than into recently freed ones).
            large = self._blob_rows(f"1 x {size // MIB:,} MiB", [record.object_storage_key], size, device_a,
                                    device_b, store_a, store_b, work, target=True)
            (work / "large.src").unlink()
            # Many small blobs move side by side (transfer_concurrency): their round trip should
            # come within half of one large blob's, where per-blob costs vanish.
            self.rows.append(Row(5, "blob device -> server -> device, many small vs one large", self.kind,
                                 small_label, "MB/s", small, large, f"1 x {size // MIB:,} MiB, this run",
                                 targets=(ratio_at_least(0.5, ">= 0.5x one large blob"),)))
        finally:
            store_a.close()
            store_b.close()

    def _blob_rows(self, label: str, keys: Sequence[str], total: int, device_a: Any, device_b: Any,
                   store_a: SqliteDeviceStore, store_b: SqliteDeviceStore, work: Path, *, target: bool) -> float:
        """Rows for one set of blobs pushed by ``device_a`` and pulled by ``device_b``; the round trip's MB/s."""
        server_pid = self.server.proc.pid if self.server.proc is not None else None
        with RssSampler(server_pid) as push_rss:
            push_s, results = timed(lambda: run_rounds(device_a))
        pushed = sum(r.pushed_bytes for r in results)
        assert pushed == total, f"pushed {pushed} of {total} bytes: {device_a.blob_failures}"
        with RssSampler(server_pid) as pull_rss:
            pull_s, results = timed(lambda: run_rounds(device_b))
        pulled = sum(r.pulled_bytes for r in results)
        assert pulled == total and all(store_b.storage.has(k) for k in keys), f"pulled {pulled} of {total}"
        # Before anything below frees pages (the copy baselines remove their copies): the write
        # alone, into pages as fresh as those each leg's receiver wrote into.
        touch_s = baselines.first_touch_write(total, work / "first-touch") if target else 0.0
        copy_s = baselines.copy_files([store_a.storage.root / k for k in keys], work / "copies")
        copy = total / copy_s / 1e6
        mb = total / 1e6
        self.rows.append(Row(5, "blob push (device -> server)", self.kind, label, "MB/s", mb / push_s, copy,
                             "shutil.copyfile"))
        self.rows.append(Row(5, "blob pull (server -> device)", self.kind, label, "MB/s", mb / pull_s, copy,
                             "shutil.copyfile"))
        self.rows.append(Row(5, "blob device -> server -> device", self.kind, label, "MB/s",
                             mb / (push_s + pull_s), copy, "shutil.copyfile",
                             targets=(ratio_at_least(0.5, ">= 0.5x file copy"),) if target else ()))
        if target:
            # What the integrity rule alone allows: each leg's receiver hashes every byte once
            # (PROTOCOL §7), so a round trip takes at least two sha256 passes over the blob.
            hash_s = baselines.sha256_files([store_a.storage.root / k for k in keys])
            self.rows.append(Row(5, "ceiling of any round trip: one sha256 pass per leg, nothing else", self.kind,
                                 label, "MB/s", mb / (2 * hash_s), copy, "shutil.copyfile"))
            # Each leg against what it must do at least: read, hash and write every byte once.
            hash_copy = mb / baselines.hash_copy_files([store_a.storage.root / k for k in keys], work / "copies")
            leg = ratio_at_least(0.5, ">= 0.5x hash-while-copy")
            # Informational: a bare write of the same bytes into new page-cache pages, measured
            # right after the legs, against the same hash-while-copy figure (whose passes reuse
            # pages freed by the passes before them).
            self.rows.append(Row(5, "floor of a leg: write the bytes into new page-cache pages, nothing else",
                                 self.kind, label, "MB/s", mb / touch_s, hash_copy,
                                 "read+sha256+write, 1 MiB blocks"))
            self.rows.append(Row(5, "blob push leg vs hash-while-copy", self.kind, label, "MB/s", mb / push_s,
                                 hash_copy, "read+sha256+write, 1 MiB blocks", targets=(leg,)))
            self.rows.append(Row(5, "blob pull leg vs hash-while-copy", self.kind, label, "MB/s", mb / pull_s,
                                 hash_copy, "read+sha256+write, 1 MiB blocks", targets=(leg,)))
            under = at_most(64.0, "< 64 MiB")
            for leg_name, rss in (("push", push_rss), ("pull", pull_rss)):
                self.rows.append(Row(5, f"RSS growth during the {leg_name}, device process", self.kind, label,
                                     "MiB", rss.self_growth / MIB, None, "", targets=(under,)))
                self.rows.append(Row(5, f"RSS growth during the {leg_name}, busiest server worker", self.kind,
                                     label, "MiB", rss.server_growth / MIB, None, "", targets=(under,)))
        return mb / (push_s + pull_s)

    # 8

    def lazy_pull(self) -> None:
        n = self.sizes.lazy_records
        log(f"{self.kind}: {n} file-backed records and {n} metadata-only ones")
        clock = HLCClock("camera-lazy")
        storage = MemoryObjectStorage()
        files = [blob_record(clock, storage, random_bytes(64)) for _ in range(n)]
        pushed = run_rounds(self.engine("bench-lazy", clock, database=MemoryDatabaseAdapter(files), storage=storage))
        assert sum(r.shipped for r in pushed) == n
        clock_meta = HLCClock("camera-meta")
        meta = metadata_records(clock_meta, n)
        assert sum(r.shipped for r in run_rounds(self.engine("bench-meta", clock_meta,
                                                             database=MemoryDatabaseAdapter(meta)))) == n
        lazy_s, meta_s = [], []
        for k in range(2):
            log(f"{self.kind}: lazy pull and metadata-only pull, pass {k + 1}")
            lazy_s.append(_lazy_pull(self, "bench-lazy", n, self.workdir / "lazy", "lazy"))
            meta_s.append(_lazy_pull(self, "bench-meta", n, self.workdir / "meta", "eager"))
        lazy, plain = statistics.median(lazy_s), statistics.median(meta_s)
        self.rows.append(Row(8, f"lazy-policy pull of file-backed records (page {PAGE_LIMIT:,})", self.kind,
                             n_label(n), "records/s", n / lazy, n / plain, "metadata-only pull, same N",
                             targets=(ratio_at_least(1 / 1.5, "within 1.5x of metadata-only"),)))

    # 6

    def concurrency(self) -> None:
        k, n = self.sizes.devices, self.sizes.device_records
        log(f"{self.kind}: 1 device pushing {n}")
        solo = push_concurrently(self.server.url, [self.token("bench-c-solo")], n)
        log(f"{self.kind}: {k} devices pushing {n} each")
        many = push_concurrently(self.server.url, [self.token(f"bench-c{i}") for i in range(k)], n)
        self.rows.append(Row(6, f"{k} devices push at once ({self.server.workers} workers)", self.kind,
                             f"{k} x {n_label(n)}", "records/s", many, solo, "1 device",
                             targets=(ratio_at_least(1.5, ">= 1.5x one device"),)))


def _lazy_pull(bench: HttpBench, owner: str, n: int, work: Path, policy: str) -> float:
    """Seconds for a new SqliteDeviceStore device to pull ``owner``'s ``n`` records."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = SqliteDeviceStore(work / "device.db", work / "blobs")
    try:
        device = bench.engine(owner, HLCClock(f"reader-{policy}"), database=store.database, storage=store.storage,
                              state=store.state("drive"), page_limit=PAGE_LIMIT, blob_policy=policy)
        seconds, results = timed(lambda: run_rounds(device))
        assert len(store.database.all()) == n
        if policy == "lazy":
            assert results[-1].staged == n and sum(r.pulled_bytes for r in results) == 0, results[-1]
        return seconds
    finally:
        store.close()


def _device_process(url: str, token: str, node: str, n: int, barrier: Any, results: Any) -> None:
    """One device in its own process: build ``n`` records, wait for the others, push, report times."""
    clock = HLCClock(node)
    base = f"{url}/apps/{DRIVE}"
    engine = create_sync_engine(
        local_database=MemoryDatabaseAdapter(metadata_records(clock, n)), local_storage=MemoryObjectStorage(),
        remote_storage=HttpObjectStorage(base, auth=token),
        transport=create_http_sync_transport(base_url=base, auth=token, timeout=600), clock=clock,
        page_limit=PUSH_PAGE)
    try:
        barrier.wait(timeout=300)
        started = time.monotonic()
        shipped = sum(r.shipped for r in run_rounds(engine))
        results.put((node, started, time.monotonic(), shipped, None))
    except Exception as err:  # reported to the parent, which fails the workload
        results.put((node, 0.0, 0.0, 0, repr(err)))


def push_concurrently(url: str, tokens: Sequence[str], n: int) -> float:
    """Total records/s of ``len(tokens)`` device processes (one owner each) pushing ``n`` records at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(tokens))
    results = ctx.Queue()
    procs = [ctx.Process(target=_device_process, args=(url, t, f"device{i}", n, barrier, results), daemon=True)
             for i, t in enumerate(tokens)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=900) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.terminate()
                p.join(10)
    errors = [g for g in got if g[4]]
    if errors:
        raise RuntimeError(f"device processes failed: {errors}")
    if any(g[3] != n for g in got):
        raise RuntimeError(f"not every device shipped {n} records: {[(g[0], g[3]) for g in got]}")
    span = max(g[2] for g in got) - min(g[1] for g in got)
    return len(tokens) * n / span
