"""Credentials: device bearer tokens (hashed) and per-app HMAC secrets.

Both are created only by ``issue()``, which generates the secret: nothing
(admin, command, shell) should store a typed or empty one. An active row with
an empty secret or hash is also refused by a database constraint and by the
authenticators.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "skt_"

#: What ``hash_token`` produces: the SHA-256 hex digest.
_TOKEN_HASH = re.compile(r"[0-9a-f]{64}")
#: The app ids the URL routes accept (``/apps/<app_id>/``); a credential for another could never be used.
_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_token_hash(value: object) -> bool:
    """Whether ``value`` has the shape of a stored token hash (an empty or typed one has not)."""
    return isinstance(value, str) and _TOKEN_HASH.fullmatch(value) is not None


def check_app_id(app_id: object) -> str:
    if not isinstance(app_id, str) or _APP_ID.fullmatch(app_id) is None:
        raise ValueError(f"app id must be 1 to 255 letters, digits, '.', '_' or '-', got {app_id!r}")
    return app_id


def check_channels(channels: object) -> list[str]:
    if channels is None:
        return []
    if not isinstance(channels, (list, tuple)):
        raise ValueError(f"channels must be a list of app ids, got {type(channels).__name__}")
    return [check_app_id(c) for c in channels]


class DeviceTokenQuerySet(models.QuerySet):
    def active(self) -> DeviceTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class DeviceToken(models.Model):
    """A bearer token for one owner, optionally limited to channels. Only its hash is kept."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=255, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    #: First characters of the token, to tell tokens apart in listings.
    hint = models.CharField(max_length=16, editable=False)
    #: Channel app ids this token may use; empty means every channel.
    channels = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceTokenQuerySet.as_manager()

    class Meta:
        constraints = [
            # Revoked rows may keep an empty hash: 0003 revokes the ones older admins let in.
            models.CheckConstraint(
                condition=models.Q(revoked_at__isnull=False) | ~models.Q(token_hash=""),
                name="starkeep_token_active_has_hash",
            ),
        ]

    @classmethod
    def issue(cls, owner: Any, *, name: str = "", channels: list[str] | None = None) -> tuple[DeviceToken, str]:
        """Create a token; returns the row and the plain token (shown once, never stored).

        ``ValueError`` if a channel is not a plain app id.
        """
        channels = check_channels(channels)
        plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            owner=owner, name=name, token_hash=hash_token(plain), hint=plain[:10], channels=channels
        )
        return row, plain

    @property
    def usable(self) -> bool:
        """Active, with a real hash: a row can only authenticate if this is true."""
        return self.revoked_at is None and is_token_hash(self.token_hash)

    def matches(self, plain: str) -> bool:
        return is_token_hash(self.token_hash) and hmac.compare_digest(self.token_hash, hash_token(plain))

    def allows(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])

    def __str__(self) -> str:
        return f"{self.hint}… ({self.name or 'device'})"


class AppSecretQuerySet(models.QuerySet):
    def active(self) -> AppSecretQuerySet:
        return self.filter(revoked_at__isnull=True)


class AppSecret(models.Model):
    """A Starkeep app-signature secret: one owner, one app."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    app_id = models.CharField(max_length=255)
    key_id = models.CharField(max_length=64, unique=True, editable=False)
    secret = models.CharField(max_length=128, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AppSecretQuerySet.as_manager()

    class Meta:
        constraints = [
            # An HMAC over the empty key is computable by anyone; such a row must never be active.
            models.CheckConstraint(
                condition=models.Q(revoked_at__isnull=False) | ~models.Q(secret=""),
                name="starkeep_secret_active_nonempty",
            ),
        ]

    @classmethod
    def issue(cls, owner: Any, app_id: str) -> AppSecret:
        """Create a secret with a generated key id and secret; ``ValueError`` for a bad app id."""
        return cls.objects.create(
            owner=owner, app_id=check_app_id(app_id), key_id="k" + secrets.token_hex(8),
            secret=secrets.token_hex(32),
        )

    @property
    def usable(self) -> bool:
        """Active, with a non-empty secret: a row can only verify a signature if this is true."""
        return self.revoked_at is None and bool(self.secret)

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])

    def __str__(self) -> str:
        return f"{self.app_id} {self.key_id}"
