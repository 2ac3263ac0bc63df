"""Sync this instance's data for one user with a remote Starkeep server, as the requester."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router

from starkeep_sync.conf import sync_settings
from starkeep_sync.core.constants import DRIVE_APP_ID
from starkeep_sync.core.engine import ExchangeResult
from starkeep_sync.core.exceptions import ItemsRejected, SyncError
from starkeep_sync.core.transfers import DEFAULT_TRANSFER_CONCURRENCY, TransferProgress
from starkeep_sync.device.supervisor import Backoff, RoundReport, SyncSupervisor, sync_until_done
from starkeep_sync.management.syncing import build_requester
from starkeep_sync.models import Blob

TOKEN_ENV = "STARKEEP_SYNC_TOKEN"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class Progress:
    """Items and bytes moved so far; a bar when the server reports ``pending``."""

    def __init__(self, out: Any, tty: bool) -> None:
        self.out, self.tty = out, tty
        self.items = self.bytes = self.rounds = self.completed = self.errors = 0
        self.pending: int | None = None
        self.last: ExchangeResult | None = None
        self.results: list[ExchangeResult] = []

    def update(self, report: RoundReport) -> None:
        self.rounds += 1
        if report.result is not None:
            r = self.last = report.result
            self.results.append(r)
            self.completed += 1
            self.items += r.applied + r.shipped
            self.bytes += r.bytes_moved
            self.pending = r.pending
            self.errors += len(r.errors)
        else:
            self.errors += 1
        self.out.write(self.line(), ending="\r" if self.tty else "\n")
        if self.tty:
            self.out.flush()

    def blobs(self, p: TransferProgress) -> None:
        """Blob transfers as they go: every step on a terminal, a batch's start and end in a log."""
        if not self.tty and p.key is not None and p.items_done < p.items_total:
            return
        if not self.tty and p.key is not None and p.bytes_done < p.bytes_total and p.items_done == p.items_total:
            return  # the last blob's own byte steps; its end is reported once below
        verb = "uploading" if p.direction == "push" else "downloading"
        line = (f"{verb} blobs: {p.items_done}/{p.items_total}, "
                f"{human_bytes(p.bytes_done)} of {human_bytes(p.bytes_total)}")
        self.out.write(line, ending="\r" if self.tty else "\n")
        if self.tty:
            self.out.flush()

    def line(self) -> str:
        moved = f"{self.items} items, {human_bytes(self.bytes)}"
        if self.pending is not None:
            total = self.items + self.pending
            width = 24
            filled = width if total == 0 else int(width * self.items / total)
            return f"[{'#' * filled}{'.' * (width - filled)}] {self.items}/{total} items, {human_bytes(self.bytes)}"
        return f"round {self.rounds}: {moved}"

    def left(self) -> str | None:
        """How much the last completed round left to move; ``None`` if it left nothing (or none completed)."""
        if self.last is None or not self.last.has_more:
            return None
        if self.last.pending:
            # ``pending`` counts what the server still holds for us; a push left behind is not in it.
            return f"More is left: {self.last.pending} item(s) still to pull from the server, perhaps more to push."
        return "More is left (the server did not say how much)."


class Command(BaseCommand):
    help = (
        "Sync one user's records and blobs on this instance with a remote Starkeep server. "
        "Runs rounds until nothing is left; --once runs a single round (and says what is left), "
        "--watch keeps syncing: at once when the server's change feed says the remote changed (--live, the "
        "default), and every --interval seconds. State is kept per (URL, channel), "
        "so an interrupted run resumes where it stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True, help="Base URL of the remote server, e.g. https://cloud.example.")
        parser.add_argument("--user", required=True, help="Username whose data on this instance is synced.")
        parser.add_argument("--channel", default=DRIVE_APP_ID,
                            help=f"'{DRIVE_APP_ID}' (shared records, the default) or a registered app id.")
        parser.add_argument("--token", default=None,
                            help=f"Device token for the remote server (default: the {TOKEN_ENV} environment "
                                 "variable). Prefer the variable: arguments show up in process lists.")
        parser.add_argument("--node-id", default=None,
                            help="This instance's node id in the sync (default: STARKEEP_SYNC['NODE_ID']). "
                                 "Must be this instance's own: refused when the remote holds writes under it "
                                 "that this instance did not make.")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--once", action="store_true",
                          help="Run a single round (at most --page-limit items each way) and say what is left.")
        mode.add_argument("--until-done", action="store_true",
                          help="Run rounds until nothing is left. This is the default; kept so older scripts work.")
        mode.add_argument("--watch", action="store_true", help="Keep syncing; stop with Ctrl-C.")
        parser.add_argument("--interval", type=float, default=30.0, help="Seconds between cycles with --watch.")
        parser.add_argument("--live", action=argparse.BooleanOptionalAction, default=True,
                            help="With --watch, keep a long-poll of the server's change feed (sync/changes) open "
                                 "and sync as soon as the remote changes (default); --no-live syncs on the "
                                 "interval only. A server without the feed falls back to the interval by itself.")
        parser.add_argument("--page-limit", type=int, default=1000, help="Most items per round in each direction.")
        parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds.")
        parser.add_argument("--max-cycles", type=int, default=None,
                            help="With --watch, stop after this many cycles (for scripts and tests).")
        parser.add_argument("--transfer-concurrency", type=int, default=None,
                            help=f"Most blob uploads or downloads at once (default {DEFAULT_TRANSFER_CONCURRENCY}; "
                                 "1 when this instance's database is SQLite, which takes one writer at a time "
                                 "and each blob that lands here is recorded in it).")
        parser.add_argument("--blobs", choices=["eager", "lazy"], default="eager",
                            help="'eager' (default) downloads every blob the synced records name; 'lazy' "
                                 "syncs metadata only and leaves the blobs staged (see starkeep_status).")
        parser.add_argument("--strict", action="store_true",
                            help="Fail (exit status 1) when the remote refuses a blob for good, e.g. one over "
                                 "its size limit or quota, once the other items are synced.")

    def handle(self, *args: Any, **options: Any) -> None:
        token = options["token"] or os.environ.get(TOKEN_ENV)
        if not token:
            raise CommandError(f"No credentials: pass --token or set {TOKEN_ENV}.")
        if options["page_limit"] < 1:
            raise CommandError("--page-limit must be at least 1.")
        if options["interval"] <= 0:
            raise CommandError("--interval must be positive.")
        if options["transfer_concurrency"] is None:
            sqlite = connections[router.db_for_write(Blob)].vendor == "sqlite"
            options["transfer_concurrency"] = 1 if sqlite else DEFAULT_TRANSFER_CONCURRENCY
        if options["transfer_concurrency"] < 1:
            raise CommandError("--transfer-concurrency must be at least 1.")
        model = get_user_model()
        try:
            owner = model.objects.get(**{model.USERNAME_FIELD: options["user"]})
        except model.DoesNotExist:
            raise CommandError(f"No user {options['user']!r} on this instance.") from None
        try:
            requester = build_requester(
                owner=owner, url=options["url"], channel=options["channel"], token=token,
                node_id=options["node_id"] or sync_settings.NODE_ID, page_limit=options["page_limit"],
                timeout=options["timeout"], transfer_concurrency=options["transfer_concurrency"],
                blob_policy=options["blobs"],
            )
        except (SyncError, ValueError) as err:
            raise CommandError(str(err)) from err

        progress = Progress(self.stdout, tty=self.stdout.isatty() if hasattr(self.stdout, "isatty") else False)
        requester.engine.on_progress = progress.blobs
        on_round = progress.update
        try:
            if options["watch"]:
                supervisor = SyncSupervisor(requester.engine, interval=options["interval"], backoff=Backoff(),
                                            on_round=lambda r: (requester.record(r), on_round(r)),
                                            live=options["live"])
                try:
                    supervisor.run(max_cycles=options["max_cycles"])
                except KeyboardInterrupt:
                    supervisor.stop()
            elif options["once"]:
                result = requester.engine.exchange()
                report = RoundReport(1, result, None, 0.0)
                requester.record(report)
                on_round(report)
            else:
                sync_until_done(requester.engine, on_round=lambda r: (requester.record(r), on_round(r)),
                                strict=options["strict"])
        except ItemsRejected as err:
            requester.close()
            raise CommandError(f"{err}. Everything else is synced. Fix the cause, then save the record again "
                               "(a new version ships).") from err
        except (SyncError, OSError, RuntimeError) as err:
            requester.record(RoundReport(progress.rounds + 1, None, err, 0.0))
            if progress.tty:
                self.stdout.write("")
            left = progress.left()
            after = f" after {progress.completed} round(s) ({progress.items} items moved)" if progress.completed else ""
            raise CommandError(f"Sync with {options['url']} failed{after}: {err}"
                               + (f" {left} Run the command again to resume." if left else "")) from err
        finally:
            requester.close()
        if progress.tty:
            self.stdout.write("")
        failures = requester.engine.blob_failures
        summary = (f"Synced {options['channel']} with {options['url']}: {progress.rounds} round(s), "
                   f"{progress.items} items, {human_bytes(progress.bytes)} moved")
        self.stdout.write(self.style.SUCCESS(summary))
        left = progress.left()
        if left and options["once"]:
            self.stdout.write(self.style.WARNING(f"{left} Run again without --once to sync the rest."))
        last = progress.last
        if last is not None and last.staged:
            failing = f", {len(last.staged_failing)} failing and retried with backoff" if last.staged_failing else ""
            self.stdout.write(self.style.WARNING(
                f"{last.staged} blob(s) staged ({human_bytes(last.staged_bytes)}){failing}; "
                "see manage.py starkeep_status."))
        rejected = sum(len(r.rejected) for r in progress.results)
        if rejected:
            self.stdout.write(self.style.WARNING(
                f"{rejected} item(s) refused by the remote for good; see manage.py starkeep_status."))
        if failures:
            self.stdout.write(self.style.WARNING(
                f"{len(failures)} blob transfer(s) failing; they are retried next run "
                "(see manage.py starkeep_status)."))
        sys.stdout.flush()
