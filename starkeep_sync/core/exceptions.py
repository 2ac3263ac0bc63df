"""Exception hierarchy: one root, stable machine codes."""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error raised by starkeep_sync.

    ``code`` is a stable machine-readable string (it travels in the JSON error
    body); ``status`` is the HTTP status when the error came from, or maps to,
    an HTTP response.
    """

    code = "sync_error"
    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field


class WireFormatError(SyncError, ValueError):
    """A request or response does not match the wire format; ``field`` names the culprit."""

    code = "invalid_request"
    status = 400

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.problem = problem


class ClockSkewError(SyncError, ValueError):
    """An incoming HLC is further ahead of local physical time than the skew bound."""

    code = "clock_skew"
    status = 400


class InvalidKeyError(SyncError, ValueError):
    """An object-storage key breaks the key rules of PROTOCOL §7."""

    code = "invalid_key"
    status = 400


class BlobIntegrityError(SyncError):
    """Received bytes do not hash to the expected sha256."""

    code = "integrity_mismatch"
    status = 400


class SyncTransportError(SyncError):
    """The remote side could not be reached or answered with an error."""

    code = "transport_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ItemsRejected(SyncError):
    """The peer refused these items' blobs for a reason no retry can fix (PROTOCOL §5c).

    Raised by ``sync_until_done(strict=True)`` once the rounds are done; ``rejected``
    holds the ``RejectedItem``s. Fix the cause (e.g. shrink the file, free quota),
    then write the record again: a new HLC ships it.
    """

    code = "items_rejected"

    def __init__(self, rejected: list) -> None:  # type: ignore[type-arg]
        shown = "; ".join(f"{r.item_id}: {r.reason}" for r in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        super().__init__(f"{len(rejected)} item(s) rejected by the peer: {shown}{more}")
        self.rejected = list(rejected)
