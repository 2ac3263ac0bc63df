"""Blob routes (PROTOCOL §7): files/<key>, presigned URLs, confirm, health, key rules, limits."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from starkeep_sync.adapters.storage import DjangoObjectStorage
from starkeep_sync.core.blobs import content_digest
from starkeep_sync.models import Blob

from .support import app_key, assert_error, bearer, drive_key, put_blob, sha

pytestmark = pytest.mark.django_db

DATA = b"\xff\xd8\xff\xe0 a small jpeg, honestly" * 10
OTHER = b"some other bytes"

#: (URL prefix of the channel, key for DATA on that channel)
CHANNELS = [
    pytest.param("", drive_key(DATA), id="drive"),
    pytest.param("/apps/starkeep-drive", drive_key(DATA), id="drive-prefixed"),
    pytest.param("/apps/notes", app_key("notes", DATA), id="notes"),
]


def _body(response: Any) -> bytes:
    if hasattr(response, "streaming_content"):
        return b"".join(response.streaming_content)
    return response.content


def _json(response: Any) -> Any:
    return json.loads(response.content)


def _local(url: str) -> str:
    parts = urlsplit(url)
    assert parts.netloc == "testserver", url
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.mark.parametrize(("base", "key"), CHANNELS)
def test_put_head_get_delete(api: APIClient, alice_token: str, notes_app: Any, base: str, key: str) -> None:
    auth = bearer(alice_token)
    url = f"{base}/files/{key}"

    assert api.head(url, headers=auth).status_code == 404
    assert_error(api.get(url, headers=auth), 404, "not_found")

    response = put_blob(api, url, DATA, auth, content_type="image/jpeg")
    assert response.status_code == 201, response.content
    assert _json(response)["ok"] is True

    head = api.head(url, headers=auth)
    assert head.status_code == 200
    assert head["Content-Type"] == "image/jpeg"  # kept from the PUT
    assert head["Content-Length"] == str(len(DATA))

    got = api.get(url, headers=auth)
    assert got.status_code == 200
    assert got["Content-Type"] == "image/jpeg"
    assert got["Content-Length"] == str(len(DATA))
    assert _body(got) == DATA

    assert api.delete(url, headers=auth).status_code in (200, 204)
    assert api.head(url, headers=auth).status_code == 404
    assert_error(api.get(url, headers=auth), 404, "not_found")
    assert Blob.objects.count() == 0


def test_put_is_idempotent_and_overwrites(api: APIClient, alice_token: str, notes_app: Any) -> None:
    url = "/apps/notes/files/apps/notes/syncable/notes.txt"  # no hash in the key: no integrity check
    assert put_blob(api, url, b"one", bearer(alice_token), content_type="text/plain").status_code == 201
    assert put_blob(api, url, b"two", bearer(alice_token), content_type="text/plain").status_code == 201
    assert _body(api.get(url, headers=bearer(alice_token))) == b"two"
    assert Blob.objects.get().size_bytes == 3


def test_delete_of_absent_key_is_not_an_error(api: APIClient, alice_token: str) -> None:
    assert api.delete(f"/files/{drive_key(DATA)}", headers=bearer(alice_token)).status_code in (200, 204)


@pytest.mark.parametrize(("base", "key"), CHANNELS)
def test_presign_put_then_confirm(api: APIClient, alice_token: str, notes_app: Any, base: str, key: str) -> None:
    auth = bearer(alice_token)
    response = api.post(f"{base}/files/presign", data=json.dumps({"key": key, "contentType": "image/png"}),
                        content_type="application/json", headers=auth)
    assert response.status_code == 200, response.content
    url = _json(response)["url"]
    assert urlsplit(url).path.startswith("/files-direct/")

    # Not confirmable yet.
    assert_error(api.post(f"{base}/files/confirm", data=json.dumps({"key": key}),
                          content_type="application/json", headers=auth), 404, "not_found")

    # The signed URL is the credential: no Authorization header.
    put = APIClient().put(_local(url), data=DATA, content_type="application/octet-stream")
    assert put.status_code in (200, 201), put.content

    confirm = api.post(f"{base}/files/confirm", data=json.dumps({"key": key}),
                       content_type="application/json", headers=auth)
    assert confirm.status_code == 200, confirm.content
    assert _json(confirm) == {"ok": True}

    got = api.get(f"{base}/files/{key}", headers=auth)
    assert _body(got) == DATA
    assert got["Content-Type"] == "image/png"  # the presigned content type wins
    assert Blob.objects.get().sha256 == sha(DATA)


@pytest.mark.parametrize(("base", "key"), CHANNELS)
def test_presign_get(api: APIClient, alice_token: str, notes_app: Any, base: str, key: str) -> None:
    auth = bearer(alice_token)
    assert_error(api.get(f"{base}/files/{key}/presign", headers=auth), 404, "not_found")
    put_blob(api, f"{base}/files/{key}", DATA, auth, content_type="image/jpeg")

    response = api.get(f"{base}/files/{key}/presign", headers=auth)
    assert response.status_code == 200, response.content
    url = _json(response)["url"]
    got = APIClient().get(_local(url))
    assert got.status_code == 200
    assert _body(got) == DATA
    assert got["Content-Type"] == "image/jpeg"


def test_direct_url_is_bound_to_its_method_and_token(api: APIClient, alice_token: str) -> None:
    key = drive_key(DATA)
    auth = bearer(alice_token)
    put_url = _json(api.post("/files/presign", data=json.dumps({"key": key}), content_type="application/json",
                             headers=auth))["url"]
    assert_error(APIClient().get(_local(put_url)), 404, "not_found")  # a PUT URL does not GET

    put_blob(api, f"/files/{key}", DATA, auth)
    get_url = _json(api.get(f"/files/{key}/presign", headers=auth))["url"]
    assert_error(APIClient().put(_local(get_url), data=OTHER, content_type="text/plain"), 404, "not_found")
    assert _body(api.get(f"/files/{key}", headers=auth)) == DATA

    tampered = _local(get_url)[:-3] + "xyz"
    assert_error(APIClient().get(tampered), 404, "not_found")


def test_direct_put_url_is_single_use(api: APIClient, alice_token: str, notes_app: Any) -> None:
    key = "apps/notes/syncable/single-use"
    url = _local(_json(api.post("/apps/notes/files/presign", data=json.dumps({"key": key}),
                                content_type="application/json", headers=bearer(alice_token)))["url"])
    assert APIClient().put(url, data=DATA, content_type="application/octet-stream").status_code == 201
    # A leaked URL cannot overwrite the blob while it is still inside its lifetime.
    assert_error(APIClient().put(url, data=OTHER, content_type="application/octet-stream"), 410, "url_used")
    assert _body(api.get(f"/apps/notes/files/{key}", headers=bearer(alice_token))) == DATA


def test_direct_url_expires(api: APIClient, alice_token: str) -> None:
    key = drive_key(DATA)
    put_blob(api, f"/files/{key}", DATA, bearer(alice_token))
    url = _local(_json(api.get(f"/files/{key}/presign", headers=bearer(alice_token)))["url"])
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "PRESIGN_EXPIRES_SECONDS": -1}):
        assert_error(APIClient().get(url), 404, "not_found")


def test_direct_put_checks_the_hash(api: APIClient, alice_token: str) -> None:
    key = drive_key(DATA)
    url = _json(api.post("/files/presign", data=json.dumps({"key": key}), content_type="application/json",
                         headers=bearer(alice_token)))["url"]
    assert_error(APIClient().put(_local(url), data=OTHER, content_type="image/jpeg"), 400, "integrity_mismatch")
    assert api.head(f"/files/{key}", headers=bearer(alice_token)).status_code == 404


def test_conditional_put_leaves_a_present_blob_alone(api: APIClient, alice: Any, alice_token: str) -> None:
    key = drive_key(DATA)
    url = f"/files/{key}"
    absent = {**bearer(alice_token), "If-None-Match": "*"}
    assert put_blob(api, url, DATA, absent, content_type="image/jpeg").status_code == 201
    # Present now: 412, and the stored bytes and type stay as they were.
    assert_error(put_blob(api, url, DATA, absent, content_type="text/plain"), 412, "already_exists")
    assert _body(api.get(url, headers=bearer(alice_token))) == DATA
    assert Blob.objects.get(owner=alice, key=key).content_type == "image/jpeg"
    # Without the header a PUT still replaces.
    assert put_blob(api, url, DATA, bearer(alice_token), content_type="text/plain").status_code == 201
    assert Blob.objects.get(owner=alice, key=key).content_type == "text/plain"


def test_content_digest_is_checked_for_any_key(api: APIClient, alice: Any, alice_token: str, notes_app: Any) -> None:
    key = "apps/notes/syncable/not-a-hash.bin"
    url = f"/apps/notes/files/{key}"
    wrong = {**bearer(alice_token), "Content-Digest": content_digest(sha(OTHER))}
    assert_error(put_blob(api, url, DATA, wrong), 400, "integrity_mismatch")
    assert api.head(url, headers=bearer(alice_token)).status_code == 404
    assert not Blob.objects.filter(owner=alice, key=key).exists()
    right = {**bearer(alice_token), "Content-Digest": f"md5=:AAAA:, {content_digest(sha(DATA))}"}
    assert put_blob(api, url, DATA, right).status_code == 201
    assert Blob.objects.get(owner=alice, key=key).sha256 == sha(DATA)
    # A digest that contradicts a hash-named key is refused before anything is read.
    drive = {**bearer(alice_token), "Content-Digest": content_digest(sha(OTHER))}
    assert_error(put_blob(api, f"/files/{drive_key(DATA)}", DATA, drive), 400, "integrity_mismatch")
    bad = {**bearer(alice_token), "Content-Digest": "sha-256=:not base64!:"}
    assert_error(put_blob(api, url, DATA, bad), 400, "invalid_request")


def test_put_writes_one_metadata_row_and_replaces_in_place(api: APIClient, alice: Any, alice_token: str) -> None:
    key = drive_key(DATA)
    for content_type in ("image/jpeg", "image/png"):
        assert put_blob(api, f"/files/{key}", DATA, bearer(alice_token), content_type=content_type).status_code == 201
    row = Blob.objects.get(owner=alice, key=key)
    assert (row.content_type, row.size_bytes, row.sha256) == ("image/png", len(DATA), sha(DATA))
    storage = DjangoObjectStorage(alice)
    folder = os.path.dirname(storage.storage.path(storage.name_for(key)))
    assert os.listdir(folder) == [key.rsplit("/", 1)[-1]]  # no temporary file left behind


def test_confirm_removes_bytes_that_do_not_match_their_key(api: APIClient, alice: Any, alice_token: str) -> None:
    key = drive_key(DATA)
    DjangoObjectStorage(alice).put(key, OTHER)  # e.g. uploaded straight to the bucket
    response = api.post("/files/confirm", data=json.dumps({"key": key}), content_type="application/json",
                        headers=bearer(alice_token))
    assert_error(response, 400, "integrity_mismatch")
    assert api.head(f"/files/{key}", headers=bearer(alice_token)).status_code == 404


@pytest.mark.parametrize("route", ["/files/presign", "/files/confirm"])
@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        pytest.param(b"{nope", "invalid_json", "body", id="invalid-json"),
        pytest.param(b"[1]", "invalid_request", "body", id="array"),
        pytest.param(b"{}", "invalid_request", "key", id="missing-key"),
        pytest.param(b'{"key": 5}', "invalid_request", "key", id="key-not-string"),
        pytest.param(b'{"key": ""}', "invalid_request", "key", id="empty-key"),
    ],
)
def test_presign_and_confirm_bodies(
    api: APIClient, alice_token: str, route: str, payload: bytes, code: str, field: str
) -> None:
    response = api.post(route, data=payload, content_type="application/json", headers=bearer(alice_token))
    assert_error(response, 400, code, field)


@pytest.mark.parametrize("route", ["/files/presign", "/files/confirm"])
@pytest.mark.parametrize("key", ["shared/image/../x", "/shared/image/ab/cd", "shared/image/ab/c\x01d",
                                 "not/a/shared/key", "shared/image/ab/" + "a" * 1100])
def test_presign_and_confirm_check_the_key(api: APIClient, alice_token: str, route: str, key: str) -> None:
    response = api.post(route, data=json.dumps({"key": key}), content_type="application/json",
                        headers=bearer(alice_token))
    assert_error(response, 400, "invalid_key")


def test_health_needs_no_credentials(api: APIClient, notes_app: Any) -> None:
    for url in ("/health", "/apps/notes/health"):
        response = api.get(url)
        assert response.status_code == 200
        assert _json(response) == {"status": "ok", "db": True, "storage": True}


# -- key rules --------------------------------------------------------------------------------

H = sha(DATA)

BAD_KEYS = [
    pytest.param("/files/shared/image/../" + H, id="dotdot"),
    pytest.param("/files/shared/image/ab/..", id="dotdot-last"),
    pytest.param("/files/shared/./ab/" + H, id="dot"),
    pytest.param("/files/shared//ab/" + H, id="empty-segment"),
    pytest.param(f"/files/shared/image/ab/{H}/", id="trailing-slash"),
    pytest.param("/files//shared/image/ab/" + H, id="absolute"),
    pytest.param("/files//etc/passwd", id="absolute-etc"),
    pytest.param("/files/shared/image/ab/a%01b", id="control-char"),
    pytest.param("/files/shared/image/ab/a%7fb", id="del-char"),
    pytest.param("/files/shared/image/ab/a%0ab", id="newline"),
    pytest.param("/files/shared/image/%2e%2e/" + H, id="pct-dotdot"),
    pytest.param("/files/shared/image/%2E%2E/%2E%2E", id="pct-dotdot-upper"),
    pytest.param("/files/shared/image/ab%2f%2e%2e%2f" + H, id="pct-slash-dotdot"),
    pytest.param("/files/shared/image/ab%5c..%5c" + H, id="backslash"),
    pytest.param("/files/shared/image/ab/" + "a" * 1100, id="over-long"),
    # Not the Drive shape shared/<category>/<shard>/<hash>:
    pytest.param("/files/private/image/ab/" + H, id="wrong-root"),
    pytest.param("/files/shared/Image/ab/" + H, id="uppercase-category"),
    pytest.param("/files/shared/image/" + H, id="three-segments"),
    pytest.param(f"/files/shared/image/ab/{H}/x", id="five-segments"),
    pytest.param(f"/files/shared/image/ab/{H}.jpg", id="dot-in-hash"),
    pytest.param("/files/apps/notes/syncable/" + H, id="app-key-on-drive"),
    pytest.param("/apps/notes/files/shared/image/ab/" + H, id="drive-key-on-app"),
    pytest.param("/apps/notes/files/apps/notes/other/" + H, id="app-not-syncable"),
    pytest.param("/apps/notes/files/apps/notes/syncable/../../todo/syncable/x", id="app-dotdot"),
    pytest.param("/apps/notes/files/apps/notes/syncable/" + "a" * 1100, id="app-over-long"),
    pytest.param("/apps/notes/files/apps/notes/syncable//x", id="app-empty-segment"),
]


@pytest.mark.parametrize("path", BAD_KEYS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_bad_keys_are_400(api: APIClient, alice_token: str, notes_app: Any, path: str, method: str) -> None:
    auth = bearer(alice_token)
    if method == "PUT":
        response = put_blob(api, path, DATA, auth)
    else:
        response = getattr(api, method.lower())(path, headers=auth)
    if method == "HEAD":
        assert response.status_code == 400
    else:
        assert_error(response, 400, "invalid_key")
    assert Blob.objects.count() == 0


@pytest.mark.parametrize("path", ["/files/shared/image/%2e%2e/" + H + "/presign",
                                  "/files/shared//ab/" + H + "/presign",
                                  "/files/other/image/ab/" + H + "/presign"])
def test_bad_keys_on_presign_get_are_400(api: APIClient, alice_token: str, path: str) -> None:
    assert_error(api.get(path, headers=bearer(alice_token)), 400, "invalid_key")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_another_apps_prefix_is_403(
    api: APIClient, alice_token: str, notes_app: Any, todo_app: Any, method: str
) -> None:
    auth = bearer(alice_token)
    key = app_key("todo", DATA)
    put_blob(api, f"/apps/todo/files/{key}", DATA, auth)  # todo's own blob exists
    path = f"/apps/notes/files/{key}"
    if method == "PUT":
        response = put_blob(api, path, DATA, auth)
    else:
        response = getattr(api, method.lower())(path, headers=auth)
    if method == "HEAD":
        assert response.status_code == 403
    else:
        assert_error(response, 403, "forbidden_key")
    assert api.head(f"/apps/todo/files/{key}", headers=auth).status_code == 200  # not deleted


def test_another_apps_prefix_is_403_on_presign_and_confirm(
    api: APIClient, alice_token: str, notes_app: Any
) -> None:
    key = app_key("todo", DATA)
    for route in ("/apps/notes/files/presign", "/apps/notes/files/confirm"):
        response = api.post(route, data=json.dumps({"key": key}), content_type="application/json",
                            headers=bearer(alice_token))
        assert_error(response, 403, "forbidden_key")
    assert_error(api.get(f"/apps/notes/files/{key}/presign", headers=bearer(alice_token)), 403, "forbidden_key")


@pytest.mark.parametrize(("base", "key"), CHANNELS)
def test_put_whose_bytes_do_not_hash_to_the_key_stores_nothing(
    api: APIClient, alice_token: str, notes_app: Any, base: str, key: str
) -> None:
    url = f"{base}/files/{key}"
    assert_error(put_blob(api, url, OTHER, bearer(alice_token)), 400, "integrity_mismatch")
    assert api.head(url, headers=bearer(alice_token)).status_code == 404
    assert Blob.objects.count() == 0


def test_failed_overwrite_keeps_the_good_bytes(api: APIClient, alice_token: str) -> None:
    url = f"/files/{drive_key(DATA)}"
    put_blob(api, url, DATA, bearer(alice_token))
    assert_error(put_blob(api, url, OTHER, bearer(alice_token)), 400, "integrity_mismatch")
    assert _body(api.get(url, headers=bearer(alice_token))) == DATA


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "key"), CHANNELS)
def test_blob_over_max_blob_bytes_is_413(
    api: APIClient, alice_token: str, notes_app: Any, base: str, key: str
) -> None:
    url = f"{base}/files/{key}"
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_BLOB_BYTES": len(DATA) - 1}):
        assert_error(put_blob(api, url, DATA, bearer(alice_token)), 413, "payload_too_large")
        assert api.head(url, headers=bearer(alice_token)).status_code == 404
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_BLOB_BYTES": len(DATA)}):
        assert put_blob(api, url, DATA, bearer(alice_token)).status_code == 201


def test_direct_put_over_max_blob_bytes_is_413(api: APIClient, alice_token: str) -> None:
    key = drive_key(DATA)
    url = _json(api.post("/files/presign", data=json.dumps({"key": key}), content_type="application/json",
                         headers=bearer(alice_token)))["url"]
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_BLOB_BYTES": 10}):
        assert_error(APIClient().put(_local(url), data=DATA, content_type="image/jpeg"), 413, "payload_too_large")
    assert api.head(f"/files/{key}", headers=bearer(alice_token)).status_code == 404


def test_blob_limit_is_not_the_request_limit(api: APIClient, alice_token: str) -> None:
    """Blobs stream: MAX_REQUEST_BYTES (exchange bodies) does not cap them."""
    url = f"/files/{drive_key(DATA)}"
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_REQUEST_BYTES": 10}):
        assert put_blob(api, url, DATA, bearer(alice_token)).status_code == 201


def test_file_routes_of_an_unregistered_app_are_404_and_store_nothing(api: APIClient, alice_token: str) -> None:
    data = b"ghost bytes"
    key = app_key("ghost", data)
    base = "/apps/ghost/files"
    auth = bearer(alice_token)
    assert_error(put_blob(api, f"{base}/{key}", data, auth), 404, "unknown_app")
    assert_error(api.get(f"{base}/{key}", headers=auth), 404, "unknown_app")
    assert api.head(f"{base}/{key}", headers=auth).status_code == 404
    assert_error(api.post(f"{base}/presign", {"key": key}, format="json", headers=auth), 404, "unknown_app")
    assert_error(api.get(f"{base}/{key}/presign", headers=auth), 404, "unknown_app")
    assert_error(api.post(f"{base}/confirm", {"key": key}, format="json", headers=auth), 404, "unknown_app")
    assert not Blob.objects.exists()


def test_a_failed_direct_put_leaves_its_url_usable(api: APIClient, alice_token: str) -> None:
    key = drive_key(DATA)
    url = _local(_json(api.post("/files/presign", data=json.dumps({"key": key}), content_type="application/json",
                                headers=bearer(alice_token)))["url"])
    assert_error(APIClient().put(url, data=OTHER, content_type="application/octet-stream"), 400)  # wrong bytes
    assert APIClient().put(url, data=DATA, content_type="application/octet-stream").status_code == 201
    assert_error(APIClient().put(url, data=DATA, content_type="application/octet-stream"), 410, "url_used")


@pytest.mark.parametrize("content_type", ["00", "image", "image/jpeg; q", "a b/c"])
def test_a_content_type_that_is_no_media_type_is_400(api: APIClient, alice_token: str, content_type: str) -> None:
    key = drive_key(DATA)
    assert_error(put_blob(api, f"/files/{key}", DATA, bearer(alice_token), content_type=content_type),
                 400, field="Content-Type")
    r = api.post("/files/presign", data=json.dumps({"key": key, "contentType": content_type}),
                 content_type="application/json", headers=bearer(alice_token))
    assert_error(r, 400, field="contentType")
