"""Structural problems inside exchange items are refused whole (400 naming the field), nothing applied."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from starkeep_sync.models import AppRow, FileRecord, SharedRecord
from tests.django.support import BASE_MS, assert_error, bearer, body, entry, exchange, exchange_ok, record, ser

pytestmark = pytest.mark.django_db

BAD_DRIVE_KEYS = [
    "shared/image/../etc/passwd",
    "/shared/image/ab/abc",
    "shared//ab/abc",
    "shared/image/ab/a\x00b",
    "shared/image/ab/" + "a" * 2000,
    "apps/notes/syncable/abc",  # another channel's namespace
    "shared/IMAGE/ab/abc",
]


@pytest.mark.parametrize("key", BAD_DRIVE_KEYS)
def test_record_with_bad_key_refuses_the_whole_request(api: APIClient, alice_token: str, key: str) -> None:
    good = record("ok", BASE_MS)
    bad = {**record("bad", BASE_MS + 1), "objectStorageKey": key}
    response = exchange(api, "/sync/exchange", body(records=[good, bad]), bearer(alice_token))
    # Over-long keys and NUL characters are already refused by the wire shape (invalid_request).
    code = "invalid_request" if len(key) > 1024 or "\x00" in key else "invalid_key"
    err = assert_error(response, 400, code, "records[1].objectStorageKey")
    assert "records[1].objectStorageKey" in err["message"]
    assert SharedRecord.objects.count() == 0


def file_row(rid: str, wall: int, key: str) -> dict[str, Any]:
    return entry("notes", "_starkeep_sync_records", rid, wall, object_storage_key=key, content_hash="h",
                 size_bytes=1)


@pytest.mark.parametrize("key, status, code", [
    ("apps/notes/syncable/../../x", 400, "invalid_key"),
    ("apps/todo/syncable/abc", 403, "forbidden_key"),
    ("shared/image/ab/abc", 400, "invalid_key"),
])
def test_file_row_with_bad_key_refuses_the_whole_request(api: APIClient, alice_token: str, notes_app: Any,
                                                         key: str, status: int, code: str) -> None:
    rows = [entry("notes", "notes", "n1", BASE_MS), file_row("f1", BASE_MS + 1, key)]
    response = exchange(api, "/apps/notes/sync/exchange", body(rows=rows), bearer(alice_token))
    assert_error(response, status, code, "appSyncableRows[1].row.object_storage_key")
    assert AppRow.objects.count() == 0 and FileRecord.objects.count() == 0


def test_row_missing_primary_key_refuses_the_whole_request(api: APIClient, alice_token: str, notes_app: Any) -> None:
    good = entry("notes", "notes", "n1", BASE_MS)
    bad = entry("notes", "notes", "n2", BASE_MS + 1)
    del bad["row"]["id"]
    response = exchange(api, "/apps/notes/sync/exchange", body(rows=[good, bad]), bearer(alice_token))
    err = assert_error(response, 400, "invalid_request", "appSyncableRows[1].row")
    assert "primary-key column 'id' missing" in err["message"]
    assert AppRow.objects.count() == 0


def test_insert_row_without_updated_at_refuses_the_whole_request(api: APIClient, alice_token: str,
                                                                 notes_app: Any) -> None:
    good = entry("notes", "notes", "n0", BASE_MS)
    bad = entry("notes", "notes", "n1", BASE_MS + 1)
    del bad["row"]["updated_at"]
    response = exchange(api, "/apps/notes/sync/exchange", body(rows=[good, bad]), bearer(alice_token))
    err = assert_error(response, 400, "invalid_request", "appSyncableRows[1].row.updated_at")
    assert "required" in err["message"]
    assert AppRow.objects.count() == 0


def test_update_patch_without_updated_at_takes_the_entry_timestamp(api: APIClient, alice_token: str,
                                                                   notes_app: Any) -> None:
    exchange_ok(exchange(api, "/apps/notes/sync/exchange", body(rows=[entry("notes", "notes", "n1", BASE_MS)]),
                         bearer(alice_token)))
    patch = entry("notes", "notes", "n1", BASE_MS + 5, op="update", body="patched")
    patch["row"] = {"body": "patched"}
    patch["where"] = {"id": "n1"}
    exchange_ok(exchange(api, "/apps/notes/sync/exchange", body(rows=[patch]), bearer(alice_token)))
    stored = AppRow.objects.get()
    assert stored.updated_at == ser(BASE_MS + 5) and stored.data["body"] == "patched"


def test_row_whose_updated_at_disagrees_refuses_the_whole_request(api: APIClient, alice_token: str,
                                                                  notes_app: Any) -> None:
    bad = entry("notes", "notes", "n1", BASE_MS)
    bad["row"]["updated_at"] = ser(BASE_MS + 5)
    response = exchange(api, "/apps/notes/sync/exchange", body(rows=[bad]), bearer(alice_token))
    err = assert_error(response, 400, "invalid_request", "appSyncableRows[0].row")
    assert "disagrees" in err["message"]
    assert AppRow.objects.count() == 0


def test_server_keeps_serving_after_bad_input(api: APIClient, alice_token: str) -> None:
    bad = {**record("bad", BASE_MS), "objectStorageKey": "../x"}
    assert exchange(api, "/sync/exchange", body(records=[bad]), bearer(alice_token)).status_code == 400
    ok = exchange(api, "/sync/exchange", body(records=[record("ok", BASE_MS)]), bearer(alice_token))
    assert ok.status_code == 200 and SharedRecord.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_error_handler_rolls_back_an_atomic_request() -> None:
    """Our handler runs DRF's first, so a handled error under ATOMIC_REQUESTS still rolls back."""
    from django.db import connection, transaction

    from starkeep_sync.api.exceptions import InvalidRequest, exception_handler

    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        with transaction.atomic():
            response = exception_handler(InvalidRequest("bad", field="x"), {})
            assert transaction.get_rollback() is True
            transaction.set_rollback(False)
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False
    assert response is not None and response.status_code == 400
    assert response.data == {"error": {"code": "invalid_request", "message": "bad", "field": "x"}}
