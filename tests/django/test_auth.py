"""Authentication and channel permissions (PROTOCOL §8).

Signatures are computed here with ``hmac``/``hashlib`` from the protocol text,
never with our own signer.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from starkeep_sync.models import AppRow, AppSecret, Blob, DeviceToken, SharedRecord
from tests.factories import make_secret, make_token

from .support import (
    BASE_MS,
    DRIVE_EXCHANGE_URLS,
    app_key,
    assert_error,
    bearer,
    body,
    drive_key,
    entry,
    exchange,
    exchange_ok,
    now_ms,
    put_blob,
    record,
    signature,
    signed_headers,
)

pytestmark = pytest.mark.django_db

DATA = b"signed blob bytes"
NOTES_EXCHANGE = "/apps/notes/sync/exchange"
ROW = entry("notes", "notes", "n1", BASE_MS, "nodeA", body="hi")


def _protected_routes() -> list[Any]:
    key, akey = drive_key(DATA), app_key("notes", DATA)
    routes = [
        ("POST", "/sync/exchange"),
        ("POST", "/apps/starkeep-drive/sync/exchange"),
        ("POST", NOTES_EXCHANGE),
        ("POST", "/files/presign"),
        ("POST", "/files/confirm"),
        ("POST", "/apps/notes/files/presign"),
        ("POST", "/apps/notes/files/confirm"),
        ("GET", f"/files/{key}/presign"),
        ("GET", f"/apps/notes/files/{akey}/presign"),
    ]
    for method in ("HEAD", "GET", "PUT", "DELETE"):
        routes += [(method, f"/files/{key}"), (method, f"/apps/starkeep-drive/files/{key}"),
                   (method, f"/apps/notes/files/{akey}")]
    return [pytest.param(m, p, id=f"{m} {p[:40]}") for m, p in routes]


def _call(client: APIClient, method: str, path: str, headers: dict[str, str], payload: bytes = b"") -> Any:
    if method in ("POST", "PUT"):
        ctype = "application/json" if method == "POST" else "application/octet-stream"
        return client.generic(method, path, payload or b"{}", content_type=ctype, headers=headers)
    return client.generic(method, path, headers=headers)


def _assert_401(response: Any, method: str) -> None:
    if method == "HEAD":
        assert response.status_code == 401
    else:
        assert_error(response, 401)
    assert response.has_header("WWW-Authenticate")


# -- no credentials, bad and revoked tokens ----------------------------------------------------


@pytest.mark.parametrize(("method", "path"), _protected_routes())
def test_no_credentials_is_401_with_www_authenticate(
    api: APIClient, notes_app: Any, method: str, path: str
) -> None:
    response = _call(api, method, path, {})
    _assert_401(response, method)
    if method != "HEAD":
        assert response.json()["error"]["code"] == "not_authenticated"
    assert SharedRecord.objects.count() == 0 and Blob.objects.count() == 0


@pytest.mark.parametrize(("method", "path"), _protected_routes())
def test_bad_token_is_401(api: APIClient, alice_token: str, notes_app: Any, method: str, path: str) -> None:
    _assert_401(_call(api, method, path, bearer(alice_token + "x")), method)


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer skt_nope", "Bearer \u00e9t\u00e9"],
)
def test_malformed_bearer_headers_are_401(api: APIClient, alice_token: str, header: str) -> None:
    response = exchange(api, "/sync/exchange", body(), {"Authorization": header})
    assert_error(response, 401)
    assert response.has_header("WWW-Authenticate")


def test_other_authorization_schemes_are_not_credentials(api: APIClient) -> None:
    response = exchange(api, "/sync/exchange", body(), {"Authorization": "Basic YWxpY2U6eA=="})
    assert_error(response, 401, "not_authenticated")


def test_revoked_token_is_refused_at_once(api: APIClient, alice: Any, alice_token: str) -> None:
    exchange_ok(exchange(api, "/sync/exchange", body(), bearer(alice_token)))
    DeviceToken.objects.get(owner=alice).revoke()
    response = exchange(api, "/sync/exchange", body(records=[record("01HREC0000000000000000000A", BASE_MS)]),
                        bearer(alice_token))
    assert_error(response, 401, "authentication_failed")
    assert SharedRecord.objects.count() == 0


def test_token_of_inactive_owner_is_401(api: APIClient, alice: Any, alice_token: str) -> None:
    alice.is_active = False
    alice.save()
    assert_error(exchange(api, "/sync/exchange", body(), bearer(alice_token)), 401)


def test_token_stores_only_a_hash(alice: Any, alice_token: str) -> None:
    row = DeviceToken.objects.get(owner=alice)
    assert alice_token not in (row.token_hash, row.hint) and len(row.token_hash) == 64


# -- channel-limited tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("url", [*DRIVE_EXCHANGE_URLS, "/apps/todo/sync/exchange"])
def test_token_limited_to_notes_is_403_elsewhere(
    api: APIClient, alice: Any, notes_app: Any, todo_app: Any, url: str
) -> None:
    token = make_token(alice, channels=["notes"])
    payload = body(records=[record("01HREC0000000000000000000A", BASE_MS)],
                   rows=[entry("todo", "items", "t1", BASE_MS)])
    assert_error(exchange(api, url, payload, bearer(token)), 403, "permission_denied")
    assert SharedRecord.objects.count() == 0 and AppRow.objects.count() == 0


@pytest.mark.parametrize("path", [f"/files/{drive_key(DATA)}", f"/apps/todo/files/{app_key('todo', DATA)}"])
def test_token_limited_to_notes_cannot_touch_other_files(
    api: APIClient, alice: Any, alice_token: str, notes_app: Any, todo_app: Any, path: str
) -> None:
    put_blob(api, path, DATA, bearer(alice_token))  # stored with an unrestricted token
    token = make_token(alice, channels=["notes"])
    for method in ("GET", "PUT", "DELETE"):
        assert_error(_call(api, method, path, bearer(token), DATA), 403, "permission_denied")
    assert api.head(path, headers=bearer(token)).status_code == 403
    assert api.head(path, headers=bearer(alice_token)).status_code == 200  # not deleted


def test_token_limited_to_notes_works_on_notes(api: APIClient, alice: Any, notes_app: Any) -> None:
    token = make_token(alice, channels=["notes"])
    exchange_ok(exchange(api, NOTES_EXCHANGE, body(rows=[ROW]), bearer(token)))
    assert AppRow.objects.count() == 1
    url = f"/apps/notes/files/{app_key('notes', DATA)}"
    assert put_blob(api, url, DATA, bearer(token)).status_code == 201


def test_health_is_open(api: APIClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": True, "storage": True}


# -- Starkeep app signatures -------------------------------------------------------------------


@pytest.fixture
def notes_secret(alice: Any, notes_app: Any) -> AppSecret:
    return make_secret(alice, "notes")


@pytest.fixture
def drive_secret(alice: Any) -> AppSecret:
    return make_secret(alice, "starkeep-drive")


FIXED_SECRET = "test-secret-0123456789"
FIXED_TS = 1_700_000_000_000
FIXED_BODY = b'{"watermarks":{}}'
#: hex(HMAC-SHA256(FIXED_SECRET, "notes:POST:/sync/exchange:1700000000000:" + FIXED_BODY)),
#: computed once with Python's hmac module.
FIXED_SIG = "9d4e5e3ae8bbdf7f7d48f5a3a9d3423e5a6f8f335ebad5db7d9499bcfd7a1d0e"


def test_fixed_signature_vector(api: APIClient, alice: Any, notes_app: Any, monkeypatch: Any) -> None:
    assert signature(FIXED_SECRET, "notes", "POST", "/sync/exchange", FIXED_TS, FIXED_BODY) == FIXED_SIG
    AppSecret.objects.create(owner=alice, app_id="notes", key_id="kfixed", secret=FIXED_SECRET)
    monkeypatch.setattr(time, "time", lambda: FIXED_TS / 1000 + 30)  # the server's clock, 30 s later
    headers = {"X-Starkeep-App-Id": "notes", "X-Starkeep-App-Sig": FIXED_SIG, "X-Starkeep-App-Ts": str(FIXED_TS)}
    exchange_ok(exchange(api, NOTES_EXCHANGE, FIXED_BODY, headers))
    # Upper-case hex is the same signature (and so, a replay).
    headers["X-Starkeep-App-Sig"] = FIXED_SIG.upper()
    assert_error(exchange(api, NOTES_EXCHANGE, FIXED_BODY, headers), 401)


def test_signed_exchange_on_app_channel(api: APIClient, alice: Any, notes_secret: AppSecret) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload)
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, headers))
    assert AppRow.objects.get().owner_id == alice.pk


@pytest.mark.parametrize("url", DRIVE_EXCHANGE_URLS)
def test_signed_exchange_on_drive_channel(api: APIClient, alice: Any, drive_secret: AppSecret, url: str) -> None:
    payload = body(records=[record("01HREC0000000000000000000A", BASE_MS)])
    headers = signed_headers(drive_secret.secret, "starkeep-drive", "POST", "/sync/exchange", payload)
    exchange_ok(exchange(api, url, payload, headers))
    assert SharedRecord.objects.get().owner_id == alice.pk


def test_signature_for_one_app_is_limited_to_that_app(
    api: APIClient, alice: Any, notes_secret: AppSecret, todo_app: Any
) -> None:
    """A notes signature names notes: it cannot be used on todo's channel or the Drive."""
    payload = body(rows=[ROW])
    for url in ("/apps/todo/sync/exchange", "/sync/exchange"):
        headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload)
        assert_error(exchange(api, url, payload, headers), 401)
    assert AppRow.objects.count() == 0


def _refused(api: APIClient, url: str, payload: bytes, headers: dict[str, str]) -> None:
    response = exchange(api, url, payload, headers)
    assert_error(response, 401, "authentication_failed")
    assert response.has_header("WWW-Authenticate")
    assert AppRow.objects.count() == 0 and SharedRecord.objects.count() == 0


def test_wrong_secret_is_401(api: APIClient, notes_secret: AppSecret) -> None:
    payload = body(rows=[ROW])
    _refused(api, NOTES_EXCHANGE, payload,
             signed_headers(notes_secret.secret + "0", "notes", "POST", "/sync/exchange", payload))


def test_tampered_body_is_401(api: APIClient, notes_secret: AppSecret) -> None:
    signed = body(rows=[ROW])
    sent = body(rows=[{**ROW, "row": {**ROW["row"], "body": "evil"}}])
    _refused(api, NOTES_EXCHANGE, sent, signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", signed))


@pytest.mark.parametrize("signed_path", ["/files/presign", "/apps/notes/sync/exchange", "/sync/exchange/",
                                         "sync/exchange", "/SYNC/exchange"])
def test_tampered_path_is_401(api: APIClient, notes_secret: AppSecret, signed_path: str) -> None:
    payload = body(rows=[ROW])
    _refused(api, NOTES_EXCHANGE, payload, signed_headers(notes_secret.secret, "notes", "POST", signed_path, payload))


@pytest.mark.parametrize("signed_method", ["PUT", "GET", "post"])
def test_method_swap_is_401(api: APIClient, notes_secret: AppSecret, signed_method: str) -> None:
    payload = body(rows=[ROW])
    _refused(api, NOTES_EXCHANGE, payload,
             signed_headers(notes_secret.secret, "notes", signed_method, "/sync/exchange", payload))


def test_header_app_id_must_match_the_path(api: APIClient, alice: Any, notes_secret: AppSecret,
                                           todo_app: Any) -> None:
    todo_secret = make_secret(alice, "todo")
    payload = body(rows=[ROW])
    # Correctly signed for todo, sent to the notes channel.
    headers = signed_headers(todo_secret.secret, "todo", "POST", "/sync/exchange", payload)
    _refused(api, NOTES_EXCHANGE, payload, headers)
    # Signed with notes' secret for "notes", header claims todo.
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload, header_app_id="todo")
    _refused(api, NOTES_EXCHANGE, payload, headers)


@pytest.mark.parametrize("offset_s", [-301, 301, -3600, 86_400])
def test_timestamp_outside_the_window_is_401(api: APIClient, notes_secret: AppSecret, offset_s: int) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload,
                             ts=now_ms() + offset_s * 1000)
    _refused(api, NOTES_EXCHANGE, payload, headers)


@pytest.mark.parametrize("offset_s", [-280, 280])
def test_timestamp_inside_the_window_is_accepted(api: APIClient, notes_secret: AppSecret, offset_s: int) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload,
                             ts=now_ms() + offset_s * 1000)
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, headers))


@pytest.mark.parametrize("ts", ["", "soon", "1.7e12"])
def test_malformed_timestamp_is_401(api: APIClient, notes_secret: AppSecret, ts: str) -> None:
    payload = body(rows=[ROW])
    headers = {"X-Starkeep-App-Id": "notes", "X-Starkeep-App-Ts": ts,
               "X-Starkeep-App-Sig": signature(notes_secret.secret, "notes", "POST", "/sync/exchange", ts, payload)}
    _refused(api, NOTES_EXCHANGE, payload, headers)


def test_missing_signature_header_is_401(api: APIClient, notes_secret: AppSecret) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload)
    del headers["X-Starkeep-App-Sig"]
    _refused(api, NOTES_EXCHANGE, payload, headers)


def test_replay_is_401(api: APIClient, notes_secret: AppSecret) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload)
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, headers))
    AppRow.objects.all().delete()
    _refused(api, NOTES_EXCHANGE, payload, headers)


def test_revoked_secret_is_401(api: APIClient, notes_secret: AppSecret) -> None:
    notes_secret.revoked_at = notes_secret.created
    notes_secret.save()
    payload = body(rows=[ROW])
    _refused(api, NOTES_EXCHANGE, payload,
             signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload))


def test_signature_window_setting_is_read_per_request(api: APIClient, notes_secret: AppSecret) -> None:
    payload = body(rows=[ROW])
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload,
                             ts=now_ms() - 10_000)
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "SIGNATURE_WINDOW_SECONDS": 5}):
        _refused(api, NOTES_EXCHANGE, payload, headers)


def test_signed_get_and_head_sign_an_empty_body(api: APIClient, alice_token: str, notes_secret: AppSecret) -> None:
    key = app_key("notes", DATA)
    put_blob(api, f"/apps/notes/files/{key}", DATA, bearer(alice_token))
    path = f"/files/{key}"
    for method in ("GET", "HEAD"):
        response = api.generic(method, f"/apps/notes{path}",
                               headers=signed_headers(notes_secret.secret, "notes", method, path))
        assert response.status_code == 200, response.content
    # A GET signed over a body is not the same message.
    headers = signed_headers(notes_secret.secret, "notes", "GET", path, b"x")
    assert_error(api.get(f"/apps/notes{path}", headers=headers), 401)


def test_signed_path_is_percent_decoded_without_query(
    api: APIClient, alice_token: str, notes_secret: AppSecret
) -> None:
    key = "apps/notes/syncable/my file (1).txt"
    put_blob(api, f"/apps/notes/files/{quote(key)}", b"text", bearer(alice_token), content_type="text/plain")
    headers = signed_headers(notes_secret.secret, "notes", "GET", f"/files/{key}")
    response = api.get(f"/apps/notes/files/{quote(key)}?cache=no", headers=headers)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"text"
    # Signing the encoded form is not what the protocol says.
    headers = signed_headers(notes_secret.secret, "notes", "GET", f"/files/{quote(key)}")
    assert_error(api.get(f"/apps/notes/files/{quote(key)}", headers=headers), 401)


def test_signed_presign_and_confirm(api: APIClient, notes_secret: AppSecret) -> None:
    key = app_key("notes", DATA)
    payload = json.dumps({"key": key}).encode()
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/files/presign", payload)
    response = api.post("/apps/notes/files/presign", data=payload, content_type="application/json", headers=headers)
    assert response.status_code == 200
    url = response.json()["url"].removeprefix("http://testserver")
    assert APIClient().put(url, data=DATA, content_type="text/plain").status_code in (200, 201)
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/files/confirm", payload)
    response = api.post("/apps/notes/files/confirm", data=payload, content_type="application/json", headers=headers)
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_key_id_selects_the_secret(api: APIClient, alice: Any, notes_secret: AppSecret) -> None:
    second = make_secret(alice, "notes")
    payload = body(rows=[ROW])
    headers = signed_headers(second.secret, "notes", "POST", "/sync/exchange", payload, key_id=second.key_id)
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, headers))
    AppRow.objects.all().delete()

    # The first secret's signature under the second key id is refused.
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload, key_id=second.key_id)
    _refused(api, NOTES_EXCHANGE, payload, headers)
    # An unknown key id, and the key id of another app's secret, too.
    headers = signed_headers(notes_secret.secret, "notes", "POST", "/sync/exchange", payload, key_id="knope")
    _refused(api, NOTES_EXCHANGE, payload, headers)
    drive = make_secret(alice, "starkeep-drive")
    headers = signed_headers(drive.secret, "notes", "POST", "/sync/exchange", payload, key_id=drive.key_id)
    _refused(api, NOTES_EXCHANGE, payload, headers)
    # Without a key id, every secret of the app is tried.
    headers = signed_headers(second.secret, "notes", "POST", "/sync/exchange", payload)
    exchange_ok(exchange(api, NOTES_EXCHANGE, payload, headers))


# -- streamed signed uploads -----------------------------------------------------------------------


@pytest.mark.parametrize(("base", "app", "key"), [
    ("/apps/notes", "notes", app_key("notes", DATA)),
    ("", "starkeep-drive", drive_key(DATA)),
    ("/apps/starkeep-drive", "starkeep-drive", drive_key(DATA)),
])
def test_signed_streamed_put(
    api: APIClient, alice: Any, alice_token: str, notes_app: Any, base: str, app: str, key: str
) -> None:
    secret = make_secret(alice, app)
    path = f"/files/{key}"
    url = f"{base}{path}"

    bad = signed_headers(secret.secret, app, "PUT", path, DATA + b"!")
    assert_error(put_blob(api, url, DATA, bad), 401)
    assert api.head(url, headers=bearer(alice_token)).status_code == 404

    wrong_secret = signed_headers(secret.secret[::-1], app, "PUT", path, DATA)
    assert_error(put_blob(api, url, DATA, wrong_secret), 401)
    assert api.head(url, headers=bearer(alice_token)).status_code == 404
    assert Blob.objects.count() == 0

    good = signed_headers(secret.secret, app, "PUT", path, DATA)
    assert put_blob(api, url, DATA, good).status_code == 201
    assert api.head(url, headers=bearer(alice_token)).status_code == 200
    assert Blob.objects.get().owner_id == alice.pk

    # The same signed upload again is a replay.
    assert_error(put_blob(api, url, DATA, good), 401)


def test_signed_streamed_put_with_bad_signature_keeps_the_old_bytes(
    api: APIClient, alice: Any, alice_token: str, notes_app: Any
) -> None:
    secret = make_secret(alice, "notes")
    url = "/apps/notes/files/apps/notes/syncable/doc.txt"
    put_blob(api, url, b"original", bearer(alice_token), content_type="text/plain")
    headers = signed_headers(secret.secret, "notes", "PUT", "/files/apps/notes/syncable/doc.txt", b"signed")
    assert_error(put_blob(api, url, b"replaced", headers, content_type="text/plain"), 401)
    got = api.get(url, headers=bearer(alice_token))
    assert b"".join(got.streaming_content) == b"original"


def test_signed_streamed_put_checks_the_hash_too(api: APIClient, alice: Any, alice_token: str,
                                                 notes_app: Any) -> None:
    secret = make_secret(alice, "notes")
    key = app_key("notes", DATA)
    other = b"not the bytes of the key"
    headers = signed_headers(secret.secret, "notes", "PUT", f"/files/{key}", other)
    response = put_blob(api, f"/apps/notes/files/{key}", other, headers)
    assert response.status_code in (400, 401)
    assert_error(response, response.status_code)
    assert api.head(f"/apps/notes/files/{key}", headers=bearer(alice_token)).status_code == 404
