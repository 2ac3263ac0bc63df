"""Settings for the Django layer, read from one ``STARKEEP_SYNC`` dict.

Usage: ``from starkeep_sync.conf import sync_settings; sync_settings.MAX_PAGE_LIMIT``.
No other module reads ``django.conf.settings`` for our settings.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .core.constants import DEFAULT_PAGE_LIMIT, MAX_ITEMS_PER_REQUEST, MAX_PAGE_LIMIT

DEFAULTS: dict[str, Any] = {
    # Alias in Django's STORAGES of the storage that holds blobs.
    "STORAGE_ALIAS": "default",
    # Every blob is stored under "<STORAGE_PREFIX>/<owner pk>/<key>".
    "STORAGE_PREFIX": "starkeep",
    # This server's node id: the responder's clock, and the stamp of writes made on the
    # server (starkeep_sync.server, the admin).
    "NODE_ID": "cloud",
    # Request policy (PROTOCOL §6), defaults shared with the in-process responder:
    # page size when a request names no limit, and the largest page (a larger limit is clamped).
    "DEFAULT_PAGE_LIMIT": DEFAULT_PAGE_LIMIT,
    "MAX_PAGE_LIMIT": MAX_PAGE_LIMIT,
    # Most records + app rows one exchange request may carry (413 past it).
    "MAX_ITEMS_PER_REQUEST": MAX_ITEMS_PER_REQUEST,
    # Largest exchange body in bytes (413 past it).
    "MAX_REQUEST_BYTES": 64 * 1024 * 1024,
    # Largest blob in bytes (413 past it).
    "MAX_BLOB_BYTES": 5 * 1024 * 1024 * 1024,
    # Largest body of a PUT signed with a Starkeep app signature (413 past it, naming files/presign).
    # Such a body is read before its sender is known; larger blobs go through files/presign.
    "MAX_SIGNED_PUT_BYTES": 8 * 1024 * 1024,
    # Bytes of not-yet-verified signed bodies the server reads at once, per client address and in
    # total (counted in the REPLAY_CACHE_ALIAS cache, so across workers when it is shared); 503
    # "unverified_capacity" past either; None turns a bound off.
    "UNVERIFIED_BYTES_PER_ADDRESS": 128 * 1024 * 1024,
    "UNVERIFIED_BYTES_TOTAL": 512 * 1024 * 1024,
    # Starkeep app signatures: accepted clock distance, and the cache alias
    # that remembers accepted signatures to refuse replays.
    "SIGNATURE_WINDOW_SECONDS": 300,
    "REPLAY_CACHE_ALIAS": "default",
    # Skew guard: refuse HLCs further ahead of this server's clock (ms).
    "MAX_CLOCK_SKEW_MS": 86_400_000,
    # Lifetime of presigned URLs (S3, or this server's signed URLs).
    "PRESIGN_EXPIRES_SECONDS": 900,
    # Authentication classes of every route but /health.
    "AUTHENTICATION_CLASSES": [
        "starkeep_sync.api.authentication.DeviceTokenAuthentication",
        "starkeep_sync.api.authentication.AppSignatureAuthentication",
    ],
    # App rows of an app or table this server does not know, on a per-app channel:
    # "halt" halts that node for the round and applies the rest, recording the refusal
    # (PROTOCOL §6, the reference's behaviour: a 400 would stop a TypeScript device's
    # whole channel); "reject" refuses the whole request (400 unknown_app / unknown_table).
    "UNKNOWN_APP_ROWS": "halt",
    # Answer a request's "countPending" with the progress extension field "pending" (an index count).
    "COUNT_PENDING": True,
    # DRF rate strings per scope ("<n>/<sec|min|hour|day>"), per owner; None disables a scope.
    # "health" is per client address.
    # "changes" (the live change feed, GET sync/changes) is per owner too.
    "THROTTLE_RATES": {"exchange": "1200/min", "files": "12000/min", "health": "120/min", "changes": "600/min"},
    # Per-owner quotas: total blob bytes and number of synced items (records + app rows); None = unlimited.
    "QUOTA_BLOB_BYTES": None,
    "QUOTA_RECORDS": None,
    # Live changes (GET sync/changes, PROTOCOL §7d): the longest a request is held, in seconds (also the
    # default when a request names no timeout; a longer one is capped to it).
    "LIVE_MAX_TIMEOUT": 30,
    # Most change-feed requests of one owner waiting at once (429 with Retry-After past it); counted in the
    # REPLAY_CACHE_ALIAS cache, so across workers when that cache is shared, per process otherwise. None = no cap.
    "LIVE_MAX_WAITERS_PER_OWNER": 32,
    # How a write wakes waiters in other processes: "postgresql" (LISTEN/NOTIFY on the synced database),
    # "redis" (pub/sub on the REPLAY_CACHE_ALIAS cache's Redis), "local" (this process only), or "auto":
    # postgresql on PostgreSQL, else redis when that cache is Redis, else local.
    "LIVE_WAKEUP": "auto",
}

IMPORT_STRINGS = {"AUTHENTICATION_CLASSES"}

REMOVED_SETTINGS: dict[str, str] = {}


class SyncSettings:
    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()
        self._user: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user is None:
            value = getattr(settings, "STARKEEP_SYNC", {})
            if not isinstance(value, dict):
                raise ImproperlyConfigured("STARKEEP_SYNC must be a dict of setting names to values")
            for name in value:
                if name in REMOVED_SETTINGS:
                    raise ImproperlyConfigured(f"STARKEEP_SYNC[{name!r}] was removed: {REMOVED_SETTINGS[name]}")
                if name not in self.defaults:
                    raise ImproperlyConfigured(
                        f"STARKEEP_SYNC[{name!r}] is not a starkeep_sync setting; "
                        f"known settings: {', '.join(sorted(self.defaults))}"
                    )
            self._user = value
        return self._user

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"invalid starkeep_sync setting {name!r}")
        value = self.user_settings.get(name, self.defaults[name])
        if name in IMPORT_STRINGS:
            value = [self._import(v, name) for v in value]
        self._cached.add(name)
        setattr(self, name, value)
        return value

    @staticmethod
    def _import(path: Any, setting: str) -> Any:
        if not isinstance(path, str):
            return path
        try:
            return import_string(path)
        except ImportError as err:
            raise ImproperlyConfigured(
                f"STARKEEP_SYNC[{setting!r}]: could not import {path!r}: {err}"
            ) from err

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user = None


sync_settings = SyncSettings(DEFAULTS)


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "STARKEEP_SYNC":
        sync_settings.reload()


setting_changed.connect(_reload)
