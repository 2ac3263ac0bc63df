"""Inputs that schemathesis (tests/test_fuzz.py) or probes around its findings turned into 5xx.

Each must now be a 4xx with the protocol's JSON error body (or, for one bad app row,
the per-item refusal of PROTOCOL §6), on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.django.support import (
    BASE_MS,
    assert_error,
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
from tests.factories import make_secret

pytestmark = pytest.mark.django_db

APP_EXCHANGE = "/apps/notes/sync/exchange"


# -- blob keys on a file system -------------------------------------------------------------------


def test_a_key_under_another_key_is_a_conflict_not_a_500(api: APIClient, alice_token: str, notes_app: Any) -> None:
    # A file system cannot hold both ".../0" as a blob and ".../0/0" (object stores can).
    assert put_blob(api, "/apps/notes/files/apps/notes/syncable/0", b"a", bearer(alice_token)).status_code == 201
    r = put_blob(api, "/apps/notes/files/apps/notes/syncable/0/0", b"b", bearer(alice_token))
    assert_error(r, 409, "key_conflict")


def test_a_key_that_is_the_prefix_of_others(api: APIClient, alice_token: str, notes_app: Any) -> None:
    assert put_blob(api, "/apps/notes/files/apps/notes/syncable/d/x", b"a", bearer(alice_token)).status_code == 201
    assert_error(put_blob(api, "/apps/notes/files/apps/notes/syncable/d", b"b", bearer(alice_token)),
                 409, "key_conflict")
    # The prefix is no blob: absent to HEAD/GET, and deleting it leaves the blob under it alone.
    assert api.head("/apps/notes/files/apps/notes/syncable/d", headers=bearer(alice_token)).status_code == 404
    assert_error(api.get("/apps/notes/files/apps/notes/syncable/d", headers=bearer(alice_token)), 404)
    assert api.delete("/apps/notes/files/apps/notes/syncable/d", headers=bearer(alice_token)).status_code == 204
    assert api.get("/apps/notes/files/apps/notes/syncable/d/x", headers=bearer(alice_token)).status_code == 200


def test_a_key_segment_too_long_for_a_file_system(api: APIClient, alice_token: str, notes_app: Any) -> None:
    key = "apps/notes/syncable/" + "é" * 200  # 200 characters, 400 bytes
    assert_error(put_blob(api, f"/apps/notes/files/{key}", b"a", bearer(alice_token)), 400, "invalid_key")


def test_a_key_ending_in_presign_is_reserved(api: APIClient, alice_token: str, notes_app: Any) -> None:
    """``files/<key>/presign`` is the presign route: PUT and DELETE there are 405, and no key may end so."""
    url = "/apps/notes/files/apps/notes/syncable/x/presign"
    for method in ("put", "delete"):
        response = getattr(api, method)(url, headers=bearer(alice_token))
        assert_error(response, 405)
        allowed = set(response["Allow"].replace(" ", "").split(","))
        assert {"GET", "HEAD"} <= allowed and not allowed & {"PUT", "DELETE"}, allowed
    # GET there stays the presign route (of the key without "/presign").
    assert_error(api.get(url, headers=bearer(alice_token)), 404, "not_found")
    # Such a key is refused wherever it appears, e.g. in a confirm.
    assert_error(api.post("/apps/notes/files/confirm", data={"key": "apps/notes/syncable/x/presign"},
                          format="json", headers=bearer(alice_token)), 400, "invalid_key")


# -- routes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "put", "delete", "head", "post", "options"])
@pytest.mark.parametrize("url", [
    "/apps/" + "a" * 256 + "/sync/exchange",  # app id longer than any registered one can be
    "/apps/no%20spaces/files/x",
    "/apps//sync/exchange",
    "/apps/notes/nothing-here",
    "/files/",
    "/files-direct/",
])
def test_unmatched_paths_under_our_prefixes_are_json_404(api: APIClient, alice_token: str, url: str,
                                                          method: str) -> None:
    r = getattr(api, method)(url, headers=bearer(alice_token))
    assert r.status_code == 404
    if method != "head":
        assert_error(r, 404, "not_found")


# -- exchange bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "culprit"), [
    ("label", "a\x00b", "records[0].label"),
    ("id", "r\x00", "records[0].id"),
    ("type", "image/\x00", "records[0].type"),
    ("version", 2**31, "records[0].version"),
    ("sizeBytes", 2**63, "records[0].sizeBytes"),
])
def test_record_values_no_database_can_hold(api: APIClient, alice_token: str, field: str, value: Any,
                                            culprit: str) -> None:
    r = record("r1", BASE_MS)
    r[field] = value
    assert_error(exchange(api, "/sync/exchange", body(records=[r]), bearer(alice_token)), 400, field=culprit)


@pytest.mark.parametrize(("mutate", "culprit"), [
    (lambda e: e["row"].update(body="a\x00b"), "appSyncableRows[0].row"),
    (lambda e: e["row"].update({"k\x00": 1}), "appSyncableRows[0].row"),
    (lambda e: e.update(where={"id": "n1", "x": ["\x00"]}, op="update"), "appSyncableRows[0].where"),
])
def test_app_rows_with_nul(api: APIClient, alice_token: str, notes_app: Any, mutate: Any, culprit: str) -> None:
    e = entry("notes", "notes", "n1", BASE_MS, body="x")
    mutate(e)
    assert_error(exchange(api, APP_EXCHANGE, body(rows=[e]), bearer(alice_token)), 400, field=culprit)


ROW = ('{"timestamp":{"wallTime":%d,"counter":0,"nodeId":"a"},"appId":"notes","table":"notes","op":"insert",'
       '"row":{"id":"n1","body":%s},"where":null}')


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "[" * 5000 + "]" * 5000,
                                   "[" * 70 + "]" * 70])
def test_json_no_column_takes(api: APIClient, alice_token: str, notes_app: Any, value: str) -> None:
    payload = '{"watermarks":{},"appSyncableRows":[%s]}' % (ROW % (BASE_MS, value))
    assert_error(exchange(api, APP_EXCHANGE, payload.encode(), bearer(alice_token)), 400)


def test_deeply_nested_body(api: APIClient, alice_token: str) -> None:
    assert_error(exchange(api, "/sync/exchange", b"[" * 100_000 + b"]" * 100_000, bearer(alice_token)), 400)


@pytest.mark.parametrize("table", ["notes", "_starkeep_sync_records"])
def test_app_row_key_too_long_is_400_naming_the_row(api: APIClient, alice_token: str, notes_app: Any,
                                                     table: str) -> None:
    # Row keys over 1024 characters (record ids over 256) fit no column: refused whole, by name, not dropped.
    e = entry("notes", table, "k" * 2000, BASE_MS)
    assert_error(exchange(api, APP_EXCHANGE, body(rows=[e]), bearer(alice_token)), 400, field="appSyncableRows[0].row")


def test_app_row_value_too_big_for_its_column_halts_its_node_not_a_500(api: APIClient, alice_token: str,
                                                                       notes_app: Any) -> None:
    # A 64-bit overflow shows only when the database takes the row: that node halts for the round.
    big = entry("notes", "_starkeep_sync_records", "r2", BASE_MS, node="nodeB", size_bytes=2**70)
    ok = entry("notes", "notes", "n1", BASE_MS)
    data = exchange_ok(exchange(api, APP_EXCHANGE, body(rows=[ok, big]), bearer(alice_token)))
    assert "nodeB" not in data["responderWatermarks"] and "nodeA" in data["responderWatermarks"]


# -- blob content types and signature headers ---------------------------------------------------------


@pytest.mark.parametrize("content_type", ["a/" + "b" * 300, "text/plain\x00x"])
def test_content_types_no_column_takes(api: APIClient, alice_token: str, content_type: str) -> None:
    key = drive_key(b"abc")
    assert_error(put_blob(api, f"/files/{key}", b"abc", bearer(alice_token), content_type=content_type),
                 400, field="Content-Type")
    r = api.post("/files/presign", data=json.dumps({"key": key, "contentType": content_type}),
                 content_type="application/json", headers=bearer(alice_token))
    assert_error(r, 400, field="contentType")


def test_presign_content_type_must_be_a_string(api: APIClient, alice_token: str) -> None:
    r = api.post("/files/presign", data=json.dumps({"key": drive_key(b"abc"), "contentType": 5}),
                 content_type="application/json", headers=bearer(alice_token))
    assert_error(r, 400, field="contentType")


def test_a_key_id_header_no_secret_can_have(api: APIClient, alice: Any, notes_app: Any) -> None:
    secret = make_secret(alice, "notes")
    payload = body()
    headers = signed_headers(secret.secret, "notes", "POST", "/sync/exchange", payload, key_id="k\x00")
    assert_error(exchange(api, APP_EXCHANGE, payload, headers), 401)
