"""What this instance holds and how its syncs are doing, per owner and channel."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Q, Sum

from starkeep_sync.core.constants import DRIVE_APP_ID, FILE_RECORDS_TABLE
from starkeep_sync.core.hlc import deserialize_hlc
from starkeep_sync.models import AppRow, Blob, ChannelActivity, FileRecord, NodeCoverage, PeerSyncState, SharedRecord


def _coverage_text(rows: list[tuple[str, str]]) -> str:
    best: dict[str, str] = {}
    for node, hlc in rows:
        if node not in best or deserialize_hlc(hlc) > deserialize_hlc(best[node]):
            best[node] = hlc
    return ", ".join(f"{node}@{best[node].split(':', 1)[0]}" for node in sorted(best)) or "-"


class Command(BaseCommand):
    help = (
        "Show, per owner and channel: record and row counts, per-node coverage, staged records whose "
        "blob is missing here, failing blob transfers, and the last exchange and error; for each remote "
        "this instance syncs with, its staged blobs (with attempts and last error) and the items the "
        "remote refused for good."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="Only this user.")

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        owners = model.objects.order_by(model.USERNAME_FIELD)
        if options.get("user"):
            owners = owners.filter(**{model.USERNAME_FIELD: options["user"]})
            if not owners.exists():
                raise CommandError(f"No user {options['user']!r}.")
        shown = sum(self._owner(owner) for owner in owners)
        if not shown:
            user = options.get("user")
            who = f"user {user!r} has no" if user else "no owner has"
            self.stdout.write(
                f"No synced data yet: {who} records, rows or exchanges. Issue a device token with "
                f"`manage.py starkeep_token create --user {user or 'NAME'}` and sync a device."
            )

    def _owner(self, owner: Any) -> bool:
        """Print ``owner``'s holdings and syncs; ``False`` (and nothing printed) when there are none."""
        records = SharedRecord.objects.filter(owner=owner)
        counts = records.aggregate(total=Count("id"), deleted=Count("id", filter=Q(deleted_at__isnull=False)))
        blob_keys = Blob.objects.filter(owner=owner).values("key")
        staged = records.filter(deleted_at__isnull=True).exclude(object_storage_key="").exclude(
            object_storage_key__in=blob_keys)
        app_rows = AppRow.objects.filter(owner=owner).values("app_id").annotate(n=Count("id"))
        file_rows = FileRecord.objects.filter(owner=owner).values("app_id").annotate(n=Count("id"))
        peers = PeerSyncState.objects.filter(owner=owner).order_by("peer_url", "channel")
        activity = {a.channel: a for a in ChannelActivity.objects.filter(owner=owner)}
        if not (counts["total"] or app_rows or file_rows or peers or activity):
            return False
        self.stdout.write(self.style.MIGRATE_HEADING(f"{owner}"))
        cov = list(NodeCoverage.objects.filter(owner=owner).values_list("scope", "node_id", "hlc"))
        self.stdout.write(
            f"  {DRIVE_APP_ID}: {counts['total']} records ({counts['deleted']} deleted), "
            f"{staged.count()} staged (blob missing)"
        )
        self.stdout.write(f"    coverage: {_coverage_text([(n, h) for s, n, h in cov if s == 'records'])}")
        self._activity(activity.get(DRIVE_APP_ID))
        per_app: dict[str, int] = {}
        for row in (*app_rows, *file_rows):
            per_app[row["app_id"]] = per_app.get(row["app_id"], 0) + row["n"]
        for app_id in sorted(set(per_app) | {c for c in activity if c != DRIVE_APP_ID}):
            files = FileRecord.objects.filter(owner=owner, app_id=app_id, deleted_at__isnull=True)
            staged_files = files.exclude(object_storage_key__isnull=True).exclude(object_storage_key="").exclude(
                object_storage_key__in=blob_keys).count()
            self.stdout.write(f"  {app_id}: {per_app.get(app_id, 0)} rows, {staged_files} staged "
                              f"{FILE_RECORDS_TABLE} rows")
            app_cov = [(n, h) for s, n, h in cov if s.startswith(f"{app_id}/")]
            self.stdout.write(f"    coverage: {_coverage_text(app_cov)}")
            self._activity(activity.get(app_id))
        for peer in peers:
            when = peer.last_exchange_at.isoformat(timespec="seconds") if peer.last_exchange_at else "never"
            self.stdout.write(f"  peer {peer.peer_url} [{peer.channel}] as {peer.node_id}: last exchange {when}")
            if peer.last_error:
                self.stdout.write(self.style.ERROR(f"    last error: {peer.last_error}"))
            for key, f in sorted(peer.failed_transfers.items()):
                self.stdout.write(self.style.WARNING(
                    f"    failing {f['direction']} of {key}: {f['attempts']} attempt(s), last error {f['last_error']}"))
            self._peer_blobs(peer)
        return True

    def _peer_blobs(self, peer: PeerSyncState, shown: int = 20) -> None:
        """The staged set and the rejected items of this instance as a requester (PROTOCOL §5c)."""
        staged = peer.staged_blobs.order_by("-attempts", "next_attempt", "pk")
        total = staged.aggregate(n=Count("pk"), size=Sum("size"))
        if total["n"]:
            waiting = staged.filter(wanted=False).count()
            lazy = f", {waiting} waiting to be asked for (lazy)" if waiting else ""
            self.stdout.write(f"    staged blobs: {total['n']} ({total['size'] or 0} bytes){lazy}")
            now = time.time()
            for entry in staged.filter(attempts__gt=0)[:shown]:
                due = "due now" if entry.next_attempt <= now else f"next try in {entry.next_attempt - now:.0f} s"
                self.stdout.write(self.style.WARNING(
                    f"      {entry.item_id} ({entry.key}): {entry.attempts} attempt(s), {due}, "
                    f"last error {entry.last_error}"))
        for item in peer.rejected_items.order_by("at", "pk")[:shown]:
            self.stdout.write(self.style.ERROR(
                f"    rejected by the peer: {item.item_id} ({item.key}) at {item.hlc}: {item.reason}. "
                "Fix the cause, then save the record again."))

    def _activity(self, activity: ChannelActivity | None) -> None:
        if activity is None:
            return
        when = activity.last_exchange_at.isoformat(timespec="seconds") if activity.last_exchange_at else "never"
        self.stdout.write(f"    served: {activity.exchanges} exchange(s), last {when}")
        if activity.last_error:
            self.stdout.write(self.style.ERROR(f"    last refusal: {activity.last_error}"))
