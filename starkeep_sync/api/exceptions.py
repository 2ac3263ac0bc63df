"""API errors and the one handler that renders them as the protocol's JSON error body."""

from __future__ import annotations

import errno
from typing import Any

import msgspec
from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..core.exceptions import SyncError
from ..core.wire import ErrorDetailWire, ErrorWire


class SyncAPIException(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The request could not be processed."
    default_code = "invalid_request"

    def __init__(self, detail: str | None = None, code: str | None = None, field: str | None = None) -> None:
        super().__init__(detail, code)
        self.field = field


class InvalidRequest(SyncAPIException):
    default_code = "invalid_request"


class PayloadTooLarge(SyncAPIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is larger than this server accepts."
    default_code = "payload_too_large"


class UnknownChannel(SyncAPIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "No app with this id is registered on this server."
    default_code = "unknown_app"


class RouteNotFound(SyncAPIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "No such route on this server."
    default_code = "not_found"


class BlobNotFound(SyncAPIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "No blob at this key."
    default_code = "not_found"


class ChannelForbidden(SyncAPIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "These credentials are not valid for this channel."
    default_code = "forbidden"


class InsufficientStorage(SyncAPIException):
    """The blob adapter raises ``StorageFull`` (same code); this is for a full disk met anywhere else."""

    status_code = status.HTTP_507_INSUFFICIENT_STORAGE
    default_detail = "The server has no disk space left for this request; nothing was stored."
    default_code = "insufficient_storage"


def from_sync_error(err: SyncError) -> SyncAPIException:
    exc = SyncAPIException(err.message, code=err.code, field=getattr(err, "field", None))
    exc.status_code = err.status or status.HTTP_400_BAD_REQUEST
    retry_after = getattr(err, "retry_after", None)
    if retry_after:
        exc.wait = retry_after  # type: ignore[attr-defined]  # sent as Retry-After, like DRF's Throttled
    return exc


def _code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    if isinstance(codes, list) and codes and isinstance(codes[0], str):
        return codes[0]
    return exc.default_code


def _message(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(_message(d) for d in detail)
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_message(v)}" for k, v in detail.items())
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """``{"error": {"code", "message"[, "field"]}}`` for every error a view raises.

    DRF's own handler runs first, on the error as DRF knows it: it sets the
    ``WWW-Authenticate`` and ``Retry-After`` headers and calls ``set_rollback()``,
    so a handled error under ``ATOMIC_REQUESTS`` still rolls the request back.
    Ours only reshapes the body into the protocol's.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A full disk outside the blob adapter (a spooled request body, say) is the same fault.
        exc = InsufficientStorage()
    if isinstance(exc, SyncError):
        exc = from_sync_error(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, Http404):
        exc = SyncAPIException(str(exc) or "Not found.", code="not_found")
        exc.status_code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    assert isinstance(exc, exceptions.APIException)
    detail = ErrorDetailWire(_code(exc), _message(exc.detail), getattr(exc, "field", None) or None)
    response.data = msgspec.to_builtins(ErrorWire(detail))
    if getattr(exc, "wait", None):
        # DRF writes "%d": a wait under a second would read "0", which clients take as "now".
        response["Retry-After"] = str(max(1, int(exc.wait)))  # type: ignore[attr-defined]
    return response


class ProtocolErrors:
    """Mixin for every view of this app: errors answer with the protocol's JSON body (set once, here)."""

    def get_exception_handler(self) -> Any:
        return exception_handler
