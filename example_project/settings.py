"""Settings of the example server: SQLite and file-system blobs unless the environment says otherwise.

Environment:
  DATABASE_URL      e.g. postgres://postgres@127.0.0.1:5432/starkeep (default: SQLite file)
  REDIS_URL         e.g. redis://127.0.0.1:6379/0 (default: local-memory cache)
  STARKEEP_CACHE_KEY_PREFIX  prefix of this server's Redis cache keys (default: none); lets several
                    deployments, or a test run, share one Redis database and clean up only their own keys
  STARKEEP_MEDIA    where blobs go with file-system storage (default: ./media)
  DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS
  STARKEEP_THROTTLE        "off" disables every rate limit (exchange, files, health, changes), e.g. for benchmarks
  STARKEEP_MAX_PAGE_LIMIT  the largest page limit a request may name (STARKEEP_SYNC MAX_PAGE_LIMIT)
  STARKEEP_SERVER_INTERFACE  "asgi" (set by asgi.py): database connections are not kept across requests
  STARKEEP_LIVE_MAX_TIMEOUT, STARKEEP_LIVE_WAKEUP  the STARKEEP_SYNC settings of the same names
  STARKEEP_LIVE_MAX_WAITERS  STARKEEP_SYNC LIVE_MAX_WAITERS_PER_OWNER
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "starkeep_sync",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str) -> dict[str, object]:
    """A DATABASES entry from a postgres:// or sqlite:/// URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
            "USER": unquote(parsed.username or "postgres"),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "127.0.0.1",
            "PORT": str(parsed.port or 5432),
            "CONN_MAX_AGE": 60,
        }
    if parsed.scheme == "sqlite":
        # Kept open between requests like PostgreSQL's: a new SQLite connection re-reads the
        # schema and starts with a cold page cache, which cost every exchange about 2 ms.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parsed.path) or ":memory:",
                "CONN_MAX_AGE": 60}
    raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use postgres:// or sqlite:///)")


DATABASES = {
    "default": database_from_url(os.environ["DATABASE_URL"])
    if os.environ.get("DATABASE_URL")
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "example_project" / "db.sqlite3",
          "CONN_MAX_AGE": 60}
}

if os.environ.get("STARKEEP_SERVER_INTERFACE") == "asgi":
    # asgi.py sets this: under ASGI sync code runs in a new thread per request, so a connection kept
    # for CONN_MAX_AGE would be stranded with that thread; close each at the end of its request.
    DATABASES["default"]["CONN_MAX_AGE"] = 0

if os.environ.get("REDIS_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": os.environ["REDIS_URL"],
                          "KEY_PREFIX": os.environ.get("STARKEEP_CACHE_KEY_PREFIX", "")}}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.environ.get("STARKEEP_MEDIA", str(BASE_DIR / "media"))},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

STARKEEP_SYNC: dict[str, object] = {
    "NODE_ID": os.environ.get("STARKEEP_NODE_ID", "cloud"),
}
if os.environ.get("STARKEEP_THROTTLE", "").lower() == "off":
    STARKEEP_SYNC["THROTTLE_RATES"] = {"exchange": None, "files": None, "health": None, "changes": None}
if os.environ.get("STARKEEP_LIVE_MAX_TIMEOUT"):
    STARKEEP_SYNC["LIVE_MAX_TIMEOUT"] = int(os.environ["STARKEEP_LIVE_MAX_TIMEOUT"])
if os.environ.get("STARKEEP_LIVE_MAX_WAITERS"):
    STARKEEP_SYNC["LIVE_MAX_WAITERS_PER_OWNER"] = int(os.environ["STARKEEP_LIVE_MAX_WAITERS"])
if os.environ.get("STARKEEP_LIVE_WAKEUP"):
    STARKEEP_SYNC["LIVE_WAKEUP"] = os.environ["STARKEEP_LIVE_WAKEUP"]
if os.environ.get("STARKEEP_MAX_PAGE_LIMIT"):
    STARKEEP_SYNC["MAX_PAGE_LIMIT"] = int(os.environ["STARKEEP_MAX_PAGE_LIMIT"])

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

def _server_fault(record: logging.LogRecord) -> bool:
    """False for a 500 that only says the client went away mid-request (nothing to fix here)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, ConnectionError) or type(exc).__name__ == "UnreadablePostError")


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"server_faults": {"()": "django.utils.log.CallbackFilter", "callback": _server_fault}},
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "errors": {"class": "logging.StreamHandler", "filters": ["server_faults"]},
    },
    "loggers": {
        "starkeep_sync": {"handlers": ["console"], "level": os.environ.get("STARKEEP_LOG_LEVEL", "INFO")},
        # Django sends 500 tracebacks only to mail_admins when DEBUG is off; print them too.
        "django.request": {"handlers": ["errors"], "level": "ERROR", "propagate": False},
    },
}
