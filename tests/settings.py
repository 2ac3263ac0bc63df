"""Django settings for the test suite.

STARKEEP_TEST_DATABASE_URL picks the database (default: SQLite in memory);
``postgres://postgres@127.0.0.1:5432/test`` runs the suite on PostgreSQL, and
an unreachable server fails the run (it never falls back or skips).
"""

from __future__ import annotations

import os
import tempfile

from example_project.settings import database_from_url

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "example_project.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "starkeep_sync",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

_db_url = os.environ.get("STARKEEP_TEST_DATABASE_URL", "")
DATABASES = {
    "default": database_from_url(_db_url)
    if _db_url
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Kept across requests: the live server's pooled threads reuse theirs (tests/conftest.py).
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["TEST"] = {"NAME": f"starkeep_test_{os.getpid()}"}

MEDIA_ROOT = tempfile.mkdtemp(prefix="starkeep-test-media-")
# Django's live server serves MEDIA_ROOT at MEDIA_URL ahead of the app; with the default ""
# every request path (e.g. /files/<key>) would first be looked up as a file there.
MEDIA_URL = "/test-media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": MEDIA_ROOT}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Rate limits are on by default; tests that are not about them turn them off.
STARKEEP_SYNC = {"NODE_ID": "cloud", "THROTTLE_RATES": {"exchange": None, "files": None, "health": None,
                                                    "changes": None}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
