"""``python -m bench``: run the workloads, print the markdown table, write it to a file."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import live, workloads
from bench.machine import ROOT, describe, load_average
from bench.report import WORKLOADS, Row, render
from bench.server import PAGE_LIMIT, REDIS_URL, Database, Server, log

WORKERS = {"sqlite": 1, "postgres": 4}
HTTP = {1, 2, 3, 4, 5, 6, 8}

NOTES = [
    "ratio = ours / baseline, both measured in this run on this machine; for no-op rows the baseline is a "
    "latency, so a ratio above 1 means slower than the baseline.",
    "0: memory adapters on both sides, in-process transport (requests and responses still go through the "
    "wire codec), page_limit 1000. reference = the TypeScript reference engine (in-process, Node 20, "
    "pageLimit 1000), from its own published run, not re-measured here.",
    "1-6: the example project under `gunicorn example_project.wsgi` (1 worker on SQLite, 4 on PostgreSQL), "
    "fresh database, throttling off (STARKEEP_THROTTLE=off), MAX_PAGE_LIMIT "
    f"{PAGE_LIMIT:,}, DJANGO_DEBUG=0; the device runs in this process on loopback.",
    "1-6: before any clock starts, each server serves a short warm-up (a separate owner pushes and pulls "
    "200 records, two rounds per worker), so worker start-up (database connection, first-use caches) is "
    "not timed.",
    "1: a memory-adapter device pushes N metadata-only shared records (rounds until has_more is false, "
    "default page_limit 1000). Baseline: the same rows inserted into starkeep_sync_sharedrecord with one "
    "executemany in one transaction through the same database (psycopg on PostgreSQL, sqlite3 on SQLite), "
    "rows prepared before the clock starts. Push (each pass as a new owner) and baseline take turns, "
    f"{workloads.FULL.push_passes} times each; the table shows the medians.",
    f"2: a new memory-adapter device pulls the N records with page_limit {PAGE_LIMIT:,} (the server's "
    "MAX_PAGE_LIMIT); it asks for the next page while it applies the current one (prefetch), and only its "
    "first request asks the server to count the backlog (countPending). Baseline: one plain SELECT of the "
    "same rows, fetched whole.",
    "3: median latency of 20 exchange rounds of a converged device (each checked to move nothing) holding N "
    "records; baseline: median GET /health (HTTP + one query) on the same server. The rounds at both sizes "
    "and the /health requests take turns, so they share the same machine load. Gunicorn's sync worker "
    "closes each connection, so every round pays a TCP connect.",
    "4: rows of a registered app table (`starkeep_app register bench --table items:id`) on the per-app "
    "channel; push with page_limit 1000, pull by a new device with page_limit "
    f"{PAGE_LIMIT:,}. Baselines as in 1 and 2, on starkeep_sync_approw.",
    "5: SqliteDeviceStore with file-system blobs on both devices; push = rounds of the first device "
    "(blobs uploaded 4 at a time, transfer_concurrency; one conditional PUT per blob, a HEAD first from "
    "4 MiB up; hashes checked on both ends), "
    "pull = rounds of an empty second device; "
    "device -> server -> device = bytes / (push + pull time). MB = 10^6 bytes. Baseline: shutil.copyfile "
    "of the same files, one copy (median of 3 passes). The ceiling row is what the integrity rule alone "
    "allows a round trip: each leg's receiver hashes every byte, so bytes / (2 x one sha256 pass over them), "
    "measured here; it is below half the copy whenever sha256 is slower than the copy. On this VM a write "
    "into page-cache pages not used for a few seconds runs at 250-430 MB/s (recently freed ones: several "
    "GB/s), and the copy's later passes reuse the pages its first pass freed, so the baseline swings between "
    "about 600 and 4,000 MB/s from run to run while each leg of ours writes into pages as they come. "
    "Hash-while-copy: one process reads the file in 1 MiB blocks, hashes each with sha256 and writes it to a "
    "new file (median of 3): what one leg must do at least. The floor row writes the same number of bytes "
    "from one buffer into a new file right after the legs, before anything is freed (nothing read, nothing "
    "hashed): on this VM a page the kernel has not handed out lately costs a host fault on first touch, so "
    "this bare write is what each leg's receiving side pays at least, while the hash-while-copy passes write "
    "into pages their previous pass freed. RSS growth: the largest rise of resident memory "
    "over the leg, sampled every 20 ms, of this process and of the most grown gunicorn worker.",
    "8: the first device pushes N file-backed records (64-byte blobs, so almost all of the time is "
    "metadata); a new SqliteDeviceStore device pulls them with blob_policy='lazy' (metadata only, each "
    "blob a durable staged-set entry), against a device pulling N metadata-only records of another owner; "
    f"page_limit {PAGE_LIMIT:,}; the two pulls take turns, twice each, medians.",
    "6: PostgreSQL only; each device is its own process with its own owner (pure pushes, no cross-device "
    "pulls), page_limit 1000; all start at a barrier; records/s = all records / (last finish - first "
    "start). Devices, server workers and PostgreSQL share the same cores.",
    "7: the example project under `gunicorn example_project.asgi -k uvicorn_worker.UvicornWorker` (1 worker "
    "on SQLite, where wake-ups stay in one process; 4 on PostgreSQL, woken by LISTEN/NOTIFY). Latency: device "
    "A pushes records at random instants; device B (live: one long-poll of sync/changes open) and device C "
    "(polling every 30 s, 1 s with --sizes tiny) note when each lands, from the same writes. ASGI vs WSGI: "
    "the same database also served by gunicorn's sync workers, the rounds taking turns. Idle long-polls: held "
    "open from one asyncio loop in the bench process against a server of one uvicorn worker, with "
    "LIVE_MAX_WAITERS_PER_OWNER raised for it; RSS is the worker's VmRSS.",
    "The machine is shared with other test suites: compare ratios within one run, not absolute numbers "
    "across runs.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", choices=sorted(workloads.SIZES), default="full",
                        help="tiny: every workload at very small N (a smoke run); full: the real sizes")
    parser.add_argument("--db", default="sqlite,postgres", help="comma list of sqlite, postgres (default: both)")
    parser.add_argument("--only", default=",".join(str(w) for w in WORKLOADS),
                        help="comma list of workload numbers (default: all)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="where the table is written")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a new temporary one, removed)")
    parser.add_argument("--compare", metavar="OLD", default=None,
                        help="also run another checkout's bench (e.g. a `git worktree` of an older commit), the "
                             "two taking turns per workload group and database, and write old, new and new/old "
                             "for every row")
    parser.add_argument("--compare-python", metavar="PYTHON", default=None,
                        help="the interpreter for --compare's checkout, with its deps and that checkout installed "
                             "(default: OLD/.venv/bin/python)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --compare: alternate this many times and report medians (default 1)")
    args = parser.parse_args(argv)
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    for d in args.dbs:
        if d not in WORKERS:
            parser.error(f"--db: unknown database {d!r} (sqlite, postgres)")
    try:
        args.selected = {int(w) for w in args.only.split(",") if w.strip()}
    except ValueError:
        parser.error("--only takes workload numbers, e.g. 0,1,3")
    if not args.selected or not args.selected <= set(WORKLOADS):
        parser.error(f"--only: workloads are {', '.join(str(w) for w in WORKLOADS)}")
    if args.compare is not None:
        args.compare = Path(args.compare).resolve()
        args.compare_python = args.compare_python or str(args.compare / ".venv" / "bin" / "python")
        if not (args.compare / "bench").is_dir():
            parser.error(f"--compare: {args.compare} has no bench/")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def owners_for(kind: str, sizes: workloads.Sizes, selected: set[int]) -> list[str]:
    owners = ["bench", "bench-baseline", "bench-warmup"]
    if selected & {1, 2, 3}:
        owners += [f"bench-n{n}" for n in sizes.http]
        if 1 in selected:
            owners += [f"bench-n{n}-p{k}" for n in sizes.http for k in range(1, sizes.push_passes)]
    if 6 in selected and kind == "postgres":
        owners += ["bench-c-solo", *(f"bench-c{i}" for i in range(sizes.devices))]
    if 8 in selected:
        owners += ["bench-lazy", "bench-meta"]
    return owners


def run_database(kind: str, sizes: workloads.Sizes, selected: set[int], workdir: Path,
                 versions: dict[str, str]) -> list[Row]:
    db = Database(kind, workdir)
    server = Server(db, workdir, WORKERS[kind])
    db.create()
    try:
        versions[f"{kind} server"] = db.version() + (f", Redis cache at {REDIS_URL}" if kind == "postgres" else "")
        log(f"{kind}: migrating and issuing tokens")
        owners = server.provision(owners_for(kind, sizes, selected))
        log(f"{kind}: starting gunicorn with {server.workers} worker(s) on {server.url}")
        server.start()
        bench = workloads.HttpBench(server, db, owners, sizes, workdir)
        try:
            bench.warm_up()
            if selected & {1, 2, 3}:
                bench.records(selected)
            if 4 in selected:
                bench.app_rows()
            if 5 in selected:
                bench.blobs()
            if 6 in selected and kind == "postgres":
                bench.concurrency()
            if 8 in selected:
                bench.lazy_pull()
        except BaseException:
            log(f"{kind}: workload failed; gunicorn log tail:\n{server.log_tail()}")
            raise
        if 6 in selected and kind != "postgres":
            bench.rows.append(Row(6, "devices push at once", kind, "-", "records/s", None,
                                  note="PostgreSQL only"))
        return bench.rows
    finally:
        server.stop()
        db.drop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        return main_compare(args)
    sizes = workloads.SIZES[args.sizes]
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="starkeep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = describe({"sizes": args.sizes, "databases": ", ".join(args.dbs),
                        "workloads": ", ".join(str(w) for w in sorted(args.selected))})
    versions: dict[str, str] = {}
    rows: list[Row] = []
    started = time.monotonic()
    try:
        if 0 in args.selected:
            rows += workloads.in_process(sizes)
        if args.selected & HTTP:
            for kind in args.dbs:
                rows += run_database(kind, sizes, args.selected, workdir, versions)
        if 7 in args.selected:
            for kind in args.dbs:
                rows += live.run(kind, args.sizes, workdir, WORKERS[kind])
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    machine.update(versions)
    machine["load average at end (1/5/15 min)"] = load_average()
    machine["wall time of the run"] = f"{time.monotonic() - started:.0f} s"
    rows.sort(key=lambda r: (r.workload, ["memory", "sqlite", "postgres"].index(r.db)))
    text = render(rows, machine, "starkeep_sync benchmarks", NOTES)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    log(f"written to {out}")
    return 0


COMPARE_NOTES = [
    "Old vs new: each checkout runs its own `python -m bench` (its own code on the device and under gunicorn) "
    "one workload group (0; 1-3; 4; 5; 6) and database at a time, the two taking turns (who goes first "
    "alternates), so both see the same machine load. new/old is how much faster the new code is (old / new "
    "for a latency); below 0.95x the row says slower. With --rounds K each value is the median of K runs.",
    "The full table below is the new checkout's own rows (last round).",
]


def main_compare(args: argparse.Namespace) -> int:
    from bench import compare

    started = time.monotonic()
    machine = describe({"sizes": args.sizes, "databases": ", ".join(args.dbs),
                        "workloads": ", ".join(str(w) for w in sorted(args.selected))})
    machine["old revision"] = f"{compare.git_revision(args.compare)} ({args.compare})"
    machine["rounds"] = str(args.rounds)
    table, own = compare.compare(args.compare, args.compare_python, args.sizes, args.dbs, args.selected,
                                 args.rounds)
    machine["load average at end (1/5/15 min)"] = load_average()
    machine["wall time of the run"] = f"{time.monotonic() - started:.0f} s"
    full = render([], machine, "starkeep_sync benchmarks", ())
    head, _, _ = full.partition("\n| # |")
    header = full[len(head):].strip().splitlines()[:2]
    text = "\n".join([head.rstrip(), "", "## Old vs new (same run)", "", *table, "",
                      "## This checkout", "", *header, *own, "", "Notes:", "",
                      *(f"- {n}" for n in COMPARE_NOTES + NOTES)]) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    log(f"written to {out}")
    return 0
