"""Credentials: device bearer tokens (hashed) and per-app HMAC secrets."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "skt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DeviceTokenQuerySet(models.QuerySet):
    def active(self) -> DeviceTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class DeviceToken(models.Model):
    """A bearer token for one owner, optionally limited to channels. Only its hash is kept."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=255, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    #: First characters of the token, to tell tokens apart in listings.
    hint = models.CharField(max_length=16)
    #: Channel app ids this token may use; empty means every channel.
    channels = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceTokenQuerySet.as_manager()

    @classmethod
    def issue(cls, owner: object, *, name: str = "", channels: list[str] | None = None) -> tuple[DeviceToken, str]:
        """Create a token; returns the row and the plain token (shown once, never stored)."""
        plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            owner=owner, name=name, token_hash=hash_token(plain), hint=plain[:10], channels=channels or []
        )
        return row, plain

    def matches(self, plain: str) -> bool:
        return hmac.compare_digest(self.token_hash, hash_token(plain))

    def allows(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])

    def __str__(self) -> str:
        return f"{self.hint}… ({self.name or 'device'})"


class AppSecret(models.Model):
    """A Starkeep app-signature secret: one owner, one app."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    app_id = models.CharField(max_length=255)
    key_id = models.CharField(max_length=64, unique=True)
    secret = models.CharField(max_length=128)
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @classmethod
    def issue(cls, owner: object, app_id: str) -> AppSecret:
        return cls.objects.create(
            owner=owner, app_id=app_id, key_id="k" + secrets.token_hex(8), secret=secrets.token_hex(32)
        )

    def __str__(self) -> str:
        return f"{self.app_id} {self.key_id}"
