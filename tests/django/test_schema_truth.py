"""The OpenAPI schema's claims, checked against the live server over real HTTP.

Issue 14, F8: schemathesis found keys within ``maxLength`` that no request line
could carry (414 from gunicorn) and statuses the schema did not list. Here the
longest valid key goes through a real request line, and each documented error
status is provoked once and compared with what the schema says of it: a JSON
error body of the documented shape, with the documented headers.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from django.core.cache import caches
from django.core.files.storage import FileSystemStorage
from django.test import Client
from django.urls import reverse

from starkeep_sync.client.auth import AppSignatureAuth
from starkeep_sync.core.keys import MAX_KEY_BYTES, MAX_KEY_ENCODED_LENGTH
from tests.factories import make_secret, make_token, make_user, register_app

pytest.importorskip("drf_spectacular")

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
#: Four bytes in UTF-8: the widest a character gets, so the fewest characters for the byte bound.
EMOJI = "\U0001f600"
PREFIX = "apps/notes/syncable/"


def _longest_key() -> str:
    """The longest key the rule allows, in the widest characters: 1,024 bytes, 3,072 characters percent-encoded.

    In segments of at most 255 bytes, which is all a file system takes for one name.
    """
    room, segments = MAX_KEY_BYTES - len(PREFIX), []
    while room > 256:
        segments.append(EMOJI * 63)  # 252 bytes, and a "/"
        room -= 253
    segments.append(EMOJI * (room // 4) + "a" * (room % 4))
    return PREFIX + "/".join(segments)


LONGEST = _longest_key()


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(Client().get(reverse("starkeep_sync:schema")).content)


@pytest.fixture
def server(live_server: Any) -> Iterator[dict[str, Any]]:
    owner = make_user("truth")
    register_app("notes", {"notes": ["id"]}, files=True)
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {make_token(owner)}"
        yield {"url": live_server.url, "http": http, "owner": owner}


def documented(schema: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    response = schema["paths"][path][method]["responses"].get(str(status))
    assert response is not None, f"{method.upper()} {path} answered {status}, which the schema does not list"
    return response  # type: ignore[no-any-return]


def assert_as_documented(schema: dict[str, Any], method: str, path: str, answer: requests.Response,
                         status: int, code: str) -> None:
    """The answer has the status and error code expected, and the body and headers the schema gives for it."""
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    response = documented(schema, method, path, status)
    assert answer.headers["Content-Type"].startswith("application/json")
    assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    body = answer.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]) <= {"code", "message", "field"}
    assert body["error"]["code"] == code, body
    assert all(isinstance(v, str) and v for v in body["error"].values())
    assert f"`{code}`" in response["description"]
    for header in response.get("headers", {}):
        assert header in answer.headers, (header, dict(answer.headers))


# -- the key bound and the request line ----------------------------------------------------------------------


def test_the_longest_key_of_the_widest_characters_goes_through_a_real_request_line(server: dict[str, Any]) -> None:
    assert len(LONGEST.encode()) == MAX_KEY_BYTES
    encoded = "".join(f"%{b:02X}" for b in LONGEST.encode())  # every byte encoded: the longest spelling
    assert len(encoded) == MAX_KEY_ENCODED_LENGTH
    parts = urlsplit(server["url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = f"/apps/notes/files/{encoded}"
        assert len(f"PUT {target} HTTP/1.1") <= 8190  # gunicorn's largest limit_request_line
        conn.request("PUT", target, body=b"max", headers={
            "Authorization": server["http"].headers["Authorization"], "Content-Type": "text/plain"})
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (201, {"ok": True, "key": LONGEST})
        conn.request("GET", target, headers={"Authorization": server["http"].headers["Authorization"]})
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"max")
    finally:
        conn.close()


def test_one_byte_over_is_a_400_naming_the_bound_not_a_414(server: dict[str, Any], schema: dict[str, Any]) -> None:
    over = LONGEST + "a"
    answer = server["http"].put(f"{server['url']}/apps/notes/files/{quote(over, safe='')}", data=b"x")
    assert_as_documented(schema, "put", "/apps/{app_id}/files/{key}", answer, 400, "invalid_key")
    assert f"{MAX_KEY_BYTES + 1} bytes in UTF-8" in answer.json()["error"]["message"]


def _gunicorn_parses(request_line: str, limit: int) -> bool:
    """Whether gunicorn's own HTTP parser, with ``limit_request_line = limit``, takes this request line."""
    from gunicorn.config import Config
    from gunicorn.http.errors import LimitRequestLine
    from gunicorn.http.parser import RequestParser

    cfg = Config()
    cfg.set("limit_request_line", limit)
    raw = f"{request_line}\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode("ascii")
    try:
        next(iter(RequestParser(cfg, iter([raw]), ("127.0.0.1", 9))))
    except LimitRequestLine:
        return False
    return True


def test_every_valid_key_fits_the_deployed_request_line_limit() -> None:
    """deploy/gunicorn.conf.py's limit takes the longest request line a valid key can make; the old
    rule (1,024 characters, any width) made lines no gunicorn setting can take."""
    pytest.importorskip("gunicorn")
    limit = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))["limit_request_line"]
    app_id = "a" * 255  # the longest app id a route takes
    longest_valid = f"DELETE /apps/{app_id}/files/{quote(LONGEST, safe='')}/presign?x=1 HTTP/1.1"
    assert _gunicorn_parses(longest_valid, limit)
    old_rule = PREFIX + EMOJI * (MAX_KEY_BYTES - len(PREFIX))  # 1,024 characters
    assert not _gunicorn_parses(f"GET /apps/notes/files/{quote(old_rule, safe='')} HTTP/1.1", 8190)


# -- each documented status, provoked ------------------------------------------------------------------------


def test_400_401_403_404(server: dict[str, Any], schema: dict[str, Any]) -> None:
    url, http = server["url"], server["http"]
    answer = http.post(f"{url}/sync/exchange", data=b"{", headers={"Content-Type": "application/json"})
    assert_as_documented(schema, "post", "/sync/exchange", answer, 400, "invalid_json")
    answer = http.post(f"{url}/sync/exchange", data=b"{}", headers={"Content-Type": "text/plain"})
    assert_as_documented(schema, "post", "/sync/exchange", answer, 415, "unsupported_media_type")
    assert_as_documented(schema, "get", "/files/{key}", http.get(f"{url}/files/shared/a/b/presign/x"),
                         400, "invalid_key")
    answer = requests.post(f"{url}/sync/exchange", json={"watermarks": {}}, timeout=30)
    assert_as_documented(schema, "post", "/sync/exchange", answer, 401, "not_authenticated")
    limited = {"Authorization": f"Bearer {make_token(server['owner'], channels=['notes'])}"}
    answer = requests.post(f"{url}/sync/exchange", json={"watermarks": {}}, headers=limited, timeout=30)
    assert_as_documented(schema, "post", "/sync/exchange", answer, 403, "permission_denied")
    answer = http.get(f"{url}/apps/notes/files/apps/other/syncable/x")
    assert_as_documented(schema, "get", "/apps/{app_id}/files/{key}", answer, 403, "forbidden_key")
    assert_as_documented(schema, "get", "/files/{key}", http.get(f"{url}/files/shared/a/b/c"), 404, "not_found")
    answer = http.post(f"{url}/apps/nope/files/presign", json={"key": "apps/nope/syncable/x"})
    assert_as_documented(schema, "post", "/apps/{app_id}/files/presign", answer, 404, "unknown_app")


def test_405_for_a_method_a_path_does_not_list(server: dict[str, Any], schema: dict[str, Any]) -> None:
    url, http = server["url"], server["http"]
    for method, path, real in [("put", "/files/shared/a/b/c/presign", "/files/{key}/presign"),
                               ("delete", "/files/shared/a/b/c/presign", "/files/{key}/presign"),
                               ("post", "/files/shared/a/b/c", "/files/{key}"),
                               ("get", "/sync/exchange", "/sync/exchange")]:
        assert method not in schema["paths"][real]
        answer = http.request(method, f"{url}{path}", data=b"x")
        assert answer.status_code == 405, (method, path, answer.text[:200])
        assert answer.json()["error"]["code"] == "method_not_allowed"
        assert method.upper() not in answer.headers["Allow"]
        assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= {m.upper() for m in schema["paths"][real]}


def test_409_410_412(server: dict[str, Any], schema: dict[str, Any]) -> None:
    url, http = server["url"], server["http"]
    assert http.put(f"{url}/apps/notes/files/apps/notes/syncable/a", data=b"1").status_code == 201
    answer = http.put(f"{url}/apps/notes/files/apps/notes/syncable/a/b", data=b"2")
    assert_as_documented(schema, "put", "/apps/{app_id}/files/{key}", answer, 409, "key_conflict")
    answer = http.put(f"{url}/apps/notes/files/apps/notes/syncable/a", data=b"3", headers={"If-None-Match": "*"})
    assert_as_documented(schema, "put", "/apps/{app_id}/files/{key}", answer, 412, "already_exists")
    direct = http.post(f"{url}/files/presign", json={"key": "shared/a/b/c"}).json()["url"]
    assert requests.put(direct, data=b"once", timeout=30).status_code == 201
    answer = requests.put(direct, data=b"twice", timeout=30)
    assert_as_documented(schema, "put", "/files-direct/{token}", answer, 410, "url_used")


def test_411_for_a_signed_upload_without_content_length(server: dict[str, Any], schema: dict[str, Any]) -> None:
    signer = AppSignatureAuth("notes", make_secret(server["owner"], "notes").secret)
    key = "apps/notes/syncable/chunked"
    headers = signer.headers("PUT", f"/files/{key}", b"abc")
    answer = requests.put(f"{server['url']}/apps/notes/files/{key}", data=iter([b"abc"]), headers=headers,
                          timeout=30)  # a generator body is sent chunked, without Content-Length
    assert_as_documented(schema, "put", "/apps/{app_id}/files/{key}", answer, 411, "length_required")


def test_413_and_507(server: dict[str, Any], schema: dict[str, Any], settings: Any) -> None:
    url, http = server["url"], server["http"]
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "MAX_BLOB_BYTES": 4, "MAX_ITEMS_PER_REQUEST": 0}
    answer = http.put(f"{url}/files/shared/a/b/c", data=b"12345")
    assert_as_documented(schema, "put", "/files/{key}", answer, 413, "payload_too_large")
    record = schema["components"]["schemas"]["SharedRecordInput"]["example"]
    answer = http.post(f"{url}/sync/exchange", json={"watermarks": {}, "records": [record]})
    assert_as_documented(schema, "post", "/sync/exchange", answer, 413, "too_many_items")
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "MAX_BLOB_BYTES": 100, "QUOTA_BLOB_BYTES": 2}
    answer = http.put(f"{url}/files/shared/a/b/c", data=b"123")
    assert_as_documented(schema, "put", "/files/{key}", answer, 507, "quota_exceeded")


def test_429_with_retry_after(server: dict[str, Any], schema: dict[str, Any], settings: Any) -> None:
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "THROTTLE_RATES": {"files": "1/min"}}
    url, http = server["url"], server["http"]
    assert http.get(f"{url}/files/shared/a/b/c").status_code == 404
    answer = http.get(f"{url}/files/shared/a/b/c")
    assert_as_documented(schema, "get", "/files/{key}", answer, 429, "throttled")
    assert int(answer.headers["Retry-After"]) >= 1


def test_503_unverified_capacity(server: dict[str, Any], schema: dict[str, Any], settings: Any) -> None:
    """Too many unverified signed bytes already being read (other requests' share held in the cache)."""
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "UNVERIFIED_BYTES_TOTAL": 1000}
    signer = AppSignatureAuth("notes", make_secret(server["owner"], "notes").secret)
    caches["default"].set("starkeep_sync:unverified:total", 990, timeout=60)
    body = json.dumps({"watermarks": {}}).encode()
    answer = requests.post(f"{server['url']}/apps/notes/sync/exchange", data=body,
                           headers=signer.headers("POST", "/sync/exchange", body), timeout=30)
    assert_as_documented(schema, "post", "/apps/{app_id}/sync/exchange", answer, 503, "unverified_capacity")


def test_503_storage_unavailable(server: dict[str, Any], schema: dict[str, Any],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(FileSystemStorage, "exists", broken)
    answer = server["http"].delete(f"{server['url']}/files/shared/a/b/{hashlib.sha256(b'x').hexdigest()}")
    assert_as_documented(schema, "delete", "/files/{key}", answer, 503, "storage_unavailable")
    assert int(answer.headers["Retry-After"]) >= 1


def test_the_change_feed_answers_as_documented(server: dict[str, Any], schema: dict[str, Any],
                                               settings: Any) -> None:
    """``GET sync/changes``: the 200 body has the ``Changes`` shape, and each listed error status is provoked."""
    url, http = server["url"], server["http"]
    path, app_path = "/sync/changes", "/apps/{app_id}/sync/changes"
    answer = http.get(f"{url}/sync/changes")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    component = schema["components"]["schemas"]["Changes"]
    assert set(body) == set(component["required"]) == set(component["properties"])
    assert isinstance(body["changed"], bool) and isinstance(body["cursor"], str) and body["cursor"]
    assert documented(schema, "get", path, 200)["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Changes"}}}
    cursor = body["cursor"]
    assert http.get(f"{url}/sync/changes", params={"cursor": cursor, "timeout": "0"}).json() == {
        "changed": False, "cursor": cursor}

    assert_as_documented(schema, "get", path, http.get(f"{url}/sync/changes", params={"cursor": "x"}),
                         400, "invalid_request")
    assert_as_documented(schema, "get", path, http.get(f"{url}/sync/changes", params={"timeout": "-1"}),
                         400, "invalid_request")
    assert_as_documented(schema, "get", path, requests.get(f"{url}/sync/changes", timeout=30),
                         401, "not_authenticated")
    limited = {"Authorization": f"Bearer {make_token(server['owner'], channels=['notes'])}"}
    assert_as_documented(schema, "get", path, requests.get(f"{url}/sync/changes", headers=limited, timeout=30),
                         403, "permission_denied")
    assert_as_documented(schema, "get", app_path, http.get(f"{url}/apps/nope/sync/changes"), 404, "unknown_app")
    signer = AppSignatureAuth("notes", make_secret(server["owner"], "notes").secret)
    answer = requests.get(f"{url}/apps/notes/sync/changes", headers=signer.headers("GET", "/sync/changes", b""),
                          timeout=30)
    assert answer.status_code == 200 and set(answer.json()) == {"changed", "cursor"}

    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "LIVE_MAX_WAITERS_PER_OWNER": 1}
    caches["default"].set(f"starkeep_sync:live:{server['owner'].pk}:0", "another worker's waiter", timeout=60)
    answer = http.get(f"{url}/sync/changes", params={"cursor": cursor, "timeout": "5"})
    assert_as_documented(schema, "get", path, answer, 429, "throttled")
    assert int(answer.headers["Retry-After"]) >= 1
    caches["default"].clear()
    settings.STARKEEP_SYNC = {**settings.STARKEEP_SYNC, "THROTTLE_RATES": {"changes": "1/min"}}
    assert http.get(f"{url}/sync/changes").status_code == 200
    answer = http.get(f"{url}/sync/changes")
    assert_as_documented(schema, "get", path, answer, 429, "throttled")
    assert int(answer.headers["Retry-After"]) >= 1
    # Every status the schema lists for the route was answered above.
    assert set(schema["paths"][path]["get"]["responses"]) == {"200", "400", "401", "403", "404", "429"}
