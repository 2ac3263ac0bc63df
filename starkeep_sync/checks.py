"""System checks for misconfigurations an operator can fix.

Every setting in ``conf.DEFAULTS`` has a rule in :data:`RULES`, so a bad value
fails ``manage.py check`` (and ``runserver``/``migrate``, which run it) instead
of the first request that reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .core.constants import UNKNOWN_ROWS_POLICIES

#: Throttle scopes the views use (starkeep_sync.api.throttling).
THROTTLE_SCOPES = ("exchange", "files", "health", "changes")

#: ``<n>/<unit>`` with the units DRF's ``SimpleRateThrottle.parse_rate`` reads (it looks at the first letter only,
#: so "5/mango" would pass it as minutes; we accept only the spellings people mean).
_RATE = re.compile(r"([0-9]+)/(s|sec|second|m|min|minute|h|hour|d|day)")


def _positive_int(value: Any) -> str | None:
    # bool is an int subclass: True would read as 1.
    if type(value) is not int:
        return f"must be an integer, not {type(value).__name__}"
    if value < 1:
        return "must be at least 1"
    return None


def _optional_positive_int(value: Any) -> str | None:
    return None if value is None else _positive_int(value)


def _alias(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, not {value!r}"


def _node_id(value: Any) -> str | None:
    from .core.hlc import HLCClock

    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    try:
        HLCClock(value)  # the clock applies the one node-id rule (PROTOCOL §1)
    except ValueError as err:
        return str(err).replace("HLCClock ", "")
    return None


def _storage_prefix(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", value):
        return "must be a relative path"
    if "\\" in value or re.search(r"[\x00-\x1f\x7f]", value):
        return "must not contain backslashes or control characters"
    segments = value.rstrip("/").split("/") if value else []
    if any(seg in ("", ".", "..") for seg in segments):
        return "must not contain empty, '.' or '..' segments"
    return None


def _page_limit_order(user: dict[str, Any]) -> str | None:
    default, maximum = user["DEFAULT_PAGE_LIMIT"], user["MAX_PAGE_LIMIT"]
    if _positive_int(default) or _positive_int(maximum):
        return None  # reported by their own rules
    if default > maximum:
        return f"DEFAULT_PAGE_LIMIT ({default}) is above MAX_PAGE_LIMIT ({maximum})"
    return None


def _throttle_rates(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"must be a dict of scope to rate, not {type(value).__name__}"
    problems = []
    for scope, rate in value.items():
        if scope not in THROTTLE_SCOPES:
            problems.append(f"unknown scope {scope!r}")
        elif rate is not None:
            match = _RATE.fullmatch(rate) if isinstance(rate, str) else None
            if match is None:
                problems.append(f"{scope!r}: {rate!r} is not a rate")
            elif int(match.group(1)) < 1:
                problems.append(f"{scope!r}: {rate!r} allows no request at all")
    return "; ".join(problems) or None


def _authentication_classes(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not value:
        return "must be a non-empty list of import paths"
    problems = []
    for item in value:
        if isinstance(item, str):
            try:
                item = import_string(item)
            except ImportError as err:
                problems.append(f"cannot import {item!r} ({err})")
                continue
        if not (isinstance(item, type) and callable(getattr(item, "authenticate", None))):
            problems.append(f"{item!r} is not an authentication class (no authenticate method)")
    return "; ".join(problems) or None


def _unknown_app_rows(value: Any) -> str | None:
    return None if value in UNKNOWN_ROWS_POLICIES else f"is {value!r}"


def _wakeup(value: Any) -> str | None:
    from .live import WAKEUP_MODES

    return None if value in WAKEUP_MODES else f"is {value!r}"


def _unverified_bounds(values: dict[str, Any]) -> str | None:
    largest = max((v for v in (values["MAX_REQUEST_BYTES"], values["MAX_SIGNED_PUT_BYTES"]) if type(v) is int),
                  default=0)
    for name in ("UNVERIFIED_BYTES_PER_ADDRESS", "UNVERIFIED_BYTES_TOTAL"):
        bound = values[name]
        if type(bound) is int and bound < largest:
            return f"{name} ({bound}) is smaller than the largest signed body this server accepts ({largest})"
    return None


@dataclass(frozen=True)
class Rule:
    """One setting's check: ``problem(value)`` says what is wrong, or ``None``."""

    id: str
    problem: Callable[[Any], str | None]
    hint: str


_POSITIVE = "Write a positive integer ({unit})."

RULES: dict[str, Rule] = {
    "STORAGE_ALIAS": Rule("starkeep_sync.E010", _alias, "Name an alias of STORAGES, e.g. 'default'."),
    "STORAGE_PREFIX": Rule("starkeep_sync.E011", _storage_prefix,
                           "Write a relative path such as 'starkeep' or 'sync/blobs' (or '' for the storage root)."),
    "NODE_ID": Rule("starkeep_sync.E012", _node_id,
                    "Write a short name such as 'cloud': 1 to 128 characters, no ':' and no control characters."),
    "DEFAULT_PAGE_LIMIT": Rule("starkeep_sync.E013", _positive_int, _POSITIVE.format(unit="items, e.g. 1000")),
    "MAX_PAGE_LIMIT": Rule("starkeep_sync.E014", _positive_int, _POSITIVE.format(unit="items, e.g. 10000")),
    "MAX_ITEMS_PER_REQUEST": Rule("starkeep_sync.E015", _positive_int, _POSITIVE.format(unit="items, e.g. 10000")),
    "MAX_REQUEST_BYTES": Rule("starkeep_sync.E016", _positive_int,
                              _POSITIVE.format(unit="bytes, e.g. 64 * 1024 * 1024")),
    "MAX_BLOB_BYTES": Rule("starkeep_sync.E017", _positive_int,
                           _POSITIVE.format(unit="bytes, e.g. 5 * 1024 ** 3")),
    "MAX_SIGNED_PUT_BYTES": Rule("starkeep_sync.E028", _positive_int,
                                 _POSITIVE.format(unit="bytes, e.g. 8 * 1024 * 1024")),
    "UNVERIFIED_BYTES_PER_ADDRESS": Rule("starkeep_sync.E029", _optional_positive_int,
                                         "Write None (no bound) or a positive number of bytes, e.g. 128 * 1024 ** 2."),
    "UNVERIFIED_BYTES_TOTAL": Rule("starkeep_sync.E030", _optional_positive_int,
                                   "Write None (no bound) or a positive number of bytes, e.g. 512 * 1024 ** 2."),
    "SIGNATURE_WINDOW_SECONDS": Rule("starkeep_sync.E018", _positive_int, _POSITIVE.format(unit="seconds, e.g. 300")),
    "REPLAY_CACHE_ALIAS": Rule("starkeep_sync.E019", _alias, "Name an alias of CACHES, e.g. 'default'."),
    "MAX_CLOCK_SKEW_MS": Rule("starkeep_sync.E020", _positive_int,
                              _POSITIVE.format(unit="milliseconds, e.g. 86_400_000 for a day")),
    "PRESIGN_EXPIRES_SECONDS": Rule("starkeep_sync.E021", _positive_int, _POSITIVE.format(unit="seconds, e.g. 900")),
    "AUTHENTICATION_CLASSES": Rule(
        "starkeep_sync.E022", _authentication_classes,
        "List import paths of DRF authentication classes, e.g. "
        "['starkeep_sync.api.authentication.DeviceTokenAuthentication'].",
    ),
    "UNKNOWN_APP_ROWS": Rule("starkeep_sync.E003", _unknown_app_rows,
                             "Use 'halt' (halt that node, PROTOCOL §6; the default) or 'reject' (refuse the request)."),
    "COUNT_PENDING": Rule("starkeep_sync.E023", _bool, "Write True or False."),
    "THROTTLE_RATES": Rule(
        "starkeep_sync.E024", _throttle_rates,
        f"Map the scopes {', '.join(THROTTLE_SCOPES)} to '<n>/<s|sec|m|min|h|hour|d|day>' (e.g. '1200/min') "
        "or to None to turn that scope off.",
    ),
    "QUOTA_BLOB_BYTES": Rule("starkeep_sync.E025", _optional_positive_int,
                             "Write None (unlimited) or a positive number of bytes, e.g. 10 * 1024 ** 3."),
    "QUOTA_RECORDS": Rule("starkeep_sync.E026", _optional_positive_int,
                          "Write None (unlimited) or a positive number of records and app rows, e.g. 100_000."),
    "LIVE_MAX_TIMEOUT": Rule("starkeep_sync.E032", _positive_int,
                             _POSITIVE.format(unit="seconds, e.g. 30; keep it below your proxy's read timeout")),
    "LIVE_MAX_WAITERS_PER_OWNER": Rule("starkeep_sync.E033", _optional_positive_int,
                                       "Write None (no cap) or a positive number of waiting requests, e.g. 32."),
    "LIVE_WAKEUP": Rule("starkeep_sync.E034", _wakeup,
                        "Use 'auto' (the default), 'postgresql', 'redis' or 'local'."),
}

#: Rules over several settings: ``(id, problem(all values), hint)``.
CROSS_RULES: list[tuple[str, Callable[[dict[str, Any]], str | None], str]] = [
    ("starkeep_sync.E027", _page_limit_order, "Make DEFAULT_PAGE_LIMIT at most MAX_PAGE_LIMIT."),
    ("starkeep_sync.E031", _unverified_bounds,
     "Make UNVERIFIED_BYTES_PER_ADDRESS and UNVERIFIED_BYTES_TOTAL at least MAX_REQUEST_BYTES and "
     "MAX_SIGNED_PUT_BYTES, or every signed request that large is refused."),
]


def check_values(values: dict[str, Any]) -> list[CheckMessage]:
    """Errors for the settings in ``values`` (all of them, defaults filled in)."""
    errors: list[CheckMessage] = []
    for name, rule in RULES.items():
        problem = rule.problem(values[name])
        if problem:
            errors.append(Error(f"STARKEEP_SYNC[{name!r}] {problem}.", hint=rule.hint, id=rule.id))
    for check_id, cross, hint in CROSS_RULES:
        problem = cross(values)
        if problem:
            errors.append(Error(f"STARKEEP_SYNC: {problem}.", hint=hint, id=check_id))
    return errors


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.core.files.storage import InvalidStorageError, storages

    from .conf import DEFAULTS, sync_settings

    try:
        user = sync_settings.user_settings
    except ImproperlyConfigured as err:
        return [Error(str(err), hint="Fix the STARKEEP_SYNC dict in your settings.", id="starkeep_sync.E000")]
    values = {**DEFAULTS, **user}
    errors = check_values(values)
    rates = user.get("THROTTLE_RATES")
    missing = [s for s in THROTTLE_SCOPES if s not in rates] if isinstance(rates, dict) else []
    if missing:
        # The dict replaces the default one whole: a scope left out is not throttled at all.
        errors.append(Warning(
            f"STARKEEP_SYNC['THROTTLE_RATES'] has no rate for {', '.join(map(repr, missing))}, "
            "so those routes are not throttled.",
            hint="Give every scope a rate (e.g. 'files': '12000/min'), or None to turn it off on purpose.",
            id="starkeep_sync.W002",
        ))
    if any(isinstance(e, Error) for e in errors):
        return errors  # the checks below read these values; fix them first

    alias = values["STORAGE_ALIAS"]
    try:
        storages[alias]
    except InvalidStorageError:
        errors.append(Error(
            f"STARKEEP_SYNC['STORAGE_ALIAS'] is {alias!r}, which is not in STORAGES.",
            hint="Add that alias to STORAGES or point STORAGE_ALIAS at an existing one.",
            id="starkeep_sync.E001",
        ))
    cache_alias = values["REPLAY_CACHE_ALIAS"]
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
    errors.extend(_live_wakeup_reachable(values["LIVE_WAKEUP"]))
    return errors


def _live_wakeup_reachable(mode: str) -> list[CheckMessage]:
    """An explicit ``LIVE_WAKEUP`` must have what it needs, or waiters would only ever answer at their timeout."""
    import importlib.util

    from .live import redis_url

    if mode == "postgresql" and importlib.util.find_spec("psycopg") is None:
        return [Error("STARKEEP_SYNC['LIVE_WAKEUP'] is 'postgresql', but psycopg 3 is not installed.",
                      hint='pip install "django-starkeep-sync[postgres]", or use LIVE_WAKEUP "auto".',
                      id="starkeep_sync.E035")]
    if mode == "redis" and redis_url() is None:
        return [Error("STARKEEP_SYNC['LIVE_WAKEUP'] is 'redis', but the REPLAY_CACHE_ALIAS cache is not a Redis "
                      "cache.", hint="Point REPLAY_CACHE_ALIAS at a django.core.cache.backends.redis.RedisCache "
                      "cache, or use LIVE_WAKEUP 'auto'.", id="starkeep_sync.E035")]
    return []

