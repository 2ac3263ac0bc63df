"""The exchange transport over HTTP (PROTOCOL §4): ``POST <base>/sync/exchange``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
import requests
from requests.adapters import HTTPAdapter

from ..core.constants import CHANGES_PATH, DRIVE_APP_ID, EXCHANGE_PATH
from ..core.exceptions import SyncTransportError, WireFormatError
from ..core.wire import MalformedJSONError, SyncExchangeRequest, SyncExchangeResponse, decode_response, encode_request
from .auth import AuthLike, CallableAuth, SignRequest
from .session import (
    DEFAULT_TIMEOUT,
    ChannelClient,
    Timeout,
    raise_for_response,
    send,
    transport_error_from_response,
)


class ChangesAnswer(msgspec.Struct, frozen=True):
    """One answer of ``GET sync/changes`` (PROTOCOL §7d): whether the channel moved, and the cursor to wait from.

    The server's OpenAPI schema of the answer is generated from this type, so the two cannot drift.
    """

    changed: bool
    cursor: Annotated[str, msgspec.Meta(min_length=1, description="Opaque; pass it back as `cursor`.")]


_CHANGES_DECODER = msgspec.json.Decoder(ChangesAnswer)


#: How much longer than the wait it asked for the client reads before it gives up on the server.
LONG_POLL_MARGIN = 10.0


class HttpSyncTransport(ChannelClient):
    """A requester's ``SyncTransport`` to one channel of a remote server."""

    #: The engine may run ``exchange_json`` on its prefetch thread; it waits for
    #: that call before the next, so the session is never used by two threads at once.
    prefetch_safe = True

    _live_session: requests.Session | None = None
    _live_lock = threading.Lock()

    def wait_for_changes(self, cursor: str | None = None, timeout: float = 25.0) -> ChangesAnswer:
        """``GET sync/changes``: at once without ``cursor`` (the current one), else when the channel moves
        past ``cursor`` or ``timeout`` seconds pass (the server may hold it less).

        Runs on a session of its own, so a supervisor's long-poll thread never shares the engine's
        connection pool. Signed like every request (an app signature covers the empty GET body).
        Raises ``SyncTransportError`` (``status`` 404 from a server without the route, such as the
        reference) and ``WireFormatError`` for an answer that is not ``{"changed", "cursor"}``.
        """
        params: dict[str, str] = {"timeout": f"{max(0.0, timeout):g}"}
        if cursor is not None:
            params["cursor"] = cursor
        headers = {"Accept": "application/json"}
        headers.update(self.auth.headers("GET", self.signed_path(CHANGES_PATH), b""))
        connect = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout
        response = send(self.live_session, "GET", f"{self.url_for(CHANGES_PATH)}?{urlencode(params)}",
                        headers=headers, timeout=(connect, timeout + LONG_POLL_MARGIN))
        raise_for_response(response)
        try:
            return _CHANGES_DECODER.decode(response.content)
        except (msgspec.DecodeError, requests.RequestException) as err:
            raise WireFormatError("body", f"changes answer is not {{changed, cursor}} ({err})") from None

    @property
    def live_session(self) -> requests.Session:
        """The long-poll's own session: made by ``create_session``, without urllib3's read retries
        (a long-poll that timed out is asked again by its caller, with its own backoff)."""
        with self._live_lock:
            if self._live_session is None:
                session = self.create_session()
                for adapter in session.adapters.values():
                    if isinstance(adapter, HTTPAdapter):
                        adapter.max_retries = adapter.max_retries.new(read=0, total=None)
                self._live_session = session
            return self._live_session

    def close(self) -> None:
        with self._live_lock:
            live, self._live_session = self._live_session, None
        if live is not None:
            live.close()
        super().close()

    def exchange(self, request: SyncExchangeRequest) -> SyncExchangeResponse:
        """Send one round; the parsed response.

        Raises ``SyncTransportError`` when the server is unreachable or answers
        non-2xx (``status``, ``code``, ``retry_after`` set), and
        ``WireFormatError`` when a 2xx body is not a valid exchange response.
        """
        return self._answer(self._post(request), decode_response)  # type: ignore[no-any-return]

    def exchange_json(self, request: SyncExchangeRequest) -> bytes:
        """Send one round; the 2xx response body as received: JSON bytes, not yet decoded.

        ``exchange`` less ``decode_response``: the engine decodes the bytes itself (one pass in C, no
        intermediate dicts), in the round, also when this call ran on its prefetch thread. Raises
        ``SyncTransportError`` as ``exchange`` does, ``truncated_response`` included: a body whose end only
        the connection closing marked is first checked to be whole JSON. Nothing else is checked here.
        """
        response = self._post(request)
        # A short body with a Content-Length or chunked framing already failed to read (``send``); an
        # unframed one reads as if whole, and only here is the framing known, not in the engine's decode.
        return self._answer(response, _complete_json if _unframed(response) else _as_is)  # type: ignore[no-any-return]

    def _post(self, request: SyncExchangeRequest) -> requests.Response:
        body = encode_request(request)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        # Signed over the exact bytes sent, so serialise once and reuse.
        headers.update(self.auth.headers("POST", self.signed_path(EXCHANGE_PATH), body))
        url = self.url_for(EXCHANGE_PATH)
        response = send(self.session, "POST", url, data=body, headers=headers, timeout=self.timeout)
        if response.status_code == 404:
            raise self._not_found(response, url)
        raise_for_response(response)
        return response

    @staticmethod
    def _answer(response: requests.Response, parse: Callable[[bytes], Any]) -> Any:
        try:
            return parse(response.content)
        except MalformedJSONError as err:
            raise _broken_off(response, err) or err from None
        except requests.RequestException as err:
            raise _broken_off(response, err) or WireFormatError(
                "body", f"exchange response could not be read ({err})") from err

    def _not_found(self, response: requests.Response, url: str) -> SyncTransportError:
        """A 404 on the exchange route almost always means a base URL without the channel mount."""
        err = transport_error_from_response(response)
        hint = (f"{err.message}. Nothing answers {url}: the base URL {self.base_url} is probably wrong; "
                f"it should be <server>/apps/<app_id>, e.g. {self.origin}/apps/{DRIVE_APP_ID}")
        if err.code == "unknown_app":
            hint = f"{err.message}. Register the app on the server, or check the app id in {self.base_url}"
        return SyncTransportError(hint, status=err.status, code=err.code, retry_after=err.retry_after)


def _broken_off(response: requests.Response, err: Exception) -> SyncTransportError | None:
    """A transport failure to retry when a body that does not parse may just have been cut short."""
    if not _unframed(response):
        return None
    # No Content-Length and not chunked: the body ran until the connection closed. A connection cut
    # inside the header block looks exactly like this (the headers end at EOF, the body is empty),
    # so it is a transport failure to retry, not a server that speaks another protocol.
    return SyncTransportError(
        f"exchange response broke off ({err})", status=response.status_code, code="truncated_response")


def _as_is(body: bytes) -> bytes:
    return body


def _complete_json(body: bytes) -> bytes:
    """``body``, once it is known to be whole JSON; ``MalformedJSONError`` if not (a cut body never is)."""
    try:
        # Decoding into ``Raw`` only checks the syntax; nothing is built.
        msgspec.json.decode(body, type=msgspec.Raw)
    except (msgspec.DecodeError, RecursionError) as err:
        raise MalformedJSONError("body", f"is not valid JSON ({err})") from None
    return body


def _unframed(response: requests.Response) -> bool:
    """Whether the body's end was only marked by the connection closing."""
    return "Content-Length" not in response.headers and (
        "chunked" not in response.headers.get("Transfer-Encoding", "").lower()
    )


def create_http_sync_transport(
    *,
    base_url: str,
    auth: AuthLike = None,
    session: requests.Session | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    sign_request: SignRequest | None = None,
) -> HttpSyncTransport:
    """An HTTP transport for the channel at ``base_url``.

    ``base_url`` is the channel base (``https://host/apps/notes``, or
    ``https://host/apps/starkeep-drive`` for the Drive channel). ``auth`` is a
    bearer token string, a :class:`BearerAuth` / :class:`AppSignatureAuth`, or
    a callable; ``sign_request(method, path, body) -> headers`` is the
    TypeScript-style alternative. No network I/O happens until ``exchange``.
    """
    if sign_request is not None:
        if auth is not None:
            raise TypeError("pass either auth or sign_request, not both")
        auth = CallableAuth(sign_request)
    return HttpSyncTransport(base_url, auth=auth, session=session, timeout=timeout)
