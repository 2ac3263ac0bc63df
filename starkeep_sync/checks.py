"""System checks for misconfigurations an operator can fix."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.core.files.storage import InvalidStorageError, storages

    from .conf import sync_settings

    errors: list[Any] = []
    try:
        alias = sync_settings.STORAGE_ALIAS
    except ImproperlyConfigured as err:
        return [Error(str(err), hint="Fix the STARKEEP_SYNC dict in your settings.", id="starkeep_sync.E000")]
    try:
        storages[alias]
    except InvalidStorageError:
        errors.append(Error(
            f"STARKEEP_SYNC['STORAGE_ALIAS'] is {alias!r}, which is not in STORAGES.",
            hint="Add that alias to STORAGES or point STORAGE_ALIAS at an existing one.",
            id="starkeep_sync.E001",
        ))
    if sync_settings.UNKNOWN_APP_ROWS not in ("reject", "halt"):
        errors.append(Error(
            f"STARKEEP_SYNC['UNKNOWN_APP_ROWS'] is {sync_settings.UNKNOWN_APP_ROWS!r}.",
            hint="Use 'reject' (refuse the request, the default) or 'halt' (halt that node, PROTOCOL §6).",
            id="starkeep_sync.E003",
        ))
    cache_alias = sync_settings.REPLAY_CACHE_ALIAS
    caches = getattr(settings, "CACHES", {})
    backend = caches.get(cache_alias, {}).get("BACKEND", "django.core.cache.backends.locmem.LocMemCache")
    if cache_alias not in caches and cache_alias != "default":
        errors.append(Error(
            f"STARKEEP_SYNC['REPLAY_CACHE_ALIAS'] is {cache_alias!r}, which is not in CACHES.",
            hint="Add the cache or use 'default'.", id="starkeep_sync.E002",
        ))
    elif backend.endswith(("LocMemCache", "DummyCache")) and not settings.DEBUG:
        errors.append(Warning(
            "Signature replay refusal uses a per-process cache; with several workers a replay can "
            "reach another worker.",
            hint="Point REPLAY_CACHE_ALIAS at a shared cache (Redis, Memcached or the database cache).",
            id="starkeep_sync.W001",
        ))
    return errors
