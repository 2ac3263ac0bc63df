"""Django signals (``starkeep_sync.signals``): sent after commit, listing exactly what changed state."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import connection, transaction
from django.dispatch import Signal
from rest_framework.test import APIClient

from starkeep_sync import FILE_RECORDS_TABLE, server
from starkeep_sync.adapters import DjangoObjectStorage
from starkeep_sync.api.authentication import Principal
from starkeep_sync.core.responder import SyncResponder
from starkeep_sync.models import AppRow, Blob, FileRecord, SharedRecord
from starkeep_sync.signals import blob_stored, records_applied, rows_applied
from tests.factories import make_secret

from .support import (
    BASE_MS,
    app_key,
    bearer,
    body,
    drive_key,
    entry,
    exchange,
    exchange_ok,
    put_blob,
    record,
    signed_headers,
)

DRIVE = "/sync/exchange"
NOTES = "/apps/notes/sync/exchange"


class Heard:
    """Every call of one signal: ``(sender, kwargs)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal")
        self.calls.append((sender, kwargs))

    @property
    def only(self) -> dict[str, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0][1]


def _listen(signal: Signal) -> Iterator[Heard]:
    heard = Heard()
    signal.connect(heard, weak=False)
    try:
        yield heard
    finally:
        signal.disconnect(heard)


@pytest.fixture
def on_records() -> Iterator[Heard]:
    yield from _listen(records_applied)


@pytest.fixture
def on_rows() -> Iterator[Heard]:
    yield from _listen(rows_applied)


@pytest.fixture
def on_blobs() -> Iterator[Heard]:
    yield from _listen(blob_stored)


Capture = Callable[..., Any]


# -- exchanges ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_exchange_announces_after_commit_only_the_records_it_stored(
        api: APIClient, alice: Any, alice_token: str, on_records: Heard,
        django_capture_on_commit_callbacks: Capture) -> None:
    exchange_ok(exchange(api, DRIVE, body(records=[record("r0", BASE_MS + 10, "nodeB")]), bearer(alice_token)))
    on_records.calls.clear()

    pushed = body(records=[record("r1", BASE_MS + 1), record("r2", BASE_MS + 2),
                           record("r0", BASE_MS + 5, "nodeB", label="older: loses")])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        exchange_ok(exchange(api, DRIVE, pushed, bearer(alice_token)))
    assert on_records.calls == []  # nothing is sent before the transaction commits
    for callback in callbacks:
        callback()
    sender, kwargs = on_records.calls[0]
    assert len(on_records.calls) == 1 and sender is SharedRecord
    assert kwargs["record_ids"] == ["r1", "r2"] and kwargs["node_ids"] == ["nodeA"]
    assert kwargs["owner"] == alice and kwargs["channel"] == "starkeep-drive" and kwargs["source"] == "exchange"
    assert isinstance(kwargs["principal"], Principal) and kwargs["principal"].scheme == "token"
    assert kwargs["credential"] == alice_token[:10]  # the token's hint, never the token

    on_records.calls.clear()
    with django_capture_on_commit_callbacks(execute=True):
        exchange_ok(exchange(api, DRIVE, pushed, bearer(alice_token)))  # a replay changes nothing
    assert on_records.calls == []


@pytest.mark.django_db
def test_an_exchange_on_an_app_channel_announces_the_rows_it_wrote(
        api: APIClient, alice: Any, notes_app: Any, on_rows: Heard, on_records: Heard,
        django_capture_on_commit_callbacks: Capture) -> None:
    secret = make_secret(alice, "notes")
    first = body(rows=[entry("notes", "notes", "n1", BASE_MS + 10, "nodeB", body="newer")])
    with django_capture_on_commit_callbacks(execute=True):
        exchange_ok(exchange(api, NOTES, first, signed_headers(secret.secret, "notes", "POST", DRIVE, first)))
    assert on_rows.only["rows"] == [("notes", ("n1",))]
    on_rows.calls.clear()

    payload = body(rows=[
        entry("notes", "notes", "n2", BASE_MS + 1, body="two"),
        entry("notes", "notes", "n1", BASE_MS + 2, body="older: loses"),
        entry("notes", FILE_RECORDS_TABLE, "f1", BASE_MS + 3, object_storage_key="", content_hash="",
              mime_type=None, size_bytes=0, original_filename=None, origin_app_id="notes", created_at=None),
    ])
    with django_capture_on_commit_callbacks(execute=True):
        exchange_ok(exchange(api, NOTES, payload, signed_headers(secret.secret, "notes", "POST", DRIVE, payload)))
    sender, kwargs = on_rows.calls[0]
    assert len(on_rows.calls) == 1 and sender is AppRow
    assert kwargs["rows"] == [("notes", ("n2",)), (FILE_RECORDS_TABLE, ("f1",))]
    assert (kwargs["owner"], kwargs["channel"], kwargs["node_ids"]) == (alice, "notes", ["nodeA"])
    assert kwargs["credential"] == secret.key_id and kwargs["principal"].scheme == "signature"
    assert on_records.calls == []


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_does_not_break_the_exchange(
        api: APIClient, alice: Any, alice_token: str, on_records: Heard, caplog: Any) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("thumbnailer down")

    records_applied.connect(broken, weak=False)
    try:
        exchange_ok(exchange(api, DRIVE, body(records=[record("r1", BASE_MS)]), bearer(alice_token)))
    finally:
        records_applied.disconnect(broken)
    assert SharedRecord.objects.filter(owner=alice, record_id="r1").exists()
    assert on_records.only["record_ids"] == ["r1"]  # the other receivers still ran
    assert "thumbnailer down" in caplog.text  # and the failure was logged


@pytest.mark.django_db(transaction=True)
def test_an_exchange_whose_answer_fails_announces_only_what_was_committed(
        api: APIClient, alice: Any, alice_token: str, on_records: Heard, monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the answer could not be read")

    monkeypatch.setattr(SyncResponder, "_answer", broken)
    api.raise_request_exception = False
    response = exchange(api, DRIVE, body(records=[record("r1", BASE_MS)]), bearer(alice_token))
    assert response.status_code == 500
    # SQLite: the request was one transaction, rolled back (nothing stored, nothing said).
    # PostgreSQL: the records committed before the answer was read, and are announced.
    stored = list(SharedRecord.objects.values_list("record_id", flat=True))
    assert stored == (["r1"] if connection.vendor == "postgresql" else [])
    assert [c[1]["record_ids"] for c in on_records.calls] == ([stored] if stored else [])


# -- blobs ---------------------------------------------------------------------------------


DATA = b"the bytes of a photo"


@pytest.mark.django_db
def test_an_upload_announces_its_blob_once(api: APIClient, alice: Any, alice_token: str, on_blobs: Heard,
                                           django_capture_on_commit_callbacks: Capture) -> None:
    key = drive_key(DATA)
    with django_capture_on_commit_callbacks(execute=True):
        assert put_blob(api, f"/files/{key}", DATA, bearer(alice_token), "image/jpeg").status_code == 201
    sender, kwargs = on_blobs.calls[0]
    assert sender is Blob and kwargs["principal"].owner == alice
    assert {k: v for k, v in kwargs.items() if k != "principal"} == {
        "owner": alice, "channel": "starkeep-drive", "key": key, "size": len(DATA), "content_type": "image/jpeg",
        "source": "upload", "credential": alice_token[:10]}
    on_blobs.calls.clear()
    with django_capture_on_commit_callbacks(execute=True):
        refused = put_blob(api, f"/files/{key}", DATA, {**bearer(alice_token), "If-None-Match": "*"})
    assert refused.status_code == 412 and on_blobs.calls == []  # nothing stored, nothing said


@pytest.mark.django_db
def test_a_presigned_upload_is_announced_by_its_put_and_not_again_by_confirm(
        api: APIClient, alice: Any, alice_token: str, notes_app: Any, on_blobs: Heard,
        django_capture_on_commit_callbacks: Capture) -> None:
    key = app_key("notes", DATA)
    auth = bearer(alice_token)
    url = json.loads(api.post("/apps/notes/files/presign", data=json.dumps({"key": key, "contentType": "text/plain"}),
                              content_type="application/json", headers=auth).content)["url"]
    with django_capture_on_commit_callbacks(execute=True):
        put = APIClient().put(urlsplit(url).path, data=DATA, content_type="application/octet-stream")
        assert put.status_code == 201
        confirm = api.post("/apps/notes/files/confirm", data=json.dumps({"key": key}),
                           content_type="application/json", headers=auth)
        assert confirm.status_code == 200
    kwargs = on_blobs.only
    assert (kwargs["owner"], kwargs["channel"], kwargs["key"], kwargs["size"]) == (alice, "notes", key, len(DATA))
    assert (kwargs["source"], kwargs["principal"], kwargs["credential"], kwargs["content_type"]) == (
        "presigned", None, None, "text/plain")


@pytest.mark.django_db
def test_confirm_announces_bytes_the_server_did_not_store_itself(
        api: APIClient, alice: Any, alice_token: str, on_blobs: Heard,
        django_capture_on_commit_callbacks: Capture) -> None:
    key = drive_key(DATA)
    storage = DjangoObjectStorage(alice)
    # As a PUT straight to S3 leaves it: the bytes in the bucket, no row of ours.
    storage.storage.save(storage.name_for(key), io.BytesIO(DATA))
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(2):  # a second confirm learns nothing new
            assert api.post("/files/confirm", data=json.dumps({"key": key}), content_type="application/json",
                            headers=bearer(alice_token)).status_code == 200
    kwargs = on_blobs.only
    assert (kwargs["key"], kwargs["size"], kwargs["source"], kwargs["credential"]) == (
        key, len(DATA), "confirm", alice_token[:10])


# -- the server's Python API ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_server_writes_are_announced_after_commit_and_not_at_all_when_rolled_back(
        alice: Any, notes_app: Any, on_records: Heard, on_rows: Heard) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        server.put_record(alice, type="text/plain", record_id="gone")
        server.put_row(alice, "notes", "notes", {"id": "gone"})
        assert on_records.calls == [] and on_rows.calls == []  # not inside the transaction
        raise RuntimeError("rolled back")
    assert on_records.calls == [] and on_rows.calls == []
    assert server.get_record(alice, "gone") is None

    with transaction.atomic():
        made = server.put_record(alice, type="text/plain", label="kept")
        assert on_records.calls == []
    sender, kwargs = on_records.calls[0]
    assert sender is SharedRecord and kwargs == {
        "owner": alice, "channel": "starkeep-drive", "record_ids": [made.id], "node_ids": ["cloud"],
        "source": "server", "principal": None, "credential": None}

    server.put_row(alice, "notes", FILE_RECORDS_TABLE, {"id": "f1", "object_storage_key": ""})
    assert len(on_rows.calls) == 1
    sender, kwargs = on_rows.calls[0]
    assert sender is FileRecord and kwargs["rows"] == [(FILE_RECORDS_TABLE, ("f1",))]
    assert (kwargs["channel"], kwargs["node_ids"], kwargs["source"]) == ("notes", ["cloud"], "server")


@pytest.mark.django_db(transaction=True)
def test_put_file_announces_the_blob_then_the_record(alice: Any, on_blobs: Heard, on_records: Heard) -> None:
    order: list[str] = []
    blob_stored.connect(lambda sender, **kw: order.append("blob"), weak=False, dispatch_uid="order-blob")
    records_applied.connect(lambda sender, **kw: order.append("record"), weak=False, dispatch_uid="order-rec")
    try:
        made = server.put_file(alice, DATA, type="image/jpeg", original_filename="p.jpg")
    finally:
        blob_stored.disconnect(dispatch_uid="order-blob")
        records_applied.disconnect(dispatch_uid="order-rec")
    assert order == ["blob", "record"]
    assert on_blobs.only["key"] == made.object_storage_key and on_blobs.only["size"] == len(DATA)
    assert on_records.only["record_ids"] == [made.id]
