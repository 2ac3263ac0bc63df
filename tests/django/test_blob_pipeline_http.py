"""The blob pipeline over real HTTP against the Django live server (PROTOCOL §5c, §7).

A memory device syncs with the server through ``create_http_sync_transport``
and ``HttpObjectStorage``; the storage's requests session counts every request
it sends, so the tests see which blob requests (HEAD, PUT) reached the server.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import pytest
import requests

from starkeep_sync import (
    ITEM_REJECTED,
    ChangeEvent,
    DataRecord,
    HLCClock,
    create_data_record,
    create_sync_engine,
    shared_object_key,
)
from starkeep_sync.adapters import DjangoObjectStorage, OrmDatabaseAdapter
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.core.exceptions import ItemsRejected
from starkeep_sync.core.staged import RetryPolicy
from starkeep_sync.device.memory import MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import sync_until_done
from tests.factories import make_token, make_user
from tests.http_harness import live_transfer_concurrency

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 1000


class CountingSession(requests.Session):
    """A requests session that remembers ``(method, path)`` of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            self.sent.append((str(method).upper(), requests.utils.urlparse(str(url)).path))
        return super().request(method, url, *args, **kwargs)

    def blob_requests(self, method: str) -> list[str]:
        with self._lock:
            return [path for m, path in self.sent if m == method and "/files/" in path]


class Device:
    def __init__(self, live_server_url: str, token: str, **engine_kw: Any) -> None:
        base = f"{live_server_url}/apps/starkeep-drive"
        self.session = CountingSession()
        self.database = MemoryDatabaseAdapter()
        self.storage = MemoryObjectStorage()
        self.clock = HLCClock("phone")
        self.engine = create_sync_engine(
            local_database=self.database, local_storage=self.storage,
            remote_storage=HttpObjectStorage(base, auth=token, session=self.session),
            transport=create_http_sync_transport(base_url=base, auth=token), clock=self.clock,
            blob_retry=RetryPolicy(base=0.0, cap=0.0), transfer_concurrency=live_transfer_concurrency(),
            **engine_kw,
        )
        self.rejected_events: list[list[str]] = []
        self.engine.change_notifier.subscribe(self._on_event)

    def _on_event(self, event: ChangeEvent) -> None:
        if event.event_type == ITEM_REJECTED:
            self.rejected_events.append(list(event.record_ids))

    def write(self, rid: str, data: bytes, *, label: str | None = None) -> DataRecord:
        digest = hashlib.sha256(data).hexdigest()
        key = shared_object_key("image/jpeg", digest)
        self.storage.put(key, data, "image/jpeg")
        record = create_data_record(self.clock, type="image/jpeg", origin_app_id="tests", content_hash=digest,
                                    object_storage_key=key, size_bytes=len(data), mime_type="image/jpeg",
                                    label=label, id=rid)
        existing = self.database.get(rid)
        if existing is not None:
            from msgspec.structs import replace

            record = replace(record, created_at=existing.created_at, version=existing.version + 1)
        self.database.put(record)
        return record


@pytest.fixture
def owner(db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def small_blob_limit(settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "MAX_BLOB_BYTES": LIMIT}


def held_by_server(owner: Any, record: DataRecord) -> bool:
    got = OrmDatabaseAdapter(owner).get(record.id)
    storage = DjangoObjectStorage(owner)
    return got == record and storage.has(record.object_storage_key)


def test_a_blob_over_the_servers_limit_is_rejected_and_the_other_records_ship_in_the_same_rounds(
    live_server: Any, owner: Any, small_blob_limit: None
) -> None:
    device = Device(live_server.url, make_token(owner), page_limit=30)
    records = [device.write(f"r{i:03d}", os.urandom(LIMIT + 1000) if i == 40 else f"blob {i}".encode())
               for i in range(100)]
    bad = records[40]

    rounds: list[Any] = []
    with pytest.raises(ItemsRejected) as raised:
        sync_until_done(device.engine, strict=True, on_round=rounds.append)
    results = [r.result for r in rounds]
    assert [r.shipped for r in results] == [30, 29, 30, 10]  # what a run without the big blob takes
    assert all(held_by_server(owner, r) for r in records if r is not bad)
    assert OrmDatabaseAdapter(owner).get(bad.id) is None
    assert not DjangoObjectStorage(owner).has(bad.object_storage_key)
    (rej,) = raised.value.rejected
    assert (rej.item_id, rej.hlc, rej.key) == (bad.id, bad.updated_at, bad.object_storage_key)
    assert f"exceeds the limit of {LIMIT} bytes" in rej.reason and "413" in rej.reason
    assert [[x.item_id for x in r.rejected] for r in results] == [[], [bad.id], [], []]
    assert all(not r.failed_pushes for r in results)
    assert device.rejected_events == [[bad.id]]
    puts_of_bad = [p for p in device.session.blob_requests("PUT") if p.endswith(bad.object_storage_key)]
    assert len(puts_of_bad) == 1

    # A later record of the same node ships; the rejected one is neither retried nor reported again.
    later = device.write("r100", b"written after the rejection")
    results = sync_until_done(device.engine, strict=True)
    assert sum(r.shipped for r in results) == 1 and held_by_server(owner, later)
    assert all(not r.rejected for r in results) and device.rejected_events == [[bad.id]]
    assert len([p for p in device.session.blob_requests("PUT") if p.endswith(bad.object_storage_key)]) == 1

    # Written anew within the limit: it ships and the rejection is cleared.
    fixed = device.write(bad.id, os.urandom(LIMIT // 2))
    sync_until_done(device.engine, strict=True)
    assert held_by_server(owner, fixed)
    assert device.engine.blob_state.rejected_items() == []


def test_label_edits_of_a_record_with_a_blob_do_not_upload_it_again(live_server: Any, owner: Any) -> None:
    device = Device(live_server.url, make_token(owner))
    data = os.urandom(300 * 1024)  # large enough that the client would HEAD before uploading
    first = device.write("photo", data, label="v0")
    r = device.engine.exchange()
    assert (r.shipped, r.pushed_bytes) == (1, len(data))
    assert len(device.session.blob_requests("PUT")) == 1
    assert held_by_server(owner, first)

    device.session.sent.clear()
    for n in range(1, 6):
        edited = device.write("photo", data, label=f"v{n}")
        r = device.engine.exchange()
        assert (r.shipped, r.pushed_bytes) == (1, 0), n
        assert OrmDatabaseAdapter(owner).get("photo") == edited
    # The server received no blob request at all for these edits: not a PUT, not even a HEAD.
    assert device.session.blob_requests("PUT") == []
    assert device.session.blob_requests("HEAD") == []


def test_a_blob_over_the_owners_quota_is_rejected_and_the_records_around_it_ship(
    live_server: Any, owner: Any, settings: Any
) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "QUOTA_BLOB_BYTES": 4000}
    device = Device(live_server.url, make_token(owner))
    before = device.write("before", os.urandom(1000))
    over = device.write("over", os.urandom(5000))
    after = device.write("after", os.urandom(1000))
    r = device.engine.exchange()
    assert r.shipped == 2 and r.failed_pushes == []
    assert [x.item_id for x in r.rejected] == ["over"] and "507" in r.rejected[0].reason
    assert held_by_server(owner, before) and held_by_server(owner, after)
    assert OrmDatabaseAdapter(owner).get("over") is None
    assert device.rejected_events == [["over"]]
    again = device.engine.exchange()
    assert (again.shipped, again.rejected, again.failed_pushes) == (0, [], [])
    assert len([p for p in device.session.blob_requests("PUT") if p.endswith(over.object_storage_key)]) == 1
