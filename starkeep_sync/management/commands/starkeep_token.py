"""Issue, list and revoke device bearer tokens."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from starkeep_sync.models import DeviceToken


class Command(BaseCommand):
    help = (
        "Manage device bearer tokens. 'create' prints the new token once on stdout "
        "(only its hash is stored); 'list' shows tokens without secrets; 'revoke' disables one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = sub.add_parser("create", help="Issue a token for a user and print it once.")
        create.add_argument("--user", required=True, help="Username of the owner of the token.")
        create.add_argument("--create-user", action="store_true",
                            help="Create the user (without a usable password) if it does not exist.")
        create.add_argument("--channel", action="append", default=[], metavar="APP_ID",
                            help="Limit the token to this channel (repeatable; default: every channel).")
        create.add_argument("--name", default="", help="A label to recognise the token by, e.g. the device.")
        lst = sub.add_parser("list", help="List tokens (hint, owner, channels, state).")
        lst.add_argument("--user", help="Only this user's tokens.")
        revoke = sub.add_parser("revoke", help="Revoke a token by the hint shown by 'list' or by the token.")
        revoke.add_argument("token", help="The token itself, or its hint (first characters).")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _user(self, username: str, create: bool = False) -> Any:
        model = get_user_model()
        try:
            return model.objects.get(**{model.USERNAME_FIELD: username})
        except model.DoesNotExist:
            if not create:
                raise CommandError(f"No user {username!r}. Pass --create-user to create it.") from None
            user = model(**{model.USERNAME_FIELD: username})
            user.set_unusable_password()
            user.save()
            return user

    def _create(self, options: dict[str, Any]) -> None:
        user = self._user(options["user"], options["create_user"])
        try:
            _, plain = DeviceToken.issue(user, name=options["name"], channels=options["channel"])
        except ValueError as err:
            raise CommandError(str(err)) from None
        self.stdout.write(plain)

    def _list(self, options: dict[str, Any]) -> None:
        qs = DeviceToken.objects.select_related("owner").order_by("created")
        if options.get("user"):
            qs = qs.filter(owner=self._user(options["user"]))
        for t in qs:
            state = "revoked" if t.revoked_at else "active"
            channels = ",".join(t.channels) or "*"
            self.stdout.write(f"{t.hint}…\t{t.owner}\t{channels}\t{state}\t{t.name}")

    def _revoke(self, options: dict[str, Any]) -> None:
        from starkeep_sync.models.credentials import hash_token

        value = options["token"].rstrip("…")
        qs = DeviceToken.objects.active()
        matches = list(qs.filter(token_hash=hash_token(value))) or list(qs.filter(hint__startswith=value[:10]))
        if len(value) < 6 or not matches:
            raise CommandError("No active token matches; use the full token or the hint shown by 'list'.")
        if len(matches) > 1:
            raise CommandError("That hint matches several tokens; pass the full token.")
        matches[0].revoke()
        self.stdout.write(self.style.SUCCESS(f"Revoked {matches[0].hint}…"))
