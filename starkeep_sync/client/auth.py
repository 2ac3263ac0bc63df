"""Request authentication for the HTTP client (PROTOCOL §8).

Every scheme is an object with ``headers(method, path, body) -> dict``.
``path`` is the *signed path*: the request path relative to the
``/apps/<appId>`` mount, query string removed, percent-decoded. The client
computes it; schemes never parse URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ..core.constants import HEADER_APP_ID, HEADER_APP_SIG, HEADER_APP_TS, HEADER_KEY_ID

#: The TypeScript-style signer: ``sign_request(method, path, body) -> headers``.
SignRequest = Callable[[str, str, bytes], Mapping[str, str]]

#: Methods whose signature covers an empty body whatever is sent (PROTOCOL §8).
BODYLESS_METHODS = frozenset({"GET", "HEAD"})


@runtime_checkable
class RequestAuth(Protocol):
    """What the client needs from an authentication scheme.

    ``headers`` returns the headers to add to one request; it must not do I/O.
    An implementation may set ``signs_body = False`` so the client never reads
    a streamed body just to authenticate it, and may offer
    ``headers_for_stream(method, path, chunks)`` to sign a body it is handed in
    chunks (otherwise a streamed body is joined into bytes first).
    """

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]: ...


class NoAuth:
    """Sends no credentials (``/health``, or a server behind another gate)."""

    signs_body = False

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth:
    """Device token: ``Authorization: Bearer <token>``."""

    signs_body = False

    def __init__(self, token: str) -> None:
        if not token or any(c in token for c in "\r\n"):
            raise ValueError("a bearer token must be a non-empty single-line string")
        self._token = token

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def __repr__(self) -> str:
        # Never print the token itself (logs, tracebacks).
        return "BearerAuth(token=***)"


class AppSignatureAuth:
    """Starkeep app signature, byte-compatible with the TypeScript signer.

    ``Sig = hex(HMAC-SHA256(secret, f"{appId}:{METHOD}:{path}:{ts}:" + body))``.
    ``clock`` returns the current time in integer milliseconds (tests pin it).
    ``key_id`` is sent as ``X-Starkeep-Key-Id`` so a multi-owner server can pick
    the secret without trying each one; it is not part of the signed message.
    """

    signs_body = True

    def __init__(
        self,
        app_id: str,
        secret: str | bytes,
        key_id: str | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if not app_id or ":" in app_id:
            raise ValueError("app_id must be non-empty and must not contain ':'")
        if not secret:
            raise ValueError("secret must not be empty")
        self.app_id = app_id
        # A str secret is keyed by its UTF-8 bytes, as Node's createHmac does.
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        self.key_id = key_id
        self._clock = clock or _now_ms

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return self.headers_for_stream(method, path, (body,))

    def headers_for_stream(self, method: str, path: str, chunks: Iterable[bytes]) -> dict[str, str]:
        """Sign a body given as chunks, so a large blob is never joined in memory."""
        method = method.upper()
        ts = str(int(self._clock()))
        mac = hmac.new(self._secret, f"{self.app_id}:{method}:{path}:{ts}:".encode(), hashlib.sha256)
        if method not in BODYLESS_METHODS:
            for chunk in chunks:
                mac.update(chunk)
        out = {HEADER_APP_ID: self.app_id, HEADER_APP_SIG: mac.hexdigest(), HEADER_APP_TS: ts}
        if self.key_id is not None:
            out[HEADER_KEY_ID] = self.key_id
        return out

    def __repr__(self) -> str:
        return f"AppSignatureAuth(app_id={self.app_id!r}, key_id={self.key_id!r})"


class CallableAuth:
    """Adapts a plain ``sign_request(method, path, body) -> dict`` function."""

    signs_body = True

    def __init__(self, sign_request: SignRequest) -> None:
        self._sign = sign_request

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        method = method.upper()
        if method in BODYLESS_METHODS:
            body = b""
        return {str(k): str(v) for k, v in dict(self._sign(method, path, body)).items()}

    def __repr__(self) -> str:
        return f"CallableAuth({self._sign!r})"


AuthLike = RequestAuth | SignRequest | str | None


def resolve_auth(auth: Any) -> RequestAuth:
    """One interface for every accepted form: ``None`` (no auth), a ``str``
    (bearer token), an object with ``headers()``, or a ``sign_request`` callable."""
    if auth is None:
        return NoAuth()
    if isinstance(auth, str):
        return BearerAuth(auth)
    if _is_requests_auth(auth):
        # Its __call__ takes a PreparedRequest, not (method, path, body).
        raise TypeError("requests auth objects are not supported: pass a token or a starkeep auth object")
    if callable(getattr(auth, "headers", None)):
        return auth  # type: ignore[no-any-return]
    if callable(auth):
        return CallableAuth(auth)
    raise TypeError(f"unsupported auth {type(auth).__name__}: pass a token, an auth object or a callable")


def _is_requests_auth(obj: Any) -> bool:
    try:
        from requests.auth import AuthBase
    except ImportError:  # pragma: no cover - requests is a dependency
        return False
    return isinstance(obj, AuthBase)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
