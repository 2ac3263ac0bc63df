"""Model factories for the Django tests, in one place."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from starkeep_sync import FILE_RECORDS_TABLE
from starkeep_sync.models import AppNamespace, AppSecret, AppTable, DeviceToken


def make_user(username: str = "alice") -> Any:
    return get_user_model().objects.create_user(username=username, password="x")


def make_token(owner: Any, channels: list[str] | None = None) -> str:
    return DeviceToken.issue(owner, name="test device", channels=channels)[1]


def make_secret(owner: Any, app_id: str) -> AppSecret:
    return AppSecret.issue(owner, app_id)


def register_app(app_id: str, tables: dict[str, list[str]], files: bool = False) -> AppNamespace:
    ns, _ = AppNamespace.objects.get_or_create(app_id=app_id, defaults={"files_enabled": files})
    for name, pk in tables.items():
        AppTable.objects.get_or_create(namespace=ns, name=name, defaults={"pk_columns": pk})
    if files:
        AppTable.objects.get_or_create(namespace=ns, name=FILE_RECORDS_TABLE, defaults={"pk_columns": ["id"]})
    return ns
