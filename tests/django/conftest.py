from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from rest_framework.test import APIClient

from tests.factories import make_token, make_user, register_app


@pytest.fixture(autouse=True)
def _isolated_storage_and_cache(settings: Any, tmp_path: Path) -> None:
    """Blobs in this test's own directory; no remembered signatures from other tests.

    Owner primary keys repeat across rolled-back tests, so a shared media root
    would let one test see another's blobs under the same owner prefix.
    """
    settings.STORAGES = {
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    for cache in caches.all():
        cache.clear()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def alice(db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(db: None) -> Any:
    return make_user("bob")


@pytest.fixture
def alice_token(alice: Any) -> str:
    return make_token(alice)


@pytest.fixture
def bob_token(bob: Any) -> str:
    return make_token(bob)


@pytest.fixture
def notes_app(db: None) -> Any:
    return register_app("notes", {"notes": ["id"]}, files=True)


@pytest.fixture
def todo_app(db: None) -> Any:
    return register_app("todo", {"items": ["id"]}, files=True)
