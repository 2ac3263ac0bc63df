"""Hostile clients (issue #14): nothing happens for a request before its principal is proved.

Each test speaks raw HTTP over a socket to the live server, as an attacker
would (streamed bodies, garbage signatures, someone else's key id, bodies
shorter than their ``Content-Length``), and then inspects what the server left
behind: the storage tree, the throttle and replay caches, the rows.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.cache import caches
from django.test import override_settings

from starkeep_sync.models import AppRow, SharedRecord
from tests.factories import make_secret, make_token, make_user, register_app

from .support import BASE_MS, body, drive_key, entry, now_ms, record, sha, signed_headers

pytestmark = pytest.mark.django_db(transaction=True)

GARBAGE_SIG = "ab" * 32


def _send(url: str, method: str, path: str, headers: dict[str, str], payload: bytes = b"", *,
          declared: int | None = None, chunk: int = 65536, pause_after: int | None = None,
          during: Any = None) -> tuple[int, dict[str, Any]]:
    """One request over a fresh socket; ``declared`` overrides Content-Length (a short body then half-closes).

    ``during`` runs once ``pause_after`` bytes of the body are on the wire, while the
    server is still reading it: what the server did with the unverified part shows there.
    """
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    try:
        length = len(payload) if declared is None else declared
        head = [f"{method} {path} HTTP/1.1", f"Host: {parts.hostname}", f"Content-Length: {length}",
                "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        while sent < len(payload):
            piece = payload[sent:sent + chunk]
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and closed: fine, read its answer
            sent += len(piece)
            if during is not None and pause_after is not None and sent >= pause_after:
                time.sleep(0.3)  # let the server take in what arrived
                during()
                during = None
        if declared is not None and declared > len(payload):
            sock.shutdown(socket.SHUT_WR)  # the client gives up before the declared length
        data = b""
        while chunk_in := sock.recv(65536):
            data += chunk_in
    finally:
        sock.close()
    head_text, _, rest = data.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    try:
        parsed = json.loads(rest) if rest else {}
    except ValueError:
        parsed = {"raw": rest[:200].decode(errors="replace")}
    return status, parsed


def _tree(media: Path) -> list[str]:
    """Every file and folder the storage holds, relative to its root."""
    if not media.exists():
        return []
    return sorted(str(p.relative_to(media)) for p in media.rglob("*"))


@pytest.fixture
def media(settings: Any) -> Path:
    return Path(settings.STORAGES["default"]["OPTIONS"]["location"])


@pytest.fixture
def victim(transactional_db: None) -> Any:
    owner = make_user("victim")
    register_app("notes", {"notes": ["id"]}, files=True)
    return owner


@pytest.fixture
def victim_secret(victim: Any) -> Any:
    return make_secret(victim, "notes")


def _garbage_headers(key_id: str | None, app_id: str = "notes") -> dict[str, str]:
    headers = {"X-Starkeep-App-Id": app_id, "X-Starkeep-App-Sig": GARBAGE_SIG, "X-Starkeep-App-Ts": str(now_ms()),
               "Content-Type": "application/octet-stream"}
    if key_id is not None:
        headers["X-Starkeep-Key-Id"] = key_id
    return headers


def test_f2_garbage_signed_put_with_victims_key_id_writes_nothing_under_the_victims_prefix(
    live_server: Any, media: Path, victim: Any, victim_secret: Any
) -> None:
    payload = b"x" * (2 * 1024 * 1024)
    key = f"apps/notes/syncable/{sha(payload)}"
    seen: list[list[str]] = []
    status, answer = _send(live_server.url, "PUT", f"/apps/notes/files/{key}", _garbage_headers(victim_secret.key_id),
                           payload, pause_after=1024 * 1024, during=lambda: seen.append(_tree(media)))
    assert status == 401, answer
    assert seen and not any(str(victim.pk) in p for p in seen[0]), seen
    assert _tree(media) == [] or not any(str(victim.pk) in p for p in _tree(media))


def test_f2_unverified_bodies_are_bounded_per_address(live_server: Any, victim: Any, victim_secret: Any) -> None:
    """While one unverified body holds this address's allowance, the next is refused before it is read."""
    bound = 300 * 1024
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "UNVERIFIED_BYTES_PER_ADDRESS": bound,
                                          "THROTTLE_RATES": {"exchange": None, "files": None, "health": None}}):
        parts = urlsplit(live_server.url)
        holder = socket.create_connection((parts.hostname, parts.port), timeout=30)
        try:
            # A slow body that declares 200 KiB and sends a little: it holds 200 KiB of the allowance.
            headers = _garbage_headers(victim_secret.key_id)
            head = ["PUT /apps/notes/files/apps/notes/syncable/slow HTTP/1.1", f"Host: {parts.hostname}",
                    f"Content-Length: {200 * 1024}", "Connection: close",
                    *(f"{k}: {v}" for k, v in headers.items())]
            holder.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"s" * 1024)
            time.sleep(0.5)
            payload = b"y" * (200 * 1024)
            status, answer = _send(live_server.url, "PUT", f"/apps/notes/files/apps/notes/syncable/{sha(payload)}",
                                   _garbage_headers(victim_secret.key_id), payload)
            assert status == 503, answer
            assert answer["error"]["code"] == "unverified_capacity"
            holder.sendall(b"s" * (199 * 1024))
            assert b" 401 " in holder.recv(65536).split(b"\r\n", 1)[0]
        finally:
            holder.close()
        # Released: the same request is now read (and refused for its signature).
        status, _ = _send(live_server.url, "PUT", f"/apps/notes/files/apps/notes/syncable/{sha(payload)}",
                          _garbage_headers(victim_secret.key_id), payload)
        assert status == 401


def test_a_body_larger_than_the_unverified_bound_is_413(live_server: Any, victim: Any, victim_secret: Any) -> None:
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "UNVERIFIED_BYTES_PER_ADDRESS": 64 * 1024,
                                          "THROTTLE_RATES": {"exchange": None, "files": None, "health": None}}):
        payload = b"y" * (256 * 1024)
        status, answer = _send(live_server.url, "PUT", f"/apps/notes/files/apps/notes/syncable/{sha(payload)}",
                               _garbage_headers(victim_secret.key_id), payload)
    assert status == 413, answer


def test_signed_put_above_the_direct_cap_is_413_before_the_body_and_names_presign(
    live_server: Any, victim: Any, victim_secret: Any
) -> None:
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_SIGNED_PUT_BYTES": 1024,
                                          "THROTTLE_RATES": {"exchange": None, "files": None, "health": None}}):
        payload = b"z" * 4096
        path = f"/files/apps/notes/syncable/{sha(payload)}"
        headers = signed_headers(victim_secret.secret, "notes", "PUT", path, payload, key_id=victim_secret.key_id)
        status, answer = _send(live_server.url, "PUT", f"/apps/notes{path}", headers, payload)
    assert status == 413, answer
    assert "presign" in answer["error"]["message"]


def test_f3_unverified_put_cannot_plant_a_directory_in_the_victims_tree(
    live_server: Any, media: Path, victim: Any, victim_secret: Any
) -> None:
    status, _ = _send(live_server.url, "PUT", "/apps/notes/files/apps/notes/syncable/planted/dir/x.bin",
                      _garbage_headers(victim_secret.key_id), b"planted")
    assert status == 401
    assert not any("planted" in p for p in _tree(media))
    payload = b"the owner's own bytes"
    path = "/files/apps/notes/syncable/planted/dir"
    headers = signed_headers(victim_secret.secret, "notes", "PUT", path, payload, key_id=victim_secret.key_id)
    headers["Content-Type"] = "application/octet-stream"
    status, answer = _send(live_server.url, "PUT", f"/apps/notes{path}", headers, payload)
    assert status == 201, answer


def test_f4_unverified_answers_do_not_depend_on_what_the_owner_holds(
    live_server: Any, victim: Any, victim_secret: Any
) -> None:
    payload = b"a photo"
    path = "/files/apps/notes/syncable/photos/a.bin"
    headers = signed_headers(victim_secret.secret, "notes", "PUT", path, payload, key_id=victim_secret.key_id)
    headers["Content-Type"] = "application/octet-stream"
    assert _send(live_server.url, "PUT", f"/apps/notes{path}", headers, payload)[0] == 201
    held = _send(live_server.url, "PUT", "/apps/notes/files/apps/notes/syncable/photos",
                 _garbage_headers(victim_secret.key_id), b"probe")
    not_held = _send(live_server.url, "PUT", "/apps/notes/files/apps/notes/syncable/videos",
                     _garbage_headers(victim_secret.key_id), b"probe")
    assert held[0] == not_held[0] == 401
    assert held[1] == not_held[1]


def test_f5_garbage_signatures_touch_neither_throttle_history_nor_replay_cache(
    live_server: Any, victim: Any, victim_secret: Any
) -> None:
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "THROTTLE_RATES": {"files": "1000/min"}}):
        sigs = []
        for i in range(20):
            headers = _garbage_headers(victim_secret.key_id)
            headers["X-Starkeep-App-Sig"] = f"{i:064x}"
            sigs.append(headers["X-Starkeep-App-Sig"])
            status, _ = _send(live_server.url, "PUT", f"/apps/notes/files/apps/notes/syncable/f5-{i}",
                              headers, b"garbage")
            assert status == 401
        cache = caches["default"]
        assert cache.get(f"starkeep_sync:throttle:files:owner-{victim.pk}") is None
        for sig in sigs:
            assert cache.get(f"starkeep_sync:sig:{sig}") is None
        # Re-sending a refused signature is refused as invalid, not as "already used".
        headers = _garbage_headers(victim_secret.key_id)
        headers["X-Starkeep-App-Sig"] = sigs[0]
        status, answer = _send(live_server.url, "PUT", "/apps/notes/files/apps/notes/syncable/f5-0",
                               headers, b"garbage")
        assert status == 401 and "already used" not in answer["error"]["message"]


def test_f2_two_owners_without_key_id_spool_nothing_under_either_prefix(
    live_server: Any, media: Path, victim: Any, victim_secret: Any
) -> None:
    other = make_user("other")
    make_secret(other, "notes")
    payload = b"q" * (1024 * 1024)
    seen: list[list[str]] = []
    status, _ = _send(live_server.url, "PUT", f"/apps/notes/files/apps/notes/syncable/{sha(payload)}",
                      _garbage_headers(None), payload, pause_after=512 * 1024, during=lambda: seen.append(_tree(media)))
    assert status == 401
    assert seen == [[]] and _tree(media) == []


def test_a_verified_signed_put_without_key_id_lands_under_the_signers_prefix(
    live_server: Any, media: Path, victim: Any, victim_secret: Any
) -> None:
    other = make_user("other")
    other_secret = make_secret(other, "notes")
    payload = b"mine"
    path = f"/files/apps/notes/syncable/{sha(payload)}"
    headers = signed_headers(other_secret.secret, "notes", "PUT", path, payload)
    headers["Content-Type"] = "application/octet-stream"
    status, answer = _send(live_server.url, "PUT", f"/apps/notes{path}", headers, payload)
    assert status == 201, answer
    assert any(p.endswith(sha(payload)) and f"/{other.pk}/" in f"/{p}" for p in _tree(media))
    assert not any(f"/{victim.pk}/" in f"/{p}" for p in _tree(media))


@pytest.mark.parametrize("channel", ["drive", "notes"])
def test_f7_exchange_body_shorter_than_its_content_length_applies_nothing(
    live_server: Any, victim: Any, channel: str
) -> None:
    token = make_token(victim)
    if channel == "drive":
        payload = body(records=[record("01HREC0000000000000000000A", BASE_MS)])
        path = "/sync/exchange"
    else:
        payload = body(rows=[entry("notes", "notes", "n1", BASE_MS, body="hi")])
        path = "/apps/notes/sync/exchange"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, answer = _send(live_server.url, "POST", path, headers, payload, declared=len(payload) + 1000)
    assert status == 400, answer
    assert answer["error"]["code"] == "incomplete_body"
    assert SharedRecord.objects.count() == 0 and AppRow.objects.count() == 0
    # The same body, whole, is applied.
    status, answer = _send(live_server.url, "POST", path, headers, payload)
    assert status == 200, answer
    assert SharedRecord.objects.count() + AppRow.objects.count() == 1


def test_f7_short_blob_body_stores_nothing(live_server: Any, media: Path, victim: Any) -> None:
    token = make_token(victim)
    payload = b"p" * 10_000
    key = drive_key(payload)
    status, answer = _send(live_server.url, "PUT", f"/files/{key}",
                           {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"},
                           payload[:5000], declared=len(payload))
    assert status == 400, answer
    assert not any(p.endswith(sha(payload)) for p in _tree(media))


@pytest.mark.parametrize(("table", "row_id"), [("notes", "k" * 2000), ("_starkeep_sync_records", "r" * 300)])
def test_f8_too_long_app_row_key_is_400_naming_the_field(victim: Any, table: str, row_id: str) -> None:
    from rest_framework.test import APIClient

    from .support import assert_error, exchange

    token = make_token(victim)
    payload = body(rows=[entry("notes", table, row_id, BASE_MS, body="hi")])
    response = exchange(APIClient(), "/apps/notes/sync/exchange", payload, {"Authorization": f"Bearer {token}"})
    err = assert_error(response, 400)
    assert err["field"].startswith("appSyncableRows[0].row"), err
    assert AppRow.objects.count() == 0


def test_the_python_client_uploads_signed_blobs_above_the_cap_through_presign(
    live_server: Any, media: Path, victim: Any, victim_secret: Any
) -> None:
    from starkeep_sync.client import AppSignatureAuth, HttpObjectStorage

    payload = b"b" * 4096
    key = f"apps/notes/syncable/{sha(payload)}"
    with override_settings(STARKEEP_SYNC={"NODE_ID": "cloud", "MAX_SIGNED_PUT_BYTES": 1024,
                                          "THROTTLE_RATES": {"exchange": None, "files": None, "health": None}}):
        storage = HttpObjectStorage(f"{live_server.url}/apps/notes",
                                    auth=AppSignatureAuth("notes", victim_secret.secret, key_id=victim_secret.key_id),
                                    signed_put_limit=1024)
        try:
            storage.put(key, payload, "application/octet-stream")
            assert storage.get(key).data == payload
            # Small blobs still go straight in a signed PUT.
            small = b"s" * 100
            storage.put(f"apps/notes/syncable/{sha(small)}", small)
            assert storage.get(f"apps/notes/syncable/{sha(small)}").data == small
        finally:
            storage.close()


@pytest.mark.parametrize("route", ["/files/presign", "/files/confirm"])
def test_f7_json_body_routes_refuse_a_short_body(live_server: Any, victim: Any, route: str) -> None:
    token = make_token(victim)
    payload = json.dumps({"key": drive_key(b"short")}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, answer = _send(live_server.url, "POST", route, headers, payload, declared=len(payload) + 100)
    assert status == 400, answer
    assert answer["error"]["code"] == "incomplete_body"
