"""Authentication: device bearer tokens and Starkeep app signatures (PROTOCOL §8)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.cache import caches
from django.urls import reverse
from django.utils import timezone
from rest_framework import authentication, exceptions

from ..conf import sync_settings
from ..core.constants import DRIVE_APP_ID
from ..models import AppSecret, DeviceToken
from ..models.credentials import hash_token
from .bodies import LengthRequired, declared_length, read_body, spool_body, unverified_allowance
from .exceptions import PayloadTooLarge


@dataclass
class Principal:
    """Who is calling: the owner, and which channels the credential may use."""

    owner: Any
    scheme: str
    #: ``None``: every channel.
    channels: list[str] | None = None
    key_id: str | None = None

    def allows(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels


def channel_of(request: Any) -> str:
    ctx = getattr(request, "parser_context", None) or {}
    kwargs = ctx.get("kwargs") or {}
    return kwargs.get("app_id") or DRIVE_APP_ID


def signed_path(request: Any) -> str:
    """The request path relative to the ``/apps/<appId>`` mount, as the signer saw it."""
    django_request = getattr(request, "_request", request)
    path = django_request.path  # already percent-decoded, no query string
    match = django_request.resolver_match
    name = f"{match.namespace}:health" if match and match.namespace else "health"
    mount = reverse(name)[: -len("/health")]
    rel = path[len(mount):] if path.startswith(mount) else path
    kwargs = match.kwargs if match else {}
    if "app_id" in kwargs:
        rel = rel[len(f"/apps/{kwargs['app_id']}"):]
    return rel


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <token>``; tokens are stored hashed and revocable."""

    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, Principal] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed bearer header: expected 'Bearer <token>'.")
        try:
            token = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Malformed bearer token.") from None
        return self.authenticate_credentials(token)

    def authenticate_credentials(self, token: str) -> tuple[Any, Principal]:
        row = (
            DeviceToken.objects.active().select_related("owner").filter(token_hash=hash_token(token)).first()
        )
        # ``usable``: refuse a row with an empty or malformed hash whatever put it there.
        if row is None or not row.usable or not row.matches(token) or not row.owner.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        now = timezone.now()
        if row.last_used is None or now - row.last_used > timedelta(minutes=1):
            DeviceToken.objects.filter(pk=row.pk).update(last_used=now)
        return row.owner, Principal(row.owner, "token", list(row.channels) or None)

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="starkeep"'


class AppSignatureAuthentication(authentication.BaseAuthentication):
    """``X-Starkeep-App-*`` HMAC-SHA256 signatures, byte-compatible with the TypeScript signer.

    Replays inside the window are refused through Django's cache, so every
    worker must share one cache (Redis, Memcached, database) in production.
    """

    def authenticate(self, request: Any) -> tuple[Any, Principal] | None:
        meta = request.META
        app_id = meta.get("HTTP_X_STARKEEP_APP_ID")
        if app_id is None:
            return None
        sig = (meta.get("HTTP_X_STARKEEP_APP_SIG") or "").strip().lower()
        ts_text = (meta.get("HTTP_X_STARKEEP_APP_TS") or "").strip()
        key_id = meta.get("HTTP_X_STARKEEP_KEY_ID")
        if not sig or not ts_text:
            raise exceptions.AuthenticationFailed("Signature headers incomplete: need X-Starkeep-App-Sig and -Ts.")
        if key_id is not None and (len(key_id) > 64 or not key_id.isprintable()):
            # Key ids are short printable tokens; anything else (a NUL that PostgreSQL
            # would choke on in the lookup) cannot name a secret.
            raise exceptions.AuthenticationFailed("Invalid signature.")
        if app_id != channel_of(request):
            raise exceptions.AuthenticationFailed("X-Starkeep-App-Id does not match the app id of the path.")
        try:
            ts = int(ts_text)
        except ValueError:
            raise exceptions.AuthenticationFailed("X-Starkeep-App-Ts must be milliseconds since the epoch.") from None
        window_ms = sync_settings.SIGNATURE_WINDOW_SECONDS * 1000
        if abs(time.time() * 1000 - ts) > window_ms:
            raise exceptions.AuthenticationFailed("Signature timestamp outside the accepted window.")
        # Never an empty secret, whatever the database holds: anyone can compute an HMAC over the empty key.
        secrets = AppSecret.objects.active().select_related("owner").filter(app_id=app_id).exclude(secret="")
        if key_id:
            secrets = secrets.filter(key_id=key_id)
        candidates = [s for s in secrets[:20] if s.usable and s.owner.is_active]
        if not candidates:
            raise exceptions.AuthenticationFailed("Invalid signature.")
        prefix = f"{app_id}:{request.method.upper()}:{signed_path(request)}:{ts_text}:".encode()
        macs = [hmac.new(s.secret.encode(), prefix, hashlib.sha256) for s in candidates]
        spool = self._take_body(request, macs)
        for secret, mac in zip(candidates, macs, strict=True):
            if hmac.compare_digest(mac.hexdigest(), sig):
                # Only a verified signature is remembered: a garbage one must not block the real one.
                self._refuse_replay(sig)
                if spool is not None:
                    getattr(request, "_request", request)._starkeep_spool = spool
                return secret.owner, Principal(secret.owner, "signature", [app_id], secret.key_id)
        if spool is not None:
            spool.close()
        raise exceptions.AuthenticationFailed("Invalid signature.")

    @staticmethod
    def _take_body(request: Any, macs: list[Any]) -> Any:
        """Read the signed body into ``macs`` before anything acts on the request.

        Nothing is known of the sender yet, so the body is bounded (per client
        address and in total) and waits in a neutral spool, outside every owner's
        storage. A blob upload is capped at ``MAX_SIGNED_PUT_BYTES``: larger blobs go
        through ``files/presign``, whose small signed request is verified first.
        Returns the spool of a blob upload (the view stores from it), else ``None``.
        """
        if request.method in ("GET", "HEAD"):
            return None
        length = declared_length(request)
        view = (getattr(request, "parser_context", None) or {}).get("view")
        if request.method == "PUT" and getattr(view, "streams_body", False):
            if length is None:
                raise LengthRequired("A signed upload needs a Content-Length header.")
            cap = sync_settings.MAX_SIGNED_PUT_BYTES
            if length > cap:
                raise PayloadTooLarge(f"A signed upload of {length} bytes is over this server's limit of {cap} "
                                      "bytes for signed PUT bodies; upload it through POST files/presign.")
            with unverified_allowance(request, length):
                return spool_body(request, length, macs)
        with unverified_allowance(request, sync_settings.MAX_REQUEST_BYTES if length is None else length):
            body = read_body(request)
        for mac in macs:
            mac.update(body)
        return None

    @staticmethod
    def _refuse_replay(sig: str) -> None:
        cache = caches[sync_settings.REPLAY_CACHE_ALIAS]
        if not cache.add(f"starkeep_sync:sig:{sig}", 1, timeout=sync_settings.SIGNATURE_WINDOW_SECONDS * 2 + 5):
            raise exceptions.AuthenticationFailed("This signature was already used (replay refused).")

    def authenticate_header(self, request: Any) -> str:
        return 'StarkeepAppSignature realm="starkeep"'
