"""The shared HTTP plumbing: one pooled ``requests.Session``, error mapping,
JSON helpers and the base every channel client builds on.

Nothing here does network I/O until a request is made, so constructing a
client is always cheap and safe (django-anymail's rule).
"""

from __future__ import annotations

import email.utils
import html
import math
import os
import re
import threading
import time
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..core.exceptions import SyncTransportError
from ..core.wire import decode_json, encode_json
from .auth import AuthLike, RequestAuth, resolve_auth

#: ``timeout`` accepted by every client: seconds, or ``(connect, read)``.
Timeout = float | tuple[float, float]

DEFAULT_TIMEOUT: Timeout = 30
USER_AGENT = "starkeep-sync-python"

# Methods urllib3 may replay after a read error. POST is left out so a slow
# exchange is never silently sent twice; connection failures (nothing sent
# yet) are retried for every method.
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_ERROR_BODY_LIMIT = 64 * 1024
#: How much of an error body that is not our JSON (a proxy's HTML page) ends up in a message.
ERROR_TEXT_LIMIT = 200
_INVISIBLE = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_APP_MOUNT = re.compile(r"/apps/[^/]+$")


def create_session(
    *,
    pool_connections: int = 4,
    pool_maxsize: int = 16,
    retries: int = 2,
    backoff_factor: float = 0.2,
) -> requests.Session:
    """A pooled session with bounded retries for connection failures and
    idempotent methods. Status codes are never retried here: a 429/503 comes
    back to the caller with ``retry_after`` so the sync scheduler decides."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=0,
        other=0,
        allowed_methods=_RETRYABLE_METHODS,
        backoff_factor=backoff_factor,
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=retry)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # Environment proxies and CA bundles stay honoured, but a session-level
    # auth stops requests from filling Authorization from ~/.netrc, which would
    # overwrite our bearer header and break presigned S3 URLs.
    session.auth = _keep_request_as_is
    # With no proxy or CA-bundle variable set, the environment cannot change a
    # request, so skip re-reading it on every request (about 0.3 ms each).
    session.trust_env = _environment_matters()
    return session


_ENV_SETTINGS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle")


def _environment_matters() -> bool:
    return any(name.lower() in _ENV_SETTINGS for name in os.environ)


def _keep_request_as_is(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


# -- JSON ----------------------------------------------------------------------------


def dumps_json(obj: Any) -> bytes:
    """Compact JSON bytes: exactly what is sent, and what a signature covers."""
    return encode_json(obj)


def loads_json(data: bytes) -> Any:
    """Parse JSON bytes; raises ``ValueError`` on malformed input."""
    return decode_json(data)


# -- errors --------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _read_error_body(response: requests.Response) -> bytes:
    # Bounded, because an error page from a proxy can be arbitrarily large
    # and the response may be a stream.
    buf = bytearray()
    try:
        for chunk in response.iter_content(8192):
            buf += chunk
            if len(buf) >= _ERROR_BODY_LIMIT:
                break
    except requests.RequestException:
        pass  # a truncated error body still has a status worth reporting
    finally:
        response.close()
    return bytes(buf[:_ERROR_BODY_LIMIT])


def _error_fields(body: bytes, encoding: str | None) -> tuple[str | None, str | None]:
    """``(code, message)`` from ``{"error": {"code", "message"}}``, also accepting
    the reference's ``{"error": "<text>"}`` and DRF's ``{"detail": ...}``."""
    try:
        data = loads_json(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code, message = err.get("code"), err.get("message")
            return (
                code if isinstance(code, str) else None,
                message if isinstance(message, str) else None,
            )
        if isinstance(err, str):
            return None, err
        detail = data.get("detail")
        if isinstance(detail, str):
            return None, detail
    return None, (plain_text(body.decode(encoding or "utf-8", errors="replace")) or None)


def plain_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """An error page as one short line: HTML tags (and script/style) dropped, whitespace collapsed,
    cut to ``limit`` characters with an ellipsis."""
    if "<" in text and ">" in text:
        text = html.unescape(_TAG.sub(" ", _INVISIBLE.sub(" ", text)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def transport_error_from_response(response: requests.Response) -> SyncTransportError:
    """A ``SyncTransportError`` for a non-2xx response, with the status, the
    server's code and message, and ``retry_after`` from ``Retry-After``."""
    status = response.status_code
    code, message = _error_fields(_read_error_body(response), response.encoding)
    request = response.request
    where = f"{request.method} {urlsplit(request.url or '').path}" if request is not None else "request"
    text = f"{message or response.reason or 'error'} (HTTP {status} from {where})"
    return SyncTransportError(
        text,
        status=status,
        code=code or f"http_{status}",
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def raise_for_response(response: requests.Response, ok: Collection[int] | None = None) -> None:
    """Raise ``SyncTransportError`` unless the status is 2xx (or in ``ok``)."""
    status = response.status_code
    if (ok is not None and status in ok) or (ok is None and 200 <= status < 300):
        return
    raise transport_error_from_response(response)


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: Timeout,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
    stream: bool = False,
    allow_redirects: bool = False,
) -> requests.Response:
    """``session.request`` with every ``requests`` failure turned into a
    ``SyncTransportError`` (the original chained as ``__cause__``)."""
    try:
        return session.request(
            method,
            url,
            data=data,
            headers=dict(headers or {}),
            timeout=timeout,
            stream=stream,
            allow_redirects=allow_redirects,
        )
    except requests.RequestException as err:
        # A presigned URL's query string is a credential: keep it out of messages.
        query = urlsplit(url).query
        shown = url.replace(f"?{query}", "") if query else url
        detail = str(err).replace(query, "...") if query else str(err)
        if isinstance(err, requests.Timeout):
            raise SyncTransportError(f"{method} {shown} timed out: {detail}", code="timeout") from err
        if isinstance(err, requests.ConnectionError):
            raise SyncTransportError(f"cannot reach {shown}: {detail}", code="connection_error") from err
        raise SyncTransportError(f"{method} {shown} failed: {detail}") from err


# -- base client ---------------------------------------------------------------------


class ChannelClient:
    """What the exchange transport and the object storage share: a channel
    base URL, an auth scheme, a lazily created session and a timeout.

    Override :meth:`create_session` to customise the session (proxies, TLS,
    adapters); or pass ``session=`` to share one, which is then not closed here.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: AuthLike = None,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query string or fragment")
        self.base_url = base_url.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        base_path = unquote(parts.path).rstrip("/")
        # The signed path is relative to the /apps/<appId> mount (PROTOCOL §8);
        # a base without that mount signs the full path.
        self._signed_prefix = "" if _APP_MOUNT.search(base_path) else base_path
        self.auth: RequestAuth = resolve_auth(auth)
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._session_lock = threading.Lock()

    def create_session(self) -> requests.Session:
        """The session used when none was passed; override to customise."""
        return create_session()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self.create_session()
        return self._session

    def url_for(self, route: str) -> str:
        """Absolute URL of ``route`` (decoded, starting with ``/``) under the base."""
        return self.base_url + quote(route, safe="/")

    def signed_path(self, route: str) -> str:
        return self._signed_prefix + route

    def close(self) -> None:
        """Close the session if this client created it; a borrowed one stays open.
        A closed client may be used again: it then makes a fresh session."""
        if not self._owns_session:
            return
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, auth={self.auth!r})"
