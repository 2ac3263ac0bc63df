"""The server's Python API (``starkeep_sync.server``): what Django code writes reaches devices.

A device here is the real engine on memory adapters; its rounds go through
the exchange view (DRF's test client) and it reads the server's blobs from the
owner's storage, as the in-process harness does.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from starkeep_sync import (
    DRIVE_APP_ID,
    FILE_RECORDS_TABLE,
    HLCClock,
    HLCTimestamp,
    SyncExchangeRequest,
    SyncExchangeResponse,
    create_data_record,
    create_sync_engine,
    deserialize_hlc,
    serialize_hlc,
    server,
)
from starkeep_sync.adapters import DjangoObjectStorage
from starkeep_sync.api.quotas import QuotaExceeded
from starkeep_sync.core import hlc as hlc_module
from starkeep_sync.core.engine import SyncEngine
from starkeep_sync.core.exceptions import SyncError
from starkeep_sync.core.records import AppSyncableRowEntry
from starkeep_sync.device.memory import (
    MemoryAppSource,
    MemoryDatabaseAdapter,
    MemoryObjectStorage,
    MemorySyncStateStore,
)
from starkeep_sync.models import Blob, NodeCoverage, ServerClock
from tests.factories import make_token, make_user, register_app
from tests.harness import NOTES_NAMESPACE

from .support import bearer, now_ms

NODE = "cloud"  # NODE_ID in tests/settings.py
HOUR_MS = 3_600_000


class ApiTransport:
    """The engine's transport over DRF's test client: every round runs the real exchange view."""

    def __init__(self, api: APIClient, token: str, channel: str) -> None:
        self.api = api
        self.token = token
        self.url = "/sync/exchange" if channel == DRIVE_APP_ID else f"/apps/{channel}/sync/exchange"
        self.last_wire: dict[str, Any] = {}

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        response = self.api.post(self.url, data=json.dumps(request.to_wire()), content_type="application/json",
                                 headers=bearer(self.token))
        assert response.status_code == 200, response.content[:500]
        self.last_wire = json.loads(response.content)
        return SyncExchangeResponse.from_wire(self.last_wire)


class Device:
    """One device of ``owner``: memory adapters, one engine per channel."""

    def __init__(self, owner: Any, node_id: str = "phone", *, ahead_ms: int = 0) -> None:
        self.owner = owner
        self.token = make_token(owner)
        self.api = APIClient()
        self.clock = HLCClock(node_id, wall_clock=lambda: now_ms() + ahead_ms)
        self.db = MemoryDatabaseAdapter()
        self.storage = MemoryObjectStorage()
        self.apps = MemoryAppSource([NOTES_NAMESPACE])
        self.engines: dict[str, SyncEngine] = {}
        self.transports: dict[str, ApiTransport] = {}

    def sync(self, channel: str = DRIVE_APP_ID) -> Any:
        if channel not in self.engines:
            drive = channel == DRIVE_APP_ID
            self.transports[channel] = ApiTransport(self.api, self.token, channel)
            self.engines[channel] = create_sync_engine(
                local_database=self.db, local_storage=self.storage, remote_storage=DjangoObjectStorage(self.owner),
                transport=self.transports[channel], clock=self.clock, sync_state=MemorySyncStateStore(),
                app_source=None if drive else self.apps, sync_shared_records=drive,
                app_id=None if drive else channel)
        result = self.engines[channel].exchange()
        assert not result.failed_pulls and not result.failed_pushes, result
        return result

    def write_record(self, rid: str, label: str) -> Any:
        record = create_data_record(self.clock, type="text/plain", origin_app_id="notes", content_hash="",
                                    object_storage_key="", size_bytes=0, label=label, id=rid)
        self.db.put(record)
        return record

    def write_row(self, op: str, row: dict[str, Any] | None, where: dict[str, Any] | None = None) -> None:
        self.apps.applier.apply(AppSyncableRowEntry(self.clock.now(), "notes", "notes", op, row, where))  # type: ignore[arg-type]

    def row(self, rid: str, table: str = "notes") -> dict[str, Any] | None:
        return next((r for r in self.apps.rows("notes", table) if r["id"] == rid), None)


@pytest.fixture
def owner(db: None) -> Any:
    return make_user("alice")


@pytest.fixture
def notes(db: None) -> Any:
    return register_app("notes", {"notes": ["id"]}, files=True)


# -- shared records -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_record_put_on_the_server_reaches_a_device_and_its_edits_follow(owner: Any) -> None:
    device = Device(owner)
    made = server.put_record(owner, type="text/plain", label="draft", origin_app_id="web")
    assert len(made.id) == 26 and made.updated_at.node_id == NODE and made.version == 1

    device.sync()
    assert device.db.get(made.id) == made

    edited = server.update_record(owner, made.id, label="final", parent_id="folder-1")
    assert (edited.label, edited.parent_id, edited.version) == ("final", "folder-1", 2)
    assert edited.updated_at > made.updated_at and edited.created_at == made.created_at
    device.sync()
    assert device.db.get(made.id) == edited == server.get_record(owner, made.id)


@pytest.mark.django_db
def test_a_server_edit_beats_the_version_it_edits_even_from_a_clock_ahead(owner: Any) -> None:
    device = Device(owner, ahead_ms=HOUR_MS)  # the device's clock runs an hour fast
    pushed = device.write_record("r1", "from phone")
    device.sync()

    edited = server.update_record(owner, "r1", label="from server")
    assert edited.updated_at > pushed.updated_at and edited.updated_at.node_id == NODE
    device.sync()
    assert device.db.get("r1").label == "from server"


@pytest.mark.django_db
def test_a_later_device_write_wins_over_a_server_edit(owner: Any) -> None:
    device = Device(owner, ahead_ms=HOUR_MS)
    device.write_record("r1", "v1")
    device.sync()
    server.update_record(owner, "r1", label="server")
    device.sync()
    later = device.write_record("r1", "phone again")  # stamped after it received the server's version
    device.sync()
    assert server.get_record(owner, "r1").label == "phone again"
    assert server.get_record(owner, "r1").updated_at == later.updated_at


@pytest.mark.django_db
def test_a_delete_makes_a_tombstone_that_reaches_the_device(owner: Any) -> None:
    device = Device(owner)
    made = server.put_record(owner, type="text/plain", record_id="r1", label="x")
    device.sync()

    tomb = server.delete_record(owner, "r1")
    assert tomb.deleted_at == tomb.updated_at and tomb.updated_at > made.updated_at and tomb.version == 2
    assert tomb.label == "x"  # a soft delete keeps the row, so the tombstone can travel
    device.sync()
    assert device.db.get("r1") == tomb
    assert server.records(owner) == [] and server.records(owner, include_deleted=True) == [tomb]
    # Deleting again changes nothing.
    assert server.delete_record(owner, "r1") == tomb
    assert server.get_record(owner, "r1") == tomb


@pytest.mark.django_db
def test_record_edits_refuse_what_is_missing_deleted_unknown_or_not_editable(owner: Any) -> None:
    server.put_record(owner, type="text/plain", record_id="r1")
    with pytest.raises(server.RecordNotFound, match="nope"):
        server.update_record(owner, "nope", label="x")
    with pytest.raises(server.RecordNotFound):
        server.delete_record(owner, "nope")
    with pytest.raises(TypeError, match="colour"):
        server.update_record(owner, "r1", colour="red")
    with pytest.raises(ValueError, match="content_hash"):
        server.update_record(owner, "r1", content_hash="0" * 64)
    with pytest.raises(ValueError, match="mimeType"):
        server.update_record(owner, "r1", mime_type=42)
    server.delete_record(owner, "r1")
    with pytest.raises(server.RecordNotFound):
        server.update_record(owner, "r1", label="back?")
    assert isinstance(server.RecordNotFound("x"), SyncError)
    # Nothing of the refused edits was written: the tombstone is version 2.
    assert server.get_record(owner, "r1").version == 2


# -- app rows --------------------------------------------------------------------------


@pytest.mark.django_db
def test_app_rows_written_on_the_server_reach_a_device_on_the_apps_channel(owner: Any, notes: Any) -> None:
    device = Device(owner)
    stored = server.put_row(owner, "notes", "notes", {"id": "n1", "body": "hello", "tags": ["a"]})
    assert stored["body"] == "hello" and stored["node_id"] == NODE and stored["deleted_at"] is None
    device.sync("notes")
    assert device.row("n1")["body"] == "hello"

    updated = server.update_row(owner, "notes", "notes", ["n1"], {"body": "edited"})
    assert updated["body"] == "edited" and updated["tags"] == ["a"] and updated["updated_at"] > stored["updated_at"]
    device.sync("notes")
    assert device.row("n1")["body"] == "edited"

    tomb = server.delete_row(owner, "notes", "notes", ["n1"])
    assert tomb["deleted_at"] == tomb["updated_at"] and tomb["body"] == "edited"
    device.sync("notes")
    assert device.row("n1")["deleted_at"] == tomb["updated_at"]
    assert server.delete_row(owner, "notes", "notes", ["n1"]) == tomb  # again: nothing changes
    assert server.rows(owner, "notes", "notes") == []
    assert server.rows(owner, "notes", "notes", include_deleted=True) == [tomb]
    assert server.get_row(owner, "notes", "notes", ["n1"]) == tomb


@pytest.mark.django_db
def test_row_edits_follow_lww_with_device_writes(owner: Any, notes: Any) -> None:
    device = Device(owner, ahead_ms=HOUR_MS)
    device.write_row("insert", {"id": "n1", "body": "phone"})
    device.sync("notes")
    server.update_row(owner, "notes", "notes", ["n1"], {"body": "server"})  # beats the hour-fast version
    device.sync("notes")
    assert device.row("n1")["body"] == "server"
    device.write_row("update", {"body": "phone later"}, {"id": "n1"})
    device.sync("notes")
    assert server.get_row(owner, "notes", "notes", ["n1"])["body"] == "phone later"


@pytest.mark.django_db
def test_file_rows_use_the_same_functions_keyed_by_record_id(owner: Any, notes: Any) -> None:
    data = b"attachment bytes"
    key = f"apps/notes/syncable/{hashlib.sha256(data).hexdigest()}"
    row = {"id": "f1", "object_storage_key": key, "content_hash": key.rsplit("/", 1)[1],
           "mime_type": "text/plain", "size_bytes": len(data), "original_filename": "a.txt",
           "origin_app_id": "notes", "created_at": None, "caption": "first"}
    with pytest.raises(server.BlobMissing):
        server.put_row(owner, "notes", FILE_RECORDS_TABLE, row)
    DjangoObjectStorage(owner).put(key, data, "text/plain")
    server.put_row(owner, "notes", FILE_RECORDS_TABLE, row)
    edited = server.update_row(owner, "notes", FILE_RECORDS_TABLE, ["f1"], {"caption": "second"})
    assert edited["caption"] == "second" and edited["object_storage_key"] == key

    device = Device(owner)
    device.sync("notes")
    got = device.row("f1", FILE_RECORDS_TABLE)
    assert got["caption"] == "second" and device.storage.get(key).data == data
    tomb = server.delete_row(owner, "notes", FILE_RECORDS_TABLE, ["f1"])
    device.sync("notes")
    assert device.row("f1", FILE_RECORDS_TABLE)["deleted_at"] == tomb["updated_at"]


@pytest.mark.django_db
def test_row_edits_refuse_bad_input_with_clear_errors(owner: Any, notes: Any) -> None:
    server.put_row(owner, "notes", "notes", {"id": "n1", "body": "x"})
    with pytest.raises(server.RowNotFound, match="n2"):
        server.update_row(owner, "notes", "notes", ["n2"], {"body": "y"})
    with pytest.raises(server.RowNotFound):
        server.delete_row(owner, "notes", "notes", ["n2"])
    with pytest.raises(TypeError, match="sequence"):
        server.update_row(owner, "notes", "notes", "n1", {"body": "y"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"primary key \['id'\]"):
        server.update_row(owner, "notes", "notes", ["n1", "extra"], {"body": "y"})
    with pytest.raises(SyncError, match="key column"):
        server.update_row(owner, "notes", "notes", ["n1"], {"id": "n9"})
    with pytest.raises(ValueError, match="JSON"):
        server.update_row(owner, "notes", "notes", ["n1"], {"body": {1, 2}})
    with pytest.raises(SyncError) as unknown_app:
        server.put_row(owner, "nope", "notes", {"id": "n1"})
    assert unknown_app.value.code == "unknown_app"
    with pytest.raises(SyncError) as unknown_table:
        server.put_row(owner, "notes", "nope", {"id": "n1"})
    assert unknown_table.value.code == "unknown_table"
    with pytest.raises(SyncError, match="primary-key column 'id' missing"):
        server.put_row(owner, "notes", "notes", {"body": "no key"})
    server.delete_row(owner, "notes", "notes", ["n1"])
    with pytest.raises(server.RowNotFound):
        server.update_row(owner, "notes", "notes", ["n1"], {"body": "back?"})
    assert server.get_row(owner, "notes", "notes", ["n1"])["body"] == "x"


# -- files, coverage, the clock ----------------------------------------------------------------


@pytest.mark.django_db
def test_put_file_stores_the_blob_first_and_the_device_pulls_both(owner: Any) -> None:
    data = b"\xff\xd8 a small jpeg" * 1000
    made = server.put_file(owner, io.BytesIO(data), type="image/jpeg", original_filename="cat.jpg", label="cat")
    digest = hashlib.sha256(data).hexdigest()
    assert made.object_storage_key == f"shared/image/{digest[:2]}/{digest}"
    assert (made.content_hash, made.size_bytes, made.mime_type) == (digest, len(data), "image/jpeg")
    thumb = server.put_file(owner, b"tiny", type="image/png", parent_id=made.id)
    assert thumb.parent_id == made.id

    device = Device(owner)
    device.sync()
    assert device.db.get(made.id) == made and device.db.get(thumb.id) == thumb
    assert device.storage.get(made.object_storage_key).data == data


@pytest.mark.django_db
def test_put_file_and_put_record_refuse_bad_types_missing_blobs_and_quota(owner: Any, settings: Any) -> None:
    with pytest.raises(ValueError, match="category"):
        server.put_file(owner, b"x", type="jpeg")
    with pytest.raises(SyncError, match="shared key"):
        server.put_file(owner, b"x", type="Image/JPEG")  # the category is part of the key: lowercase only
    with pytest.raises(server.BlobMissing):
        server.put_record(owner, type="image/jpeg", object_storage_key=f"shared/image/ab/{'ab' * 32}")
    with pytest.raises(SyncError, match="shared key"):
        server.put_record(owner, type="image/jpeg", object_storage_key="apps/notes/syncable/x")
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "QUOTA_BLOB_BYTES": 10}
    with pytest.raises(QuotaExceeded):
        server.put_file(owner, b"more than ten bytes", type="image/jpeg")
    assert server.records(owner, include_deleted=True) == [] and not Blob.objects.exists()
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "QUOTA_BLOB_BYTES": None, "QUOTA_RECORDS": 1}
    kept = server.put_record(owner, type="text/plain", record_id="r1")
    with pytest.raises(QuotaExceeded):
        server.put_record(owner, type="text/plain", record_id="r2")
    assert server.update_record(owner, "r1", label="edits still work").version == kept.version + 1


@pytest.mark.django_db
def test_coverage_includes_the_servers_node(owner: Any, notes: Any) -> None:
    made = server.put_record(owner, type="text/plain")
    row = server.put_row(owner, "notes", "notes", {"id": "n1"})
    coverage = dict(NodeCoverage.objects.filter(owner=owner).values_list("scope", "hlc"))
    assert coverage == {"records": serialize_hlc(made.updated_at), "notes/notes": row["updated_at"]}

    device = Device(owner)
    device.sync()
    assert device.transports[DRIVE_APP_ID].last_wire["responderWatermarks"][NODE] == {
        "wallTime": made.updated_at.wall_time, "counter": made.updated_at.counter, "nodeId": NODE}
    device.sync("notes")
    stamp = deserialize_hlc(row["updated_at"])
    assert device.transports["notes"].last_wire["responderWatermarks"][NODE]["counter"] == stamp.counter


@pytest.mark.django_db
def test_the_clock_is_persisted_and_never_goes_back_after_a_restart(owner: Any, monkeypatch: Any) -> None:
    first = server.put_record(owner, type="text/plain").updated_at
    assert ServerClock.objects.get(node_id=NODE).wall_time == first.wall_time
    # A restarted server whose system clock is a minute behind: the persisted state still wins.
    monkeypatch.setattr(hlc_module, "_system_ms", lambda: first.wall_time - 60_000)
    second = server.put_record(owner, type="text/plain").updated_at
    third = server.update_record(owner, server.records(owner)[-1].id, label="x").updated_at
    assert first < second < third
    assert (second.wall_time, second.counter) == (first.wall_time, first.counter + 1)
    saved = ServerClock.objects.get(node_id=NODE)
    assert (saved.wall_time, saved.counter) == (third.wall_time, third.counter)


@pytest.mark.services  # the PostgreSQL tier: row locks between concurrent workers
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_issue_the_same_hlc(owner: Any, monkeypatch: Any) -> None:
    # SQLite serializes writers by itself (one write lock per database), and the in-memory test
    # database's shared cache refuses concurrent connections a table lock instead of waiting.
    assert connection.vendor == "postgresql", (
        "this test needs PostgreSQL: run it with STARKEEP_TEST_DATABASE_URL (the README's second tier)")
    server.put_record(owner, type="text/plain", record_id="shared")
    # A frozen physical clock: every stamp's uniqueness now rests on the persisted counter alone.
    frozen = now_ms()
    monkeypatch.setattr(hlc_module, "_system_ms", lambda: frozen)
    stamps: list[HLCTimestamp] = []
    edits: list[HLCTimestamp] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(15):
                if i % 3 == 0:  # some writers edit the same record, the others make new ones
                    made = server.update_record(owner, "shared", label=f"{n}-{i}")
                    with lock:
                        edits.append(made.updated_at)
                else:
                    made = server.put_record(owner, type="text/plain", label=f"{n}-{i}")
                with lock:
                    stamps.append(made.updated_at)
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stamps) == 60 and len(set(stamps)) == 60
    saved = ServerClock.objects.get(node_id=NODE)
    assert (saved.wall_time, saved.counter) == max(stamps)[:2]
    shared = server.get_record(owner, "shared")
    assert shared.version == 1 + len(edits) == 21 and shared.updated_at == max(edits)  # no edit lost
