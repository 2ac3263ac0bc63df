"""A large upload read in pieces (as from a socket): a corrupted byte, a short body or a write that
fails part-way stores nothing, and the hashing helper thread stops."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from starkeep_sync.adapters.storage import DjangoObjectStorage, StorageFull
from starkeep_sync.api.bodies import IncompleteBody
from starkeep_sync.api.uploads import _ExactBody
from starkeep_sync.core.blobs import CHUNK_SIZE
from starkeep_sync.core.exceptions import BlobIntegrityError
from starkeep_sync.models import Blob
from tests.factories import make_user
from tests.harness import disk_fills_up

from .support import drive_key

pytestmark = pytest.mark.django_db


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def no_helper_threads() -> bool:
    return not any(t.name == "starkeep-sha256" for t in threading.enumerate())


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> DjangoObjectStorage:
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "blobs")}}}
    return DjangoObjectStorage(make_user("streamer"))


class Trickle(io.RawIOBase):
    """A request body that hands out at most ``step`` bytes per read (as a socket does), then ``fail`` at ``stop``."""

    def __init__(self, data: bytes, step: int, stop: int | None = None) -> None:
        self._data, self._step, self._stop, self._pos = data, step, stop, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if self._stop is None else self._stop
        chunk = self._data[self._pos:min(end, self._pos + min(size, self._step))]
        self._pos += len(chunk)
        return chunk


def test_a_multi_chunk_blob_is_stored_whole_and_the_helpers_stop(storage: DjangoObjectStorage, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    key = drive_key(data)
    assert storage.put(key, Trickle(data, CHUNK_SIZE), sha256=hashlib.sha256(data).hexdigest()) == \
        hashlib.sha256(data).hexdigest()
    stored = storage.open(key)
    assert stored is not None
    with stored:
        assert stored.read() == data
    assert no_helper_threads()


def test_one_corrupted_byte_in_a_large_body_stores_nothing(storage: DjangoObjectStorage, tmp_path: Path) -> None:
    data = bytearray(os.urandom(3 * CHUNK_SIZE))
    key = drive_key(bytes(data))
    data[2 * CHUNK_SIZE + 7] ^= 0x01
    with pytest.raises(BlobIntegrityError):
        storage.put(key, Trickle(bytes(data), 256 * 1024), sha256=key.rsplit("/", 1)[1])
    assert files_under(tmp_path / "blobs") == [] and not Blob.objects.exists()
    assert no_helper_threads()


def test_a_short_body_stores_nothing(storage: DjangoObjectStorage, tmp_path: Path) -> None:
    """The client's connection dropped after 2.5 of its 4 MiB: IncompleteBody, nothing kept."""
    data = os.urandom(4 * CHUNK_SIZE)
    body = _ExactBody(Trickle(data, CHUNK_SIZE, stop=5 * CHUNK_SIZE // 2), len(data))
    with pytest.raises(IncompleteBody):
        storage.put(drive_key(data), body, sha256=hashlib.sha256(data).hexdigest())
    assert files_under(tmp_path / "blobs") == [] and not Blob.objects.exists()
    assert no_helper_threads()


def test_a_write_failing_part_way_is_a_full_disk_and_stores_nothing(
        storage: DjangoObjectStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4 * CHUNK_SIZE)
    disk_fills_up(monkeypatch, on_write=3, error=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageFull):
        storage.put(drive_key(data), Trickle(data, CHUNK_SIZE), sha256=hashlib.sha256(data).hexdigest())
    assert files_under(tmp_path / "blobs") == [] and not Blob.objects.exists()
    assert no_helper_threads()
