"""A Python device that syncs with a Starkeep server, no Django needed.

    python examples/device.py --url http://127.0.0.1:8000 --token skt_... --db device.db --add 3
    python examples/device.py --url http://127.0.0.1:8000 --token skt_... --db other.db --watch

Keeps its records, app rows and sync state in one sqlite file and its blobs
in a folder next to it; each run adds ``--add`` new photos (random bytes),
syncs the Drive channel until nothing is left, and prints what moved.
``--watch`` keeps syncing (Ctrl-C stops it): as soon as the server's change
feed says another device changed something, and every ``--interval`` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starkeep_sync import (
    HLCClock,
    SyncError,
    TransferProgress,
    create_data_record,
    create_sync_engine,
    shared_object_key,
)
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.device.sqlite import SqliteDeviceStore
from starkeep_sync.device.supervisor import RoundReport, SyncSupervisor, sync_until_done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sync a plain-Python device with a Starkeep server.")
    parser.add_argument("--url", required=True, help="Server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("STARKEEP_SYNC_TOKEN"),
                        help="Device token (default: $STARKEEP_SYNC_TOKEN)")
    parser.add_argument("--db", default="device.db", help="sqlite file of this device (created if missing)")
    parser.add_argument("--node-id", default=None, help="this device's node id (default: from the db file name)")
    parser.add_argument("--add", type=int, default=0, help="create this many new records with blobs first")
    parser.add_argument("--watch", action="store_true",
                        help="keep syncing, at once when the server reports a change (live), until Ctrl-C")
    parser.add_argument("--interval", type=float, default=30.0, help="with --watch: seconds between rounds anyway")
    parser.add_argument("--max-cycles", type=int, default=None, help="with --watch: stop after this many cycles")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set STARKEEP_SYNC_TOKEN")

    store = SqliteDeviceStore(args.db, f"{args.db}-blobs")
    node_id = args.node_id or f"py-{Path(args.db).stem}"
    state = store.state(f"drive@{args.url}")
    clock = HLCClock(node_id, initial_state=state.get_hlc_clock_state(), on_tick=state.set_hlc_clock_state)

    for _ in range(args.add):
        data = os.urandom(64 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("image/jpeg", digest)
        store.storage.put(key, data, "image/jpeg")
        store.database.put(create_data_record(
            clock, type="image/jpeg", origin_app_id="example-device", content_hash=digest,
            object_storage_key=key, size_bytes=len(data), mime_type="image/jpeg",
            original_filename=f"photo-{digest[:8]}.jpg",
        ))

    base = f"{args.url.rstrip('/')}/apps/starkeep-drive"
    engine = create_sync_engine(
        local_database=store.database, local_storage=store.storage,
        remote_storage=HttpObjectStorage(base, auth=args.token),
        transport=create_http_sync_transport(base_url=base, auth=args.token),
        clock=clock, sync_state=state, on_progress=show_progress,
    )
    if args.watch:
        return watch(engine, store, node_id, args.interval, args.max_cycles)
    try:
        results = sync_until_done(engine)
    except SyncError as err:
        # One line with the server's reason; a traceback would add nothing for the user.
        print(f"{node_id}: sync with {args.url} failed: {err}", file=sys.stderr)
        store.close()
        return 1
    shipped = sum(r.shipped for r in results)
    applied = sum(r.applied for r in results)
    moved = sum(r.bytes_moved for r in results)
    held = len(store.database.all())
    print(f"{node_id}: {len(results)} round(s), shipped {shipped}, received {applied}, "
          f"{moved} bytes moved; {held} records held")
    last = results[-1]
    if last.staged:
        print(f"  {last.staged} blob(s) staged ({last.staged_bytes} bytes): metadata here, bytes not yet")
    for entry in last.staged_failing:
        print(f"  staged {entry.item_id} ({entry.key}): {entry.attempts} attempt(s), {entry.last_error}",
              file=sys.stderr)
    for item in (r for res in results for r in res.rejected):
        print(f"  rejected by the server: {item.item_id}: {item.reason}", file=sys.stderr)
    failing = bool(last.staged_failing or last.failed_pushes or any(r.rejected for r in results))
    store.close()
    return 1 if failing else 0


def show_progress(p: TransferProgress) -> None:
    """Blob transfers as they go, on one terminal line (nothing when output is not a terminal)."""
    if not sys.stderr.isatty():
        return
    verb = "uploading" if p.direction == "push" else "downloading"
    end = "\n" if p.items_done == p.items_total and p.bytes_done >= p.bytes_total else ""
    print(f"\r{verb} {p.items_done}/{p.items_total} blobs, {p.bytes_done}/{p.bytes_total} bytes",
          end=end, file=sys.stderr, flush=True)


def watch(engine: Any, store: SqliteDeviceStore, node_id: str, interval: float, max_cycles: int | None) -> int:
    """Sync until Ctrl-C: a round whenever the server's change feed answers ``changed``, and every ``interval``."""

    def report(r: RoundReport) -> None:
        if r.error is not None:
            print(f"{node_id}: round failed: {r.error}", file=sys.stderr, flush=True)
        elif r.applied or r.shipped:
            print(f"{node_id}: shipped {r.shipped}, received {r.applied}; "
                  f"{len(store.database.all())} records held", flush=True)

    supervisor = SyncSupervisor(engine, interval=interval, on_round=report, live=True)
    print(f"{node_id}: watching (live changes, and every {interval:g} s); Ctrl-C stops", flush=True)
    try:
        supervisor.run(max_cycles=max_cycles)
    except KeyboardInterrupt:
        pass
    except SyncError as err:
        print(f"{node_id}: sync stopped: {err}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
