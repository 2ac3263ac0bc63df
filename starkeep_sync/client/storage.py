"""``ObjectStorage`` over HTTP: the ``/files/...`` routes of PROTOCOL §7.

Blobs are streamed both ways. Uploads always carry a ``Content-Length``
(S3 presigned PUTs and WSGI servers need one; chunked uploads are not used),
so a stream of unknown length is first spooled to a temporary file; a
seekable file is sent as it is, in ``chunk_size`` blocks.

:meth:`HttpObjectStorage.put_if_absent` is what blob pushes use: one
conditional ``PUT`` (``If-None-Match: *``, answered 412 when the key is
present) with the expected sha256 in ``Content-Digest`` for the server to
check, so the bytes are neither hashed here nor preceded by a ``HEAD``.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, cast
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..core.blobs import CHUNK_SIZE, CONTENT_DIGEST_HEADER, HashingReader, content_digest
from ..core.constants import CONFIRM_PATH, FILES_PATH, PRESIGN_PUT_PATH
from ..core.exceptions import SyncTransportError, WireFormatError
from ..core.keys import check_key_syntax
from ..core.protocols import StoredObject
from .auth import AuthLike
from .session import (
    DEFAULT_TIMEOUT,
    ChannelClient,
    Timeout,
    dumps_json,
    loads_json,
    raise_for_response,
    send,
)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: A spooled upload stays in memory up to this size, then moves to disk.
DEFAULT_SPOOL_MEMORY = 8 * 1024 * 1024
#: ``put_if_absent`` asks ``HEAD`` first from this size on: a conditional PUT of a
#: key the server already holds would send the whole body for nothing. The engine
#: skips keys it knows the server holds, so this only matters when it is unsure, and
#: then mostly for new blobs, which the HEAD would only delay.
DEFAULT_HEAD_FIRST_BYTES = 4 * 1024 * 1024
#: A server reads a signed PUT body before it knows the sender, so it caps it (its
#: MAX_SIGNED_PUT_BYTES, 8 MiB by default): larger signed uploads go through presign.
DEFAULT_SIGNED_PUT_LIMIT = 8 * 1024 * 1024


class _UploadBody:
    """A window ``[start, start + length)`` of a seekable stream, as a request body.

    ``__len__`` gives requests the Content-Length; ``tell``/``seek`` let
    urllib3 rewind it before a retry; ``__iter__`` hands out ``chunk_size``
    blocks. Deliberately without ``read``: urllib3 reads such a body 16 KiB at
    a time (a Python call and a ``send`` per 16 KiB), but sends an iterable's
    blocks as they come. Not an ``io.IOBase`` either: requests would read
    ``IOBase.tell()`` errors as "length unknown" and fall back to chunked encoding.
    """

    def __init__(self, stream: IO[bytes], start: int, length: int, chunk_size: int) -> None:
        self._stream = stream
        self._start = start
        self._length = length
        self._chunk_size = chunk_size
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or not 0 <= offset <= self._length:
            raise OSError("upload bodies only seek to an absolute offset inside the body")
        self._stream.seek(self._start + offset)
        self._pos = offset
        return offset

    def _read(self, size: int) -> bytes:
        remaining = self._length - self._pos
        if remaining <= 0:
            return b""
        chunk = self._stream.read(min(size, remaining))
        if not chunk:
            # Sending fewer bytes than announced would hang the server.
            raise SyncTransportError("upload stream ended before its measured length", code="short_body")
        self._pos += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._read(self._chunk_size):
            yield chunk


class _ResponseStream(io.RawIOBase):
    """A streamed response body as a binary file; ``close()`` releases the connection.

    ``read(n)`` hands over what urllib3 returns, without the copies a
    ``readinto`` through ``iter_content`` would add (a blob is read 1 MiB at a time).
    """

    def __init__(self, response: requests.Response, chunk_size: int) -> None:
        self._response = response
        self._raw = response.raw
        # Content-Encoding is undone by urllib3's read; any other raw body (an
        # adapter's BytesIO) is read as it is.
        self._decode = isinstance(self._raw, urllib3.response.BaseHTTPResponse)
        self._chunk_size = chunk_size
        self.content_type: str | None = response.headers.get("Content-Type")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            if self._decode:
                return self._raw.read(size, decode_content=True)  # type: ignore[no-any-return]
            return self._raw.read(size)  # type: ignore[no-any-return]
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as err:
            raise SyncTransportError(f"blob download broke off: {err}", code="connection_error") from err

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def readall(self) -> bytes:
        # The default reads in 8 KiB steps; take whole chunks instead.
        parts = []
        while chunk := self.read(self._chunk_size):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


class HttpObjectStorage(ChannelClient):
    """Blob storage of a remote channel, addressed by key.

    ``use_presign=True`` moves the bytes through URLs the server hands out
    (``POST /files/presign`` + ``POST /files/confirm`` to upload,
    ``GET /files/<key>/presign`` to download), e.g. straight to S3.
    """

    def __init__(
        self,
        base_url: str,
        auth: AuthLike = None,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        use_presign: bool = False,
        chunk_size: int = CHUNK_SIZE,
        *,
        spool_memory: int = DEFAULT_SPOOL_MEMORY,
        head_first_bytes: int = DEFAULT_HEAD_FIRST_BYTES,
        signed_put_limit: int = DEFAULT_SIGNED_PUT_LIMIT,
    ) -> None:
        super().__init__(base_url, auth=auth, session=session, timeout=timeout)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.use_presign = use_presign
        self.chunk_size = chunk_size
        self.spool_memory = spool_memory
        self.head_first_bytes = head_first_bytes
        self.signed_put_limit = signed_put_limit

    # -- ObjectStorage -----------------------------------------------------------

    def has(self, key: str) -> bool:
        """``True`` on 200, ``False`` on 404; ``SyncTransportError`` otherwise."""
        response = self._call("HEAD", self._file_route(key))
        if response.status_code == 404:
            return False
        raise_for_response(response)
        return True

    def open(self, key: str) -> IO[bytes] | None:
        """A streaming binary file of the blob (caller closes it); ``None`` when absent."""
        route = self._file_route(key)
        if self.use_presign:
            data = self._json_call("GET", route + "/presign", absent_ok=True)
            if data is None:
                return None
            url = self._presigned_url(data)
            # A presigned URL carries its own credentials; ours must not leak to it.
            response = send(
                self.session, "GET", url, timeout=self.timeout, stream=True, allow_redirects=True
            )
        else:
            response = self._call("GET", route, stream=True)
        if response.status_code == 404:
            response.close()
            return None
        raise_for_response(response)
        return cast(IO[bytes], _ResponseStream(response, self.chunk_size))

    def get(self, key: str) -> StoredObject | None:
        """The whole blob in memory; prefer :meth:`open` for large blobs."""
        stream = self.open(key)
        if stream is None:
            return None
        with stream:
            data = stream.read()
            content_type = cast(_ResponseStream, stream).content_type
        return StoredObject(data, content_type, len(data))

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        """Upload ``data`` (bytes, or a binary stream from its position to its end).

        A non-seekable stream is spooled first, so a stream that raises while
        being read (e.g. an integrity check at EOF) raises before anything is sent.
        """
        route = self._file_route(key)
        ctype = content_type or DEFAULT_CONTENT_TYPE
        with self._upload_body(data) as body:
            if self._presigns(len(body)):
                self._put_presigned(key, body, ctype)
                return
            headers = {"Content-Type": ctype, **self._auth_headers("PUT", route, body)}
            response = send(
                self.session, "PUT", self.url_for(route), data=body, headers=headers, timeout=self.timeout
            )
            raise_for_response(response)

    def put_if_absent(self, key: str, data: IO[bytes], content_type: str | None = None, *,
                      sha256: str | None = None) -> int | None:
        """Upload ``data`` (from its position to its end) unless the server holds ``key``.

        Returns the bytes sent, or ``None`` when the key was already there. A
        seekable stream goes out in one conditional ``PUT`` carrying ``sha256``
        as ``Content-Digest``; the server checks both, so nothing is hashed
        here. Presigned uploads and streams that cannot seek are checked
        against ``sha256`` here before any byte is sent.
        """
        route = self._file_route(key)
        window = _seekable_window(data)
        if window is None or self._presigns(window[1]):
            if self.has(key):
                return None
            return self._put_checked_here(key, data, content_type, sha256, window)
        start, length = window
        if length >= self.head_first_bytes and self.has(key):
            return None
        body: bytes | _UploadBody = _UploadBody(data, start, length, self.chunk_size) if length else b""
        headers = {"Content-Type": content_type or DEFAULT_CONTENT_TYPE, "If-None-Match": "*"}
        if sha256 is not None:
            headers[CONTENT_DIGEST_HEADER] = content_digest(sha256)
        headers.update(self._auth_headers("PUT", route, body))
        response = send(self.session, "PUT", self.url_for(route), data=body, headers=headers, timeout=self.timeout)
        if response.status_code == 412:
            response.close()
            return None
        raise_for_response(response)
        return length

    def _put_checked_here(self, key: str, data: IO[bytes], content_type: str | None, sha256: str | None,
                          window: tuple[int, int] | None) -> int:
        if window is None:
            # Spooled before sending (see put), so a mismatch raises before the first byte goes out.
            reader = HashingReader(data, sha256)
            self.put(key, reader, content_type)
            return reader.bytes_read
        start, length = window
        if sha256 is not None:
            # One read-only pass over the file (instead of a spooled copy), then the upload.
            checker = HashingReader(data, sha256)
            while checker.read(self.chunk_size):
                pass
            data.seek(start)
        self.put(key, data, content_type)
        return length

    def delete(self, key: str) -> None:
        """Remove the blob; an absent key is not an error."""
        response = self._call("DELETE", self._file_route(key))
        if response.status_code != 404:
            raise_for_response(response)

    # -- helpers -------------------------------------------------------------------

    def _file_route(self, key: str) -> str:
        # Checked here too: urllib3 would collapse '..' segments and silently
        # address another key.
        check_key_syntax(key)
        return FILES_PATH + key

    def _call(
        self,
        method: str,
        route: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        all_headers.update(self.auth.headers(method, self.signed_path(route), body or b""))
        return send(
            self.session,
            method,
            self.url_for(route),
            data=body,
            headers=all_headers,
            timeout=self.timeout,
            stream=stream,
        )

    def _json_call(
        self, method: str, route: str, payload: Any = None, *, absent_ok: bool = False
    ) -> dict[str, Any] | None:
        """A JSON request/response round; ``None`` on 404 when ``absent_ok``."""
        headers = {"Accept": "application/json"}
        body = None
        if payload is not None:
            body = dumps_json(payload)
            headers["Content-Type"] = "application/json"
        response = self._call(method, route, body=body, headers=headers)
        if absent_ok and response.status_code == 404:
            response.close()
            return None
        raise_for_response(response)
        try:
            data = loads_json(response.content)
        except (ValueError, requests.RequestException) as err:
            raise WireFormatError("body", f"{method} {route} answered with invalid JSON ({err})") from err
        if not isinstance(data, dict):
            raise WireFormatError("body", f"{method} {route} must answer with a JSON object")
        return data

    def _presigned_url(self, data: Mapping[str, Any]) -> str:
        url = data.get("url")
        if not isinstance(url, str) or not url:
            raise WireFormatError("url", "presign response must carry a non-empty 'url'")
        # Absolute (S3) or relative to the server origin (file-system storage).
        resolved = urljoin(self.origin + "/", url)
        if urlsplit(resolved).scheme not in ("http", "https"):
            raise WireFormatError("url", "presigned URL must be http(s)")
        return resolved

    def _put_presigned(self, key: str, body: bytes | _UploadBody, content_type: str) -> None:
        data = self._json_call("POST", PRESIGN_PUT_PATH, {"key": key, "contentType": content_type})
        assert data is not None
        url = self._presigned_url(data)
        # Same Content-Type as presigned: S3 may have signed it.
        response = send(
            self.session, "PUT", url, data=body, headers={"Content-Type": content_type}, timeout=self.timeout
        )
        raise_for_response(response)
        confirm = self._json_call("POST", CONFIRM_PATH, {"key": key})
        if not confirm or confirm.get("ok") is not True:
            raise SyncTransportError(f"server did not confirm the upload of {key!r}", code="not_confirmed")

    def _presigns(self, length: int) -> bool:
        """Whether an upload of ``length`` bytes goes through ``files/presign`` rather than a direct PUT."""
        return self.use_presign or (getattr(self.auth, "signs_body", True) and length > self.signed_put_limit)

    def _auth_headers(self, method: str, route: str, body: bytes | _UploadBody) -> dict[str, str]:
        path = self.signed_path(route)
        if isinstance(body, bytes):
            return self.auth.headers(method, path, body)
        if not getattr(self.auth, "signs_body", True):
            return self.auth.headers(method, path, b"")
        try:
            streaming = getattr(self.auth, "headers_for_stream", None)
            if callable(streaming):
                return dict(streaming(method, path, iter(body)))
            # A plain sign_request callable takes bytes only: it needs the body whole.
            return self.auth.headers(method, path, b"".join(body))
        finally:
            body.seek(0)

    @contextmanager
    def _upload_body(self, data: bytes | IO[bytes]) -> Iterator[bytes | _UploadBody]:
        if isinstance(data, (bytes, bytearray, memoryview)):
            yield bytes(data)
            return
        window = _seekable_window(data)
        if window is not None:
            start, length = window
            # requests falls back to chunked encoding for an empty stream body.
            yield _UploadBody(data, start, length, self.chunk_size) if length else b""
            return
        with tempfile.SpooledTemporaryFile(max_size=self.spool_memory) as spool:
            while chunk := data.read(self.chunk_size):
                spool.write(chunk)
            length = spool.tell()
            spool.seek(0)
            yield _UploadBody(cast(IO[bytes], spool), 0, length, self.chunk_size) if length else b""


def _seekable_window(stream: IO[bytes]) -> tuple[int, int] | None:
    """``(position, bytes to its end)`` of a seekable stream, else ``None``."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return start, max(0, end - start)
