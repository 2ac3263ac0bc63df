"""The engine's page prefetch over real HTTP, against the live server and the ORM."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from starkeep_sync import HLCClock, create_data_record, create_sync_engine
from starkeep_sync.adapters import OrmDatabaseAdapter
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.wire import SyncExchangeRequest
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import sync_until_done
from tests.factories import make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_metadata_catch_up_over_http_prefetches_and_asks_each_page_once(live_server: Any) -> None:
    owner = make_user("alice")
    clock = HLCClock("phone")
    server_db = OrmDatabaseAdapter(owner)
    server_db.merge([create_data_record(clock, type="text/plain", origin_app_id="notes", content_hash=f"{i:064x}",
                                        object_storage_key="", size_bytes=0) for i in range(25)])
    base = f"{live_server.url}/apps/starkeep-drive"
    token = make_token(owner)
    transport = create_http_sync_transport(base_url=base, auth=token)
    asked: list[tuple[str, SyncExchangeRequest]] = []
    fetch = transport.exchange_json

    def spy(request: SyncExchangeRequest) -> Any:
        asked.append((threading.current_thread().name, request))
        return fetch(request)

    transport.exchange_json = spy  # type: ignore[method-assign]
    device_db = MemoryDatabaseAdapter()
    device = create_sync_engine(local_database=device_db, local_storage=MemoryObjectStorage(),
                                remote_storage=HttpObjectStorage(base, auth=token), transport=transport,
                                clock=HLCClock("laptop"), page_limit=4)
    results = list(sync_until_done(device, max_rounds=20))

    assert sorted(r.id for r in device_db.all()) == sorted(r.id for r in server_db.all())
    assert [r.received for r in results] == [4, 4, 4, 4, 4, 4, 1]
    assert sum(name.startswith("starkeep-prefetch") for name, _ in asked) == len(results) - 1
    assert len({tuple(sorted(r.watermarks.items())) for _, r in asked}) == len(asked) == len(results)
    assert results[0].pending == 21 and [r.pending for r in results[1:]] == [17, 13, 9, 5, 1, 0]
