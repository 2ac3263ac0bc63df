"""The requests-based HTTP client against a tiny stdlib server on loopback.

The fake server records every request and answers canned responses, so the
tests check exactly what goes on the wire (paths, headers, bodies, signatures)
without Django.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests

from starkeep_sync import (
    BlobIntegrityError,
    DataRecord,
    HLCClock,
    HLCTimestamp,
    InvalidKeyError,
    SyncExchangeRequest,
    SyncExchangeResponse,
    SyncTransportError,
    WireFormatError,
    create_data_record,
    create_http_sync_transport,
)
from starkeep_sync.client import AppSignatureAuth, BearerAuth, HttpObjectStorage, resolve_auth
from starkeep_sync.client.auth import CallableAuth, NoAuth
from starkeep_sync.client.session import create_session, parse_retry_after
from starkeep_sync.core.blobs import FileSyncEngine, FileSyncManifest, HashingReader, parse_content_digest
from starkeep_sync.core.records import AppSyncableRowEntry
from starkeep_sync.device.memory import MemoryObjectStorage

APP = "notes"
SECRET = "s3cret-for-tests"
TS = 1_700_000_000_000
KEY = "apps/notes/syncable/files/ab/note.txt"

# -- the fake server ------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str  # raw (still percent-encoded), query included
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Canned = tuple[int, dict[str, str], bytes]
DELAY_HEADER = "X-Test-Delay"  # canned-only: the fake server sleeps this long first


@dataclass
class FakeServer:
    base: str = ""
    requests: list[Recorded] = field(default_factory=list)
    blobs: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: Answers by "METHOD /raw/path"; each is used once, before the default behaviour.
    canned: dict[str, list[Canned]] = field(default_factory=dict)
    presign_absolute: bool = False
    _uploads: dict[str, str] = field(default_factory=dict)

    def answer(self, method: str, path: str, status: int, body: Any = b"",
               headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if not isinstance(body, bytes) else {}
        hdrs.update(headers or {})
        self.canned.setdefault(f"{method} {path}", []).append((status, hdrs, raw))

    def last(self, method: str | None = None) -> Recorded:
        matching = [r for r in self.requests if method is None or r.method == method]
        return matching[-1]

    def handle(self, req: Recorded) -> Canned:
        queue = self.canned.get(f"{req.method} {req.path}")
        if queue:
            return queue.pop(0)
        path = urlsplit(req.path).path
        prefix = f"/apps/{APP}/files/"
        if path == f"/apps/{APP}/files/presign" and req.method == "POST":
            key = json.loads(req.body)["key"]
            token = f"tok{len(self._uploads)}"
            self._uploads[token] = key
            url = f"/upload/{token}?X-Sig=abc"
            return _json(200, {"url": self.base + url if self.presign_absolute else url})
        if path == f"/apps/{APP}/files/confirm" and req.method == "POST":
            return _json(200, {"ok": json.loads(req.body)["key"] in self.blobs})
        if path.startswith("/upload/") and req.method == "PUT":
            key = self._uploads[path.rsplit("/", 1)[1]]
            self.blobs[key] = (req.body, req.header("Content-Type") or "")
            return 200, {}, b""
        if path.startswith("/download/") and req.method == "GET":
            return self._blob(unquote(path[len("/download/"):]), head=False)
        if path.startswith(prefix):
            key = unquote(path[len(prefix):])
            if req.method == "GET" and key.endswith("/presign"):
                key = key[: -len("/presign")]
                if key not in self.blobs:
                    return _json(404, {"error": {"code": "not_found", "message": "no such blob"}})
                return _json(200, {"url": f"{self.base}/download/{quote(key, safe='/')}"})
            if req.method in ("GET", "HEAD"):
                return self._blob(key, head=req.method == "HEAD")
            if req.method == "PUT":
                if req.header("If-None-Match") == "*" and key in self.blobs:
                    return _json(412, _err("already_exists"))
                self.blobs[key] = (req.body, req.header("Content-Type") or "")
                return 201, {}, b""
            if req.method == "DELETE":
                return (204, {}, b"") if self.blobs.pop(key, None) else _json(404, _err("not_found"))
        return _json(404, _err("not_found", "no route"))

    def _blob(self, key: str, *, head: bool) -> Canned:
        if key not in self.blobs:
            return (404, {}, b"") if head else _json(404, _err("not_found"))
        data, ctype = self.blobs[key]
        return 200, {"Content-Type": ctype}, data


def _err(code: str, message: str = "nope") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _json(status: int, body: Any) -> Canned:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's pool is exercised
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        # The client never uses chunked uploads; a missing length is a bug.
        assert "Transfer-Encoding" not in self.headers
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        fake.requests.append(req)
        status, headers, payload = fake.handle(req)
        headers = dict(headers)
        if DELAY_HEADER in headers:
            time.sleep(float(headers.pop(DELAY_HEADER)))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not stall teardown


@pytest.fixture
def server() -> Iterator[FakeServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    fake = FakeServer(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def channel(server: FakeServer) -> str:
    return f"{server.base}/apps/{APP}"


def expected_sig(method: str, path: str, ts: int, body: bytes, secret: str = SECRET, app: str = APP) -> str:
    """The signature computed independently of the client (PROTOCOL §8)."""
    message = f"{app}:{method}:{path}:{ts}:".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signer(key_id: str | None = None) -> AppSignatureAuth:
    return AppSignatureAuth(APP, SECRET, key_id=key_id, clock=lambda: TS)


# -- exchange -----------------------------------------------------------------------


def _request() -> SyncExchangeRequest:
    clock = HLCClock("devA", wall_clock=lambda: TS)
    record = create_data_record(
        clock, type="image/png", origin_app_id=APP, content_hash="ab" * 32,
        object_storage_key="shared/image/ab/" + "ab" * 32, size_bytes=3, label="ünïcode",
    )
    row = {"id": "n1", "b": "x"}
    entry = AppSyncableRowEntry(HLCTimestamp(TS, 1, "devA"), APP, "notes", "insert", row, None)
    return SyncExchangeRequest(
        watermarks={"devA": HLCTimestamp(TS, 0, "devA")},
        records=[record],
        app_syncable_rows=[entry],
        limit=500,
    )


def _response() -> SyncExchangeResponse:
    record = DataRecord(
        id="r1", type="text/plain",
        created_at=HLCTimestamp(TS, 0, "srv"), updated_at=HLCTimestamp(TS, 2, "srv"),
        deleted_at=None, version=1, content_hash="", object_storage_key="", mime_type=None, size_bytes=0,
        original_filename=None, origin_app_id=APP, parent_id=None, label=None,
    )
    return SyncExchangeResponse(
        records=[record], responder_watermarks={"srv": HLCTimestamp(TS, 2, "srv")}, has_more=True
    )


def test_exchange_posts_exact_wire_json_and_parses_response(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 200, _response().to_wire())
    request = _request()
    with create_http_sync_transport(base_url=channel, auth="tok-123") as transport:
        response = transport.exchange(request)
    assert response == _response()
    sent = server.last()
    assert (sent.method, sent.path) == ("POST", f"/apps/{APP}/sync/exchange")
    assert sent.header("Content-Type") == "application/json"
    assert json.loads(sent.body) == request.to_wire()
    # Compact JSON, UTF-8 (what the signature covers is exactly this).
    assert sent.body == json.dumps(request.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()
    assert sent.header("Authorization") == "Bearer tok-123"


def test_exchange_signature_headers(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 200, _response().to_wire())
    transport = create_http_sync_transport(base_url=channel, auth=signer(key_id="key-7"))
    transport.exchange(_request())
    sent = server.last()
    assert sent.header("X-Starkeep-App-Id") == APP
    assert sent.header("X-Starkeep-App-Ts") == str(TS)
    assert sent.header("X-Starkeep-Key-Id") == "key-7"
    assert sent.header("X-Starkeep-App-Sig") == expected_sig("POST", "/sync/exchange", TS, sent.body)
    assert sent.header("Authorization") is None
    transport.close()


def test_exchange_with_sign_request_callable(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 200, _response().to_wire())
    calls: list[tuple[str, str, bytes]] = []

    def sign_request(method: str, path: str, body: bytes) -> dict[str, str]:
        calls.append((method, path, body))
        return {"X-Custom-Sig": "yes"}

    create_http_sync_transport(base_url=channel, sign_request=sign_request).exchange(_request())
    sent = server.last()
    assert calls == [("POST", "/sync/exchange", sent.body)]
    assert sent.header("X-Custom-Sig") == "yes"
    with pytest.raises(TypeError):
        create_http_sync_transport(base_url=channel, auth="t", sign_request=sign_request)


def test_base_without_apps_mount_signs_full_path(server: FakeServer) -> None:
    server.answer("POST", "/root/sync/exchange", 200, _response().to_wire())
    create_http_sync_transport(base_url=f"{server.base}/root/", auth=signer()).exchange(_request())
    sent = server.last()
    assert sent.path == "/root/sync/exchange"
    assert sent.header("X-Starkeep-App-Sig") == expected_sig("POST", "/root/sync/exchange", TS, sent.body)


@pytest.mark.parametrize(
    ("status", "code", "headers", "retry_after"),
    [
        (401, "not_authenticated", {}, None),
        (403, "forbidden", {}, None),
        (429, "throttled", {"Retry-After": "7"}, 7.0),
    ],
)
def test_exchange_error_statuses(
    server: FakeServer,
    channel: str,
    status: int,
    code: str,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", status, _err(code, f"message for {status}"), headers)
    transport = create_http_sync_transport(base_url=channel, auth="t")
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    err = info.value
    assert (err.status, err.code, err.retry_after) == (status, code, retry_after)
    assert f"message for {status}" in err.message
    assert f"HTTP {status}" in str(err)


def test_error_bodies_that_are_not_the_protocol_shape(server: FakeServer, channel: str) -> None:
    route = f"/apps/{APP}/sync/exchange"
    server.answer("POST", route, 502, b"<html>bad gateway</html>", {"Content-Type": "text/html"})
    server.answer("POST", route, 401, {"error": "Missing X-Starkeep-App-{Id,Sig,Ts} headers"})
    transport = create_http_sync_transport(base_url=channel)
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "bad gateway" in info.value.message
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    assert info.value.status == 401 and "Missing X-Starkeep-App" in info.value.message


DJANGO_LIKE_404 = b"""<!DOCTYPE html>
<html lang="en"><head><title>Page not found at /sync/exchange</title>
<style>body { font-family: sans-serif; } #info { background: #f6f6f6; }</style></head>
<body><div id="summary"><h1>Page not found <span>(404)</span></h1>
<table class="meta"><tr><th>Request Method:</th><td>POST</td></tr></table></div>
<div id="info"><p>Using the URLconf defined in <code>example_project.urls</code>, Django tried these URL
patterns, in this order:</p><ol>""" + b"<li>admin/</li>" * 400 + b"</ol></div></body></html>"


def test_a_404_on_exchange_hints_at_the_base_url(server: FakeServer) -> None:
    server.answer("POST", "/sync/exchange", 404, DJANGO_LIKE_404, {"Content-Type": "text/html"})
    transport = create_http_sync_transport(base_url=server.base, auth="t")  # the /apps/<app_id> mount left out
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    err = info.value
    assert (err.status, err.code) == (404, "http_404")
    assert f"{server.base}/sync/exchange" in err.message
    assert "base URL" in err.message and "<server>/apps/<app_id>" in err.message
    assert f"{server.base}/apps/starkeep-drive" in err.message
    # The HTML page comes out as a short line of its text.
    assert "<" not in err.message.replace("<server>", "").replace("<app_id>", "")
    assert "Page not found (404)" in err.message and "font-family" not in err.message
    assert "…" in err.message and len(err.message) < 600


def test_a_404_for_an_unknown_app_says_so(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 404, _err("unknown_app", "No app with this id."))
    with pytest.raises(SyncTransportError) as info:
        create_http_sync_transport(base_url=channel, auth="t").exchange(_request())
    assert info.value.code == "unknown_app" and "No app with this id." in info.value.message
    assert channel in info.value.message


@pytest.mark.parametrize("body", [
    b"<html><body><h1>502 Bad Gateway</h1><hr><center>nginx/1.25.3</center></body></html>",
    b"  502   Bad\r\n\tGateway  \n" + b"x" * 5000,
])
def test_non_json_error_bodies_are_trimmed(server: FakeServer, channel: str, body: bytes) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 502, body, {"Content-Type": "text/html"})
    with pytest.raises(SyncTransportError) as info:
        create_http_sync_transport(base_url=channel).exchange(_request())
    message = info.value.message
    assert message.startswith("502 Bad Gateway")
    assert "<" not in message and "\n" not in message and "  " not in message
    text = message.split(" (HTTP 502")[0]
    assert len(text) <= 200
    assert text.endswith("…") == (len(body) > 1000)


def test_blob_errors_with_html_bodies_are_trimmed_too(server: FakeServer, channel: str) -> None:
    server.answer("PUT", f"/apps/{APP}/files/{quote(KEY, safe='/')}", 413,
                  b"<html><head><title>413</title></head><body>" + b"<p>Request Entity Too Large</p>" * 50
                  + b"</body></html>", {"Content-Type": "text/html"})
    with pytest.raises(SyncTransportError) as info:
        HttpObjectStorage(channel).put(KEY, b"data")
    assert info.value.status == 413
    assert info.value.message.startswith("413 Request Entity Too Large Request Entity")
    assert "<p>" not in info.value.message and len(info.value.message.split(" (HTTP 413")[0]) <= 200


@pytest.mark.parametrize("body", [b"not json", b"[]", json.dumps({"hasMore": "yes"}).encode()])
def test_malformed_200_raises_wire_format_error(server: FakeServer, channel: str, body: bytes) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 200, body, {"Content-Type": "application/json"})
    with pytest.raises(WireFormatError):
        create_http_sync_transport(base_url=channel).exchange(_request())


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/apps/{APP}"


def test_connection_refused_becomes_transport_error() -> None:
    url = _refused_url()
    # Constructors do no network I/O, so building against a dead port is fine.
    transport = create_http_sync_transport(base_url=url, session=create_session(retries=0), timeout=2)
    storage = HttpObjectStorage(url, session=create_session(retries=0), timeout=2)
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    assert info.value.code == "connection_error"
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    with pytest.raises(SyncTransportError):
        storage.has(KEY)


def test_timeout_becomes_transport_error(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/sync/exchange", 200, _response().to_wire(), {DELAY_HEADER: "0.5"})
    transport = create_http_sync_transport(base_url=channel, timeout=0.1)
    with pytest.raises(SyncTransportError) as info:
        transport.exchange(_request())
    assert info.value.code == "timeout"


def test_constructors_are_lazy_and_close_only_owned_sessions() -> None:
    transport = create_http_sync_transport(base_url=_refused_url())
    assert transport._session is None
    borrowed = requests.Session()
    with HttpObjectStorage(_refused_url(), session=borrowed) as storage:
        assert storage.session is borrowed
    assert storage.session is borrowed  # still usable: not ours to close
    with pytest.raises(ValueError):
        create_http_sync_transport(base_url="ftp://x/apps/notes")


# -- object storage ------------------------------------------------------------------


def test_storage_round_trip(server: FakeServer, channel: str) -> None:
    storage = HttpObjectStorage(channel, auth=BearerAuth("tok"))
    assert storage.has(KEY) is False
    assert storage.get(KEY) is None
    assert storage.open(KEY) is None
    storage.put(KEY, b"hello world", "text/plain")
    put = server.last("PUT")
    assert put.path == f"/apps/{APP}/files/{KEY}"
    assert (put.header("Content-Type"), put.header("Authorization")) == ("text/plain", "Bearer tok")
    assert storage.has(KEY) is True
    obj = storage.get(KEY)
    assert obj is not None
    assert (obj.data, obj.content_type, obj.size) == (b"hello world", "text/plain", 11)
    stream = storage.open(KEY)
    assert stream is not None
    with stream:
        assert stream.read(5) == b"hello"
        assert stream.read() == b" world"
    storage.delete(KEY)
    assert KEY not in server.blobs
    storage.delete(KEY)  # 404 is fine
    assert storage.has(KEY) is False
    storage.close()


def test_storage_errors_keep_status(server: FakeServer, channel: str) -> None:
    storage = HttpObjectStorage(channel)
    server.answer("HEAD", f"/apps/{APP}/files/{KEY}", 500)
    with pytest.raises(SyncTransportError) as info:
        storage.has(KEY)
    assert info.value.status == 500
    server.answer("PUT", f"/apps/{APP}/files/{KEY}", 403, _err("forbidden_key", "another app"))
    with pytest.raises(SyncTransportError) as info:
        storage.put(KEY, b"x")
    assert (info.value.status, info.value.code) == (403, "forbidden_key")
    assert KEY not in server.blobs


def test_get_and_head_sign_an_empty_body(server: FakeServer, channel: str) -> None:
    storage = HttpObjectStorage(channel, auth=signer())
    storage.put(KEY, b"payload")
    assert storage.has(KEY)
    assert storage.get(KEY) is not None
    put, head, get = server.requests
    assert put.header("X-Starkeep-App-Sig") == expected_sig("PUT", f"/files/{KEY}", TS, b"payload")
    for req in (head, get):
        assert req.header("X-Starkeep-App-Sig") == expected_sig(req.method, f"/files/{KEY}", TS, b"")
        assert req.header("X-Starkeep-Key-Id") is None


def test_keys_are_percent_quoted_and_signed_decoded(server: FakeServer, channel: str) -> None:
    key = "apps/notes/syncable/a b/ü%#?.bin"
    storage = HttpObjectStorage(channel, auth=signer())
    storage.put(key, b"odd")
    sent = server.last("PUT")
    assert sent.path == f"/apps/{APP}/files/apps/notes/syncable/a%20b/%C3%BC%25%23%3F.bin"
    assert server.blobs[key][0] == b"odd"
    assert sent.header("X-Starkeep-App-Sig") == expected_sig("PUT", f"/files/{key}", TS, b"odd")
    assert storage.get(key) is not None
    for bad in ("a/../b", "/abs", "a//b", ""):
        with pytest.raises(InvalidKeyError):
            storage.has(bad)
    assert len(server.requests) == 2  # refused keys never reach the network


class _OneWayStream(io.RawIOBase):
    """A non-seekable source handing out small reads, like a network body."""

    def __init__(self, data: bytes, step: int = 7_000) -> None:
        self._data, self._pos, self._step = data, 0, step
        self.max_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._step, len(self._data) - self._pos)
        self.max_read = max(self.max_read, len(b))
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_streaming_put_of_file_objects(server: FakeServer, channel: str, tmp_path: Any) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    storage = HttpObjectStorage(channel, auth=signer(), chunk_size=64 * 1024, spool_memory=128 * 1024)
    source = _OneWayStream(data)
    storage.put(KEY, source, "application/x-test")
    sent = server.last("PUT")
    assert sent.body == data and sent.header("Content-Length") == str(len(data))
    assert sent.header("X-Starkeep-App-Sig") == expected_sig("PUT", f"/files/{KEY}", TS, data)
    assert source.max_read <= 64 * 1024  # read in chunks, never whole

    # A seekable file uploads from its current position to its end.
    path = tmp_path / "blob.bin"
    path.write_bytes(b"skip-me|" + data)
    with path.open("rb") as fh:
        fh.seek(8)
        storage.put("apps/notes/syncable/f2", fh)
    assert server.blobs["apps/notes/syncable/f2"] == (data, "application/octet-stream")

    storage.put("apps/notes/syncable/empty", io.BytesIO(b""))
    assert server.blobs["apps/notes/syncable/empty"][0] == b""


def test_put_of_a_failing_stream_sends_nothing(server: FakeServer, channel: str) -> None:
    storage = HttpObjectStorage(channel, auth="tok")
    reader = HashingReader(_OneWayStream(b"tampered"), hashlib.sha256(b"original").hexdigest())
    with pytest.raises(BlobIntegrityError):
        storage.put(KEY, reader)
    assert server.requests == []


def test_put_if_absent_is_one_conditional_put(server: FakeServer, channel: str, tmp_path: Any) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    storage = HttpObjectStorage(channel, auth=signer())
    with path.open("rb") as fh:
        assert storage.put_if_absent(KEY, fh, "text/plain", sha256=digest) == len(data)
    (sent,) = server.requests  # no HEAD first
    assert (sent.method, sent.body, sent.header("Content-Length")) == ("PUT", data, str(len(data)))
    assert sent.header("If-None-Match") == "*"
    assert parse_content_digest(sent.header("Content-Digest") or "") == digest
    assert sent.header("X-Starkeep-App-Sig") == expected_sig("PUT", f"/files/{KEY}", TS, data)
    assert server.blobs[KEY] == (data, "text/plain")

    with path.open("rb") as fh:  # present: the server answers 412, nothing is replaced
        assert storage.put_if_absent(KEY, fh, "text/other", sha256=digest) is None
    assert server.last().method == "PUT" and server.blobs[KEY][1] == "text/plain"

    # From head_first_bytes on, a HEAD goes first so a present blob is not sent again.
    server.requests.clear()
    big_first = HttpObjectStorage(channel, auth=signer(), head_first_bytes=len(data))
    with path.open("rb") as fh:
        assert big_first.put_if_absent(KEY, fh, sha256=digest) is None
    assert [r.method for r in server.requests] == ["HEAD"]


def test_put_if_absent_checks_here_what_the_server_cannot(server: FakeServer, channel: str, tmp_path: Any) -> None:
    wrong = hashlib.sha256(b"original").hexdigest()
    storage = HttpObjectStorage(channel, auth="tok")
    with pytest.raises(BlobIntegrityError):  # cannot seek: spooled and checked before sending
        storage.put_if_absent(KEY, _OneWayStream(b"tampered"), sha256=wrong)
    path = tmp_path / "blob.bin"
    path.write_bytes(b"tampered")
    presigned = HttpObjectStorage(channel, auth="tok", use_presign=True)
    with path.open("rb") as fh, pytest.raises(BlobIntegrityError):  # a presigned URL carries no digest
        presigned.put_if_absent(KEY, fh, sha256=wrong)
    assert [r.method for r in server.requests] == ["HEAD", "HEAD"]
    with path.open("rb") as fh:
        assert presigned.put_if_absent(KEY, fh, sha256=hashlib.sha256(b"tampered").hexdigest()) == 8
    assert server.blobs[KEY][0] == b"tampered"


def test_file_sync_engine_pushes_through_http_storage(server: FakeServer, channel: str) -> None:
    data = b"blob body"
    digest = hashlib.sha256(data).hexdigest()
    key = f"apps/notes/syncable/files/{digest}"
    local = MemoryObjectStorage()
    local.put(key, data, "text/plain")
    remote = HttpObjectStorage(channel, auth=signer())
    manifest = FileSyncManifest(digest, key, len(data), "text/plain")
    assert FileSyncEngine().transfer_file(manifest, local, remote)
    assert server.blobs[key] == (data, "text/plain")
    # ...and pulls back, hash-checked, through the streaming ``open``.
    back = MemoryObjectStorage()
    assert FileSyncEngine().transfer_file(FileSyncManifest(digest, key), remote, back)
    assert back.get(key).data == data  # type: ignore[union-attr]


@pytest.mark.parametrize("absolute", [False, True])
def test_presign_flow(server: FakeServer, channel: str, absolute: bool) -> None:
    server.presign_absolute = absolute
    storage = HttpObjectStorage(channel, auth=signer(), use_presign=True)
    assert storage.get(KEY) is None
    storage.put(KEY, io.BytesIO(b"direct bytes"), "text/plain")
    assert server.blobs[KEY] == (b"direct bytes", "text/plain")
    obj = storage.get(KEY)
    assert obj is not None and obj.data == b"direct bytes"

    absent, presign, upload, confirm, presign_get, download = server.requests
    assert (absent.method, absent.path) == ("GET", f"/apps/{APP}/files/{KEY}/presign")
    assert (presign.method, presign.path) == ("POST", f"/apps/{APP}/files/presign")
    assert json.loads(presign.body) == {"key": KEY, "contentType": "text/plain"}
    assert presign.header("X-Starkeep-App-Sig") == expected_sig("POST", "/files/presign", TS, presign.body)
    assert (upload.method, upload.path) == ("PUT", "/upload/tok0?X-Sig=abc")
    assert upload.header("X-Starkeep-App-Sig") is None  # the URL carries its own authority
    assert upload.header("Content-Type") == "text/plain"
    assert (confirm.path, json.loads(confirm.body)) == (f"/apps/{APP}/files/confirm", {"key": KEY})
    assert presign_get.header("X-Starkeep-App-Sig") == expected_sig("GET", f"/files/{KEY}/presign", TS, b"")
    assert download.path.startswith("/download/") and download.header("X-Starkeep-App-Sig") is None


def test_presigned_url_credentials_stay_out_of_errors(server: FakeServer, channel: str) -> None:
    dead = _refused_url().replace(f"/apps/{APP}", "/upload/x?X-Amz-Signature=topsecret")
    server.answer("POST", f"/apps/{APP}/files/presign", 200, {"url": dead})
    storage = HttpObjectStorage(channel, session=create_session(retries=0), use_presign=True)
    with pytest.raises(SyncTransportError) as info:
        storage.put(KEY, b"x")
    assert info.value.code == "connection_error"
    assert "topsecret" not in str(info.value)


def test_netrc_never_overrides_the_bearer_token(
    server: FakeServer, channel: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    HttpObjectStorage(channel, auth="tok").has(KEY)
    assert server.last().header("Authorization") == "Bearer tok"


def test_presign_upload_not_confirmed(server: FakeServer, channel: str) -> None:
    server.answer("POST", f"/apps/{APP}/files/confirm", 200, {"ok": False})
    storage = HttpObjectStorage(channel, use_presign=True)
    with pytest.raises(SyncTransportError) as info:
        storage.put(KEY, b"x")
    assert info.value.code == "not_confirmed"


# -- auth helpers --------------------------------------------------------------------


def test_resolve_auth_forms() -> None:
    assert isinstance(resolve_auth(None), NoAuth)
    assert resolve_auth("abc").headers("GET", "/x", b"") == {"Authorization": "Bearer abc"}
    app = signer()
    assert resolve_auth(app) is app
    fn: Callable[[str, str, bytes], dict[str, str]] = lambda m, p, b: {"X-Sig": f"{m}{p}{b!r}"}  # noqa: E731
    cb = resolve_auth(fn)
    assert isinstance(cb, CallableAuth)
    assert cb.headers("head", "/files/k", b"ignored") == {"X-Sig": "HEAD/files/kb''"}
    with pytest.raises(TypeError):
        resolve_auth(42)
    with pytest.raises(TypeError):
        resolve_auth(requests.auth.HTTPBasicAuth("u", "p"))
    assert "very-secret" not in repr(BearerAuth("very-secret"))


def test_parse_retry_after() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


def test_sessions_read_the_environment_only_when_it_sets_a_proxy_or_ca_bundle(monkeypatch: Any) -> None:
    from starkeep_sync.client.session import create_session

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.lower().endswith("_ca_bundle"):
            monkeypatch.delenv(name)
    assert create_session().trust_env is False
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert create_session().trust_env is True
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert create_session().trust_env is True
