"""The HTTP fixture of the scenario suite: the cloud side is the Django server.

The requester is a memory-adapter device talking to the live server through
``create_http_sync_transport`` and ``HttpObjectStorage``; the cloud side's
database, storage and app rows are the ORM and storage adapters of one owner,
which the test writes into directly (as an app on the server would).
"""

from __future__ import annotations

from typing import IO, Any

from django.db import connection

from starkeep_sync.adapters import DjangoObjectStorage, OrmAppSource, OrmDatabaseAdapter
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage
from tests.factories import make_token, make_user, register_app
from tests.harness import NOTES_NAMESPACE, OTHER_NAMESPACE, FlakyStorage, ManualTime, Pair, Side


class ChannelRoutedStorage:
    """Sends each key to the files routes of the channel that owns it."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self._by_channel: dict[str, HttpObjectStorage] = {}

    def _for(self, key: str) -> HttpObjectStorage:
        parts = key.split("/")
        channel = parts[1] if parts[0] == "apps" and len(parts) > 1 else "starkeep-drive"
        if channel not in self._by_channel:
            self._by_channel[channel] = HttpObjectStorage(f"{self.base_url}/apps/{channel}", auth=self.token)
        return self._by_channel[channel]

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        self._for(key).put(key, data, content_type)

    def get(self, key: str) -> Any:
        return self._for(key).get(key)

    def open(self, key: str) -> Any:
        return self._for(key).open(key)

    def has(self, key: str) -> bool:
        return self._for(key).has(key)

    def delete(self, key: str) -> None:
        self._for(key).delete(key)


class OwnerStorage(DjangoObjectStorage):
    """The cloud's blob storage as the tests see it (adds ``keys``/``clear`` helpers)."""

    def keys(self) -> list[str]:
        from starkeep_sync.models import Blob

        return [k for k in Blob.objects.filter(owner_id=self.owner_id).values_list("key", flat=True)
                if self.has(k)]


def live_transfer_concurrency() -> int:
    """Blob transfers at once a device may run against the live server.

    On the in-memory SQLite test database, Django's live server hands every request thread the
    test's one connection, so requests served side by side would share one connection and its
    transaction state (Python 3.13's sqlite3 then fails with "bad parameter or other API misuse").
    There one transfer at a time; side-by-side transfers are tested in process and over HTTP on
    PostgreSQL (tier 2).
    """
    return 1 if connection.vendor == "sqlite" and connection.is_in_memory_db() else 4


def http_pair(live_server_url: str, username: str = "alice") -> Pair:
    for ns in (NOTES_NAMESPACE, OTHER_NAMESPACE):
        register_app(ns.app_id, {t.name: list(t.pk_columns) for t in ns.tables}, files=ns.files_enabled)
    owner = make_user(username)
    token = make_token(owner)
    t = ManualTime()
    namespaces = [NOTES_NAMESPACE, OTHER_NAMESPACE]
    local = Side("local", t, MemoryDatabaseAdapter(), MemoryObjectStorage(), MemoryAppSource(namespaces))
    cloud = Side("cloud", t, OrmDatabaseAdapter(owner), OwnerStorage(owner), OrmAppSource(owner))
    remote = FlakyStorage(ChannelRoutedStorage(live_server_url, token))

    def make_transport(channel: str) -> Any:
        app = "starkeep-drive" if channel == "drive" else channel
        return create_http_sync_transport(base_url=f"{live_server_url}/apps/{app}", auth=token)

    pair = Pair(local, cloud, make_transport, remote, transfer_concurrency=live_transfer_concurrency())
    pair.scale_divisor = 10  # type: ignore[attr-defined]  # see test_s6_pagination
    return pair
