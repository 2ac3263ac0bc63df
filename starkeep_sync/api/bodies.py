"""Request bodies: read exactly, bounded, and kept apart from every owner until the sender is proved.

A Starkeep app signature covers the body, so a signed request must be read
before anyone knows whose it is. What such a request can make the server hold
is bounded (per client address and in total, counted in the shared cache so
the bound holds across workers), and its bytes wait in a neutral spool (the
system's temporary directory, never an owner's storage prefix) until the
signature verifies. Nothing an unverified request does depends on, or
changes, what an owner holds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from django.core.cache import caches
from rest_framework import status
from rest_framework.throttling import BaseThrottle

from ..conf import sync_settings
from ..core.blobs import CHUNK_SIZE
from .exceptions import InvalidRequest, PayloadTooLarge, SyncAPIException

#: Spooled bodies stay in memory up to this size, then go to a temporary file.
SPOOL_MEMORY_BYTES = 1024 * 1024
#: An allowance entry outlives any request that could hold it (a crashed worker never released it).
ALLOWANCE_TIMEOUT = 600


class IncompleteBody(InvalidRequest):
    default_detail = "The request body is shorter than its Content-Length; nothing was applied."
    default_code = "incomplete_body"


class LengthRequired(SyncAPIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = "This request needs a Content-Length header."
    default_code = "length_required"


class UnverifiedCapacity(SyncAPIException):
    """Too many bytes of requests whose signature is not yet checked are in flight."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Too many unverified request bytes are in flight; retry shortly."
    default_code = "unverified_capacity"
    wait = 5


def declared_length(request: Any) -> int | None:
    """The ``Content-Length`` the client declared, or ``None`` (chunked, or absent)."""
    django_request = getattr(request, "_request", request)
    text = django_request.META.get("CONTENT_LENGTH")
    if text in (None, ""):
        return None
    try:
        length = int(text)
    except ValueError:
        raise InvalidRequest("Content-Length must be a number.", field="Content-Length") from None
    if length < 0:
        raise InvalidRequest("Content-Length must not be negative.", field="Content-Length")
    return length


def _client_address(request: Any) -> str:
    # DRF's view of the client (REMOTE_ADDR, or X-Forwarded-For behind NUM_PROXIES proxies), as throttles use.
    return str(BaseThrottle().get_ident(request))


@contextmanager
def unverified_allowance(request: Any, nbytes: int) -> Iterator[None]:
    """Hold ``nbytes`` of the unverified allowances (this address's and the server's) while the body is read."""
    if nbytes <= 0:
        yield
        return
    cache = caches[sync_settings.REPLAY_CACHE_ALIAS]
    bounds = [
        ("starkeep_sync:unverified:total", sync_settings.UNVERIFIED_BYTES_TOTAL),
        (f"starkeep_sync:unverified:addr:{_client_address(request)}", sync_settings.UNVERIFIED_BYTES_PER_ADDRESS),
    ]
    taken: list[str] = []
    try:
        for key, bound in bounds:
            if bound is None:
                continue
            if nbytes > bound:
                raise PayloadTooLarge(f"A body of {nbytes} bytes is more than this server reads before "
                                      f"verifying a signature ({bound} bytes).")
            cache.add(key, 0, timeout=ALLOWANCE_TIMEOUT)
            held = cache.incr(key, nbytes)
            taken.append(key)
            if held > bound:
                raise UnverifiedCapacity()
        yield
    finally:
        for key in taken:
            try:
                cache.decr(key, nbytes)
            except ValueError:
                pass  # expired meanwhile: nothing left to give back


def read_exact(stream: Any, length: int, sinks: Iterable[Any] = ()) -> Iterator[bytes]:
    """The body in chunks, exactly ``length`` bytes; each chunk is fed to ``sinks`` (HMACs) on the way.

    A body that ends early (the client closed or the connection broke) raises
    :class:`IncompleteBody`: a truncated exchange or blob must never be applied.
    """
    sinks = list(sinks)
    left = length
    while left:
        chunk = stream.read(min(CHUNK_SIZE, left))
        if not chunk:
            raise IncompleteBody(f"The body ended after {length - left} of its {length} declared bytes; "
                                 "nothing was applied.")
        left -= len(chunk)
        for sink in sinks:
            sink.update(chunk)
        yield chunk


def read_body(request: Any) -> bytes:
    """The whole body (at most ``MAX_REQUEST_BYTES``), read once and exactly, for JSON routes and signatures."""
    django_request = getattr(request, "_request", request)
    cached = getattr(django_request, "_starkeep_body", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    limit = sync_settings.MAX_REQUEST_BYTES
    length = declared_length(django_request)
    if hasattr(django_request, "_body"):
        # Already read through Django (a test client, a middleware): hold it to its length all the same.
        body = django_request._body
        if length is not None and len(body) < length:
            raise IncompleteBody()
    elif length is None:
        # Chunked bodies have no length to hold them to; the size limit still applies.
        body = django_request.read(limit + 1)
    elif length > limit:
        raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes.")
    else:
        body = b"".join(read_exact(django_request, length))
    if len(body) > limit:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
    django_request._starkeep_body = body
    return body


def spool_body(request: Any, length: int, sinks: Iterable[Any]) -> IO[bytes]:
    """Read ``length`` bytes into a neutral temporary spool, feeding ``sinks``; the spool is rewound."""
    django_request = getattr(request, "_request", request)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, prefix="starkeep-unverified-")
    try:
        for chunk in read_exact(django_request, length, sinks):
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool  # type: ignore[return-value]
