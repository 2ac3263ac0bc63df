"""Object-storage key rules (PROTOCOL §7)."""

from __future__ import annotations

import re

from .constants import DRIVE_APP_ID
from .exceptions import InvalidKeyError

#: The longest key, in UTF-8 bytes. Counted in bytes, not characters, so a key always fits a
#: request line: percent-encoded it is at most three characters a byte (3,072), well inside
#: gunicorn's largest ``limit_request_line`` (8190) and nginx's default 8k buffers.
MAX_KEY_BYTES = 1024
#: The longest key in characters: a character is at least one byte.
MAX_KEY_LENGTH = MAX_KEY_BYTES
#: The longest a key may be once percent-encoded in a URL path.
MAX_KEY_ENCODED_LENGTH = 3 * MAX_KEY_BYTES
#: The last path segment of the presign route; no key may end with it.
PRESIGN_SEGMENT = "presign"

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_CATEGORY = re.compile(r"[a-z0-9_-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_key_syntax(key: str) -> None:
    """Refuse keys that could escape a prefix or confuse a storage backend."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("object key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no storage, path or database can hold it
        raise InvalidKeyError("object key must be valid Unicode (no lone surrogates)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"object key is {size} bytes in UTF-8; at most {MAX_KEY_BYTES} bytes are allowed "
            f"(a character outside ASCII takes 2 to 4 bytes)"
        )
    if key.startswith("/") or key.startswith("\\"):
        raise InvalidKeyError("object key must be relative, not an absolute path")
    if _CONTROL.search(key):
        raise InvalidKeyError("object key must not contain control characters")
    if "\\" in key:
        raise InvalidKeyError("object key must not contain backslashes")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError("object key must not contain empty segments")
        if segment in (".", ".."):
            raise InvalidKeyError("object key must not contain '.' or '..' segments")
    if key.rsplit("/", 1)[-1] == PRESIGN_SEGMENT:
        # ``files/<key>/presign`` is the presign route: a key ending so could not be told from it.
        raise InvalidKeyError(f"object key must not end with the reserved segment '{PRESIGN_SEGMENT}'")


# The key rules above as ECMA-262 patterns and prose, for the OpenAPI schema. A segment is never empty,
# "." or "..", never holds "/", a backslash or a control character; the last segment is never
# "presign" (that is the presign route). Only the UTF-8 byte bound is beyond a pattern: it is
# in ``maxLength`` (as characters: no valid key has more) and in the descriptions.
_NOT_IN_SEGMENT = r"/\\\x00-\x1f\x7f"
#: One segment of a per-app key: any text but "." and "..".
_APP_SEGMENT = (
    rf"(?:[^.{_NOT_IN_SEGMENT}][^{_NOT_IN_SEGMENT}]*"
    rf"|\.[^.{_NOT_IN_SEGMENT}][^{_NOT_IN_SEGMENT}]*"
    rf"|\.\.[^{_NOT_IN_SEGMENT}]+)"
)
_NOT_PRESIGN = rf"(?!{PRESIGN_SEGMENT}$)"
_DRIVE_KEY = rf"shared/[a-z0-9_-]+/[A-Za-z0-9_-]+/{_NOT_PRESIGN}[A-Za-z0-9_-]+"
#: Drive-channel keys: ``shared/<category>/<shard>/<hash>``.
DRIVE_KEY_PATTERN = rf"^{_DRIVE_KEY}$"
#: Per-app keys: ``apps/<app_id>/syncable/<sub-key>``; on ``apps/starkeep-drive/`` a Drive key.
APP_KEY_PATTERN = (
    rf"^apps/{_APP_SEGMENT}/syncable/(?:{_APP_SEGMENT}/)*{_NOT_PRESIGN}{_APP_SEGMENT}$"
    rf"|^{_DRIVE_KEY}$"
)
#: What every key description says about length.
KEY_LENGTH_RULE = (
    f"At most {MAX_KEY_BYTES} bytes in UTF-8 (so at most {MAX_KEY_LENGTH} characters, and only "
    f"{MAX_KEY_BYTES // 4} of four-byte characters; longer is 400 `invalid_key`). Percent-encoded "
    f"in a URL path a valid key is at most {MAX_KEY_ENCODED_LENGTH} characters, so its request line fits "
    "any server whose request-line limit is 8190 (gunicorn's largest `limit_request_line`, nginx's "
    "default 8k `large_client_header_buffers`)."
)
KEY_SYNTAX_RULE = (
    "No empty, `.` or `..` segment, no leading `/`, no backslash, no control character "
    f"(U+0000-U+001F, U+007F), and no final segment `{PRESIGN_SEGMENT}` (reserved for the presign route)."
)


def validate_key(key: str, app_id: str = DRIVE_APP_ID) -> str:
    """Check ``key`` against the namespace of the channel ``app_id``.

    Drive: ``shared/<category>/<shard>/<hash>``. Per-app channel:
    ``apps/<app_id>/syncable/<...>``. Raises ``InvalidKeyError`` (status 400,
    or 403 for another app's prefix).
    """
    check_key_syntax(key)
    parts = key.split("/")
    if app_id == DRIVE_APP_ID:
        if (
            len(parts) != 4
            or parts[0] != "shared"
            or not _CATEGORY.fullmatch(parts[1])
            or not all(_SEGMENT.fullmatch(p) for p in parts[2:])
        ):
            raise InvalidKeyError(
                f"key {key[:100]!r} is not a shared key 'shared/<category>/<shard>/<hash>'"
            )
        return key
    if len(parts) >= 4 and parts[0] == "apps" and parts[2] == "syncable":
        if parts[1] != app_id:
            raise InvalidKeyError(
                f"key {key[:100]!r} belongs to another app's namespace",
                code="forbidden_key",
                status=403,
            )
        return key
    raise InvalidKeyError(f"key {key[:100]!r} is not under 'apps/{app_id}/syncable/'")


def expected_sha256(content_hash: str | None, key: str) -> str | None:
    """The sha256 the bytes must have: the content hash, else a hash-named key, else None."""
    if content_hash and _HEX64.fullmatch(content_hash.lower()):
        return content_hash.lower()
    last = key.rsplit("/", 1)[-1].lower()
    if _HEX64.fullmatch(last):
        return last
    return None
