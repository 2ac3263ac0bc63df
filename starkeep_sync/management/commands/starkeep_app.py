"""Register app namespaces and issue app-signature secrets."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from starkeep_sync.core.constants import DRIVE_APP_ID, FILE_RECORDS_TABLE
from starkeep_sync.models import AppNamespace, AppSecret, AppTable


def parse_table(spec: str) -> tuple[str, list[str]]:
    name, sep, pk = spec.partition(":")
    cols = [c.strip() for c in pk.split(",") if c.strip()]
    if not name or not sep or not cols:
        raise CommandError(f"--table {spec!r}: expected NAME:PK or NAME:PK1,PK2")
    return name, cols


class Command(BaseCommand):
    help = (
        "Manage app namespaces (the tables a per-app channel syncs) and app-signature secrets. "
        "'--table _starkeep_sync_records:id' makes an app file-enabled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{register,list,remove,secret}")
        reg = sub.add_parser("register", help="Register (or extend) an app namespace.")
        reg.add_argument("app_id", help="The app id, as in /apps/<app_id>/.")
        reg.add_argument("--table", action="append", default=[], metavar="NAME:PK[,PK2]",
                         help="A table and its primary-key columns (repeatable).")
        sub.add_parser("list", help="List registered apps and their tables.")
        rm = sub.add_parser("remove", help="Unregister an app (its synced rows are kept).")
        rm.add_argument("app_id", help="The app id to unregister.")
        sec = sub.add_parser("secret", help="Issue an HMAC secret for an app and user; prints it once.")
        sec.add_argument("app_id", help="The app id the secret signs for.")
        sec.add_argument("--user", required=True, help="Username of the owner the secret acts for.")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _register(self, options: dict[str, Any]) -> None:
        app_id = options["app_id"]
        if app_id == DRIVE_APP_ID:
            raise CommandError(f"{DRIVE_APP_ID!r} is the Drive channel; it carries shared records, not app tables.")
        if not options["table"]:
            raise CommandError("Give at least one --table NAME:PK.")
        tables = [parse_table(t) for t in options["table"]]
        with transaction.atomic():
            ns, _ = AppNamespace.objects.get_or_create(app_id=app_id)
            for name, cols in tables:
                AppTable.objects.update_or_create(namespace=ns, name=name, defaults={"pk_columns": cols})
            if any(name == FILE_RECORDS_TABLE for name, _ in tables) and not ns.files_enabled:
                ns.files_enabled = True
                ns.save(update_fields=["files_enabled"])
        self.stdout.write(self.style.SUCCESS(f"Registered {app_id}: " + ", ".join(n for n, _ in tables)))

    def _list(self, options: dict[str, Any]) -> None:
        for ns in AppNamespace.objects.prefetch_related("tables").order_by("app_id"):
            tables = ", ".join(f"{t.name}({','.join(t.pk_columns)})" for t in ns.tables.all())
            files = " [files]" if ns.files_enabled else ""
            self.stdout.write(f"{ns.app_id}{files}: {tables}")

    def _remove(self, options: dict[str, Any]) -> None:
        deleted, _ = AppNamespace.objects.filter(app_id=options["app_id"]).delete()
        if not deleted:
            raise CommandError(f"No app {options['app_id']!r} is registered.")
        self.stdout.write(self.style.SUCCESS(f"Removed {options['app_id']}"))

    def _secret(self, options: dict[str, Any]) -> None:
        model = get_user_model()
        try:
            user = model.objects.get(**{model.USERNAME_FIELD: options["user"]})
        except model.DoesNotExist:
            raise CommandError(f"No user {options['user']!r}.") from None
        try:
            secret = AppSecret.issue(user, options["app_id"])
        except ValueError as err:
            raise CommandError(str(err)) from None
        # The key id goes to stderr so stdout carries only the secret.
        self.stderr.write(f"key id: {secret.key_id}")
        self.stdout.write(secret.secret)
