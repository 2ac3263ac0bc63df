"""Object-storage key rules of PROTOCOL §7."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from starkeep_sync import InvalidKeyError
from starkeep_sync.core.constants import DRIVE_APP_ID
from starkeep_sync.core.keys import (
    MAX_KEY_BYTES,
    MAX_KEY_ENCODED_LENGTH,
    MAX_KEY_LENGTH,
    check_key_syntax,
    expected_sha256,
    validate_key,
)

HASH = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "key",
    [
        f"shared/image/{HASH[:2]}/{HASH}",
        "shared/other/ab/abc",
        "shared/my_cat-2/A_b-9/Z",
        "shared/0/1/2",
    ],
)
def test_valid_drive_keys(key: str) -> None:
    assert validate_key(key) == key
    assert validate_key(key, DRIVE_APP_ID) == key


@pytest.mark.parametrize(
    "key",
    [
        "shared/image/ab",  # too few segments
        f"shared/image/ab/{HASH}/extra",  # too many
        f"private/image/ab/{HASH}",  # wrong root
        f"shared/Image/ab/{HASH}",  # uppercase category
        f"shared/ima.ge/ab/{HASH}",
        f"shared/image/a b/{HASH}",
        "shared/image/ab/abc.jpg",
        f"apps/notes/syncable/{HASH}",  # app key on the Drive channel
    ],
)
def test_invalid_drive_keys(key: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "key",
    ["apps/notes/syncable/x", "apps/notes/syncable/a/b/c.jpg", f"apps/notes/syncable/{HASH}"],
)
def test_valid_per_app_keys(key: str) -> None:
    assert validate_key(key, "notes") == key


def test_per_app_key_of_another_app_is_403() -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key("apps/photos/syncable/x", "notes")
    assert info.value.status == 403
    assert info.value.code == "forbidden_key"


@pytest.mark.parametrize(
    "key",
    [
        "apps/notes/private/x",
        "apps/notes/syncable",
        f"shared/image/ab/{HASH}",
        "notes/syncable/x",
        "x",
    ],
)
def test_per_app_key_outside_namespace_is_400(key: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key, "notes")
    assert info.value.status == 400


@pytest.mark.parametrize(
    "key",
    [
        "shared/image/../ab",
        "../shared/image/ab/cd",
        "shared/image/./cd/ef",
        "apps/notes/syncable/../../photos/syncable/x",
        "apps/notes/syncable/..",
        "shared//ab/cd",
        "shared/image/ab/cd/",
        "apps/notes/syncable//x",
        "/shared/image/ab/cd",
        "/etc/passwd",
        "\\shared\\image",
        "shared/image/ab/c\x00d",
        "shared/image/ab/c\nd",
        "apps/notes/syncable/a\x7f",
        "apps/notes/syncable/a\tb",
        "",
    ],
)
@pytest.mark.parametrize("app_id", [DRIVE_APP_ID, "notes"])
def test_syntax_refusals(key: str, app_id: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key, app_id)
    assert info.value.status == 400
    with pytest.raises(InvalidKeyError):
        check_key_syntax(key)


def test_over_long_key() -> None:
    prefix = "apps/notes/syncable/"
    ok = prefix + "a" * (MAX_KEY_LENGTH - len(prefix))
    assert validate_key(ok, "notes") == ok
    with pytest.raises(InvalidKeyError) as info:
        validate_key(ok + "a", "notes")
    assert info.value.status == 400


#: One character of each UTF-8 width: 1, 2, 3 and 4 bytes.
WIDE = {1: "a", 2: "\u00e9", 3: "\u20ac", 4: "\U0001f600"}


@pytest.mark.parametrize("width", sorted(WIDE))
def test_length_is_counted_in_utf8_bytes(width: int) -> None:
    """At most 1,024 bytes whatever the characters: 1,024 ASCII ones, but only 256 of four bytes."""
    prefix = "apps/notes/syncable/"
    room = MAX_KEY_BYTES - len(prefix)
    fits = prefix + WIDE[width] * (room // width) + "a" * (room % width)
    assert len(fits.encode()) == MAX_KEY_BYTES
    assert validate_key(fits, "notes") == fits
    over = fits + "a"  # one byte over
    assert len(over.encode()) == MAX_KEY_BYTES + 1
    if width > 1:
        assert len(over) < MAX_KEY_LENGTH  # a count of characters would have let it through
    with pytest.raises(InvalidKeyError) as info:
        check_key_syntax(over)
    assert info.value.status == 400 and info.value.code == "invalid_key"
    assert f"{len(over.encode())} bytes in UTF-8" in info.value.message
    assert f"at most {MAX_KEY_BYTES} bytes" in info.value.message


def test_the_old_character_rule_let_through_keys_no_request_line_carries() -> None:
    """1,024 four-byte characters (the old limit) percent-encode to 12,288 characters; now refused."""
    key = "apps/notes/syncable/" + WIDE[4] * (MAX_KEY_LENGTH - len("apps/notes/syncable/"))
    assert len(key) == MAX_KEY_LENGTH and len(quote(key, safe="")) > 8190
    with pytest.raises(InvalidKeyError):
        check_key_syntax(key)


@pytest.mark.parametrize("width", sorted(WIDE))
def test_a_valid_key_always_fits_a_request_line(width: int) -> None:
    """Percent-encoding every byte (even '/') is three characters a byte: 3,072 at most, under 8,190."""
    key = "apps/notes/syncable/" + WIDE[width] * ((MAX_KEY_BYTES - 20) // width)
    check_key_syntax(key)
    assert len(quote(key, safe="")) <= MAX_KEY_ENCODED_LENGTH == 3072


def test_lone_surrogate_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidKeyError) as info:
        check_key_syntax("apps/notes/syncable/a\ud800b")
    assert info.value.status == 400
    assert "surrogate" in info.value.message


@pytest.mark.parametrize("key", [None, 5, b"shared/image/ab/cd"])
def test_non_string_key(key: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)  # type: ignore[arg-type]


def test_invalid_key_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        validate_key("..")


def test_expected_sha256_prefers_content_hash() -> None:
    other = "f" * 64
    assert expected_sha256(HASH, f"shared/image/ff/{other}") == HASH


def test_expected_sha256_lowercases_content_hash() -> None:
    assert expected_sha256(HASH.upper(), "apps/notes/syncable/x") == HASH


def test_expected_sha256_falls_back_to_hash_named_key() -> None:
    assert expected_sha256(None, f"shared/image/01/{HASH}") == HASH
    assert expected_sha256("", f"shared/image/01/{HASH.upper()}") == HASH
    assert expected_sha256("md5:abc", f"apps/notes/syncable/{HASH}") == HASH


@pytest.mark.parametrize(
    ("content_hash", "key"),
    [
        (None, "apps/notes/syncable/photo.jpg"),
        ("", "shared/image/ab/abc"),
        ("abc", "shared/image/ab/abc"),
        (HASH[:-1], f"shared/image/ab/{HASH[:-1]}"),  # 63 digits
        (HASH + "0", f"shared/image/ab/{HASH}0"),  # 65 digits
        ("g" * 64, "apps/notes/syncable/x"),
    ],
)
def test_expected_sha256_none_without_a_sha256(content_hash: str | None, key: str) -> None:
    assert expected_sha256(content_hash, key) is None


@pytest.mark.parametrize("key", ["apps/notes/syncable/x/presign", "shared/image/ab/presign"])
def test_a_key_may_not_end_with_the_presign_segment(key: str) -> None:
    with pytest.raises(InvalidKeyError, match="presign"):
        check_key_syntax(key)
    # Inside a key the word is an ordinary segment.
    check_key_syntax(key.replace("/presign", "/presign/x"))
