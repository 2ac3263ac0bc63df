"""Storing an uploaded blob: limits, quota, hash and the whole body checked before anything is kept.

By the time a view calls :func:`store_upload` its caller is proved: a device
token before the body is read, a Starkeep app signature over a body already
read into a neutral spool (``bodies.spool_body``), or this server's own signed
URL. So everything here may act as the owner: look at its storage, count its
quota, write under its prefix.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import status
from rest_framework.request import Request

from ..adapters.storage import BlobTooLarge, DjangoObjectStorage
from ..conf import sync_settings
from ..core.blobs import CHUNK_SIZE, parse_content_digest
from ..core.exceptions import BlobIntegrityError
from ..core.keys import expected_sha256
from .bodies import IncompleteBody, declared_length
from .exceptions import InvalidRequest, PayloadTooLarge, SyncAPIException
from .quotas import QuotaExceeded, blob_bytes_remaining

#: ``type/subtype[; param=value ...]`` with RFC 9110 tokens: what a client can be answered with again.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*")


class AlreadyStored(SyncAPIException):
    """``PUT`` with ``If-None-Match: *`` of a key that is already stored: nothing written."""

    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "A blob is already stored at this key; nothing was written."
    default_code = "already_exists"


def checked_content_type(value: Any, field: str) -> str | None:
    """A Content-Type to keep with a blob: a string that fits its column, without control characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 255 or not _MEDIA_TYPE.fullmatch(value.strip()):
        raise InvalidRequest(f"{field} must be a media type such as 'image/jpeg' (type/subtype, optional "
                             "parameters), of at most 255 characters.", field=field)
    return value


def _expected_sha256(request: Request, key: str) -> str | None:
    """The sha256 the body must have: a hash-named key's, and/or the ``Content-Digest`` header's."""
    from_key = expected_sha256(None, key)
    header = request.META.get("HTTP_CONTENT_DIGEST")
    if not header:
        return from_key
    try:
        from_header = parse_content_digest(header)
    except ValueError as err:
        raise InvalidRequest(f"Content-Digest: {err}", field="Content-Digest") from None
    if from_header is None:
        return from_key  # only algorithms we do not check
    if from_key is not None and from_key != from_header:
        raise BlobIntegrityError(f"Content-Digest sha-256 {from_header} does not match the key's hash; nothing stored")
    return from_header


class _ExactBody:
    """The body as storage reads it. A body that ends before its ``Content-Length`` raises
    inside the storage's ``put``, so nothing is kept: the client's connection dropped, and a
    truncated blob under its key (unnoticed, for a key that is not its hash) would make every
    later push see the key present and skip it. The storage itself hashes and checks the size."""

    def __init__(self, source: Any, length: int | None) -> None:
        self._source = source
        self._length = length
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size if size and size > 0 else CHUNK_SIZE)
        if chunk:
            self.bytes_read += len(chunk)
            return chunk  # type: ignore[no-any-return]
        if self._length is not None and self.bytes_read < self._length:
            raise IncompleteBody(f"The body ended after {self.bytes_read} of its {self._length} declared bytes; "
                                 "nothing was stored.")
        return b""


def _drain(source: Any, limit: int) -> None:
    """Read a body we will not keep, so the client gets to send it all and read our answer."""
    seen = 0
    while (chunk := source.read(CHUNK_SIZE)) and seen <= limit:
        seen += len(chunk)


def store_upload(request: Request, storage: DjangoObjectStorage, key: str,
                 content_type: str | None) -> tuple[int, str | None]:
    """Store the request's body at ``key``; return the stored size and Content-Type.

    The body comes from the signature's spool when the authenticator read it
    there, else straight from the request. ``If-None-Match: *`` makes the PUT
    conditional: a key already present is left alone and answered with 412,
    which lets a client skip the HEAD it would otherwise send before each upload.
    """
    django_request = request._request
    content_type = checked_content_type(content_type, "Content-Type")
    limit = sync_settings.MAX_BLOB_BYTES
    length = declared_length(request)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Blob of {length} bytes exceeds the limit of {limit} bytes.")
    expected = _expected_sha256(request, key)
    source = getattr(django_request, "_starkeep_spool", None) or django_request
    try:
        if request.META.get("HTTP_IF_NONE_MATCH", "").strip() == "*" and storage.has(key):
            _drain(source, limit)
            raise AlreadyStored()
        remaining = blob_bytes_remaining(storage.owner_id, key)
        quota_bound = remaining is not None and remaining < limit
        if quota_bound:
            limit = remaining  # type: ignore[assignment]
            if length is not None and length > limit:
                raise QuotaExceeded(f"A blob of {length} bytes exceeds this owner's remaining quota of {limit} bytes.")
        body = _ExactBody(source, length)
        try:
            storage.put(key, body, content_type or None, max_bytes=limit, sha256=expected)  # type: ignore[arg-type]
        except BlobTooLarge as err:
            if quota_bound:
                raise QuotaExceeded(f"The blob exceeds this owner's remaining quota of {limit} bytes.") from None
            raise PayloadTooLarge(str(err)) from None
    finally:
        if source is not django_request:
            source.close()
    return body.bytes_read, content_type
