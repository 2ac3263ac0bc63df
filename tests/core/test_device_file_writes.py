"""A device's file storage, pulling a large blob chunk by chunk: a corrupted byte, a broken
download or a failing write leaves no file (not even its ``.part-`` temporary); part files a killed
writer left are swept when the storage opens."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from starkeep_sync.core.blobs import CHUNK_SIZE, HashingReader
from starkeep_sync.core.exceptions import BlobIntegrityError, SyncTransportError
from starkeep_sync.device.files import PART_PREFIX, STALE_PART_SECONDS, FileSystemObjectStorage
from tests.harness import disk_fills_up

KEY = "shared/image/ab/" + "ab" * 32


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


class Download(io.RawIOBase):
    """A response body handing out ``step`` bytes per read, breaking off at ``stop``."""

    def __init__(self, data: bytes, step: int, stop: int | None = None) -> None:
        self._data, self._step, self._stop, self._pos = data, step, stop, 0

    def read(self, size: int = -1) -> bytes:
        if self._stop is not None and self._pos >= self._stop:
            raise SyncTransportError("blob download broke off", code="connection_error")
        chunk = self._data[self._pos:self._pos + min(size, self._step)]
        self._pos += len(chunk)
        return chunk


def test_a_large_pull_lands_whole(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK_SIZE + 99)
    storage = FileSystemObjectStorage(tmp_path)
    storage.put(KEY, HashingReader(Download(data, CHUNK_SIZE), hashlib.sha256(data).hexdigest()))
    assert (tmp_path / KEY).read_bytes() == data


def test_one_corrupted_byte_leaves_no_file(tmp_path: Path) -> None:
    data = bytearray(os.urandom(4 * CHUNK_SIZE))
    expected = hashlib.sha256(data).hexdigest()
    data[3 * CHUNK_SIZE + 1] ^= 0x80
    storage = FileSystemObjectStorage(tmp_path)
    with pytest.raises(BlobIntegrityError):
        storage.put(KEY, HashingReader(Download(bytes(data), 300_000), expected))
    assert files_under(tmp_path) == []


def test_a_dropped_connection_leaves_no_file(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK_SIZE)
    storage = FileSystemObjectStorage(tmp_path)
    with pytest.raises(SyncTransportError):
        broken = Download(data, CHUNK_SIZE, stop=2 * CHUNK_SIZE)
        storage.put(KEY, HashingReader(broken, hashlib.sha256(data).hexdigest()))
    assert files_under(tmp_path) == []


def test_a_failing_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4 * CHUNK_SIZE)
    disk_fills_up(monkeypatch, on_write=2, error=OSError(28, "No space left on device"))
    storage = FileSystemObjectStorage(tmp_path)
    with pytest.raises(OSError, match="No space"):
        storage.put(KEY, Download(data, CHUNK_SIZE))
    assert files_under(tmp_path) == []


# -- part files a killed writer left ---------------------------------------------------------------------


def _part(folder: Path, name: str, age: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PART_PREFIX}{name}"
    path.write_bytes(b"half a blob")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_opening_the_storage_removes_part_files_a_killed_writer_left(tmp_path: Path) -> None:
    FileSystemObjectStorage(tmp_path).put(KEY, b"landed")
    stale = _part(tmp_path / "shared/image/ab", "dead", STALE_PART_SECONDS + 60)
    deep = _part(tmp_path / "shared/video/cd", "dead2", STALE_PART_SECONDS * 10)
    live = _part(tmp_path / "shared/image/ab", "live", 5)  # another process is writing it right now

    storage = FileSystemObjectStorage(tmp_path)
    assert not stale.exists() and not deep.exists()
    assert live.exists()
    assert storage.keys() == [KEY] and (tmp_path / KEY).read_bytes() == b"landed"


def test_the_sweep_can_be_turned_off_and_run_by_hand(tmp_path: Path) -> None:
    stale = _part(tmp_path / "shared/image/ab", "dead", STALE_PART_SECONDS + 60)
    storage = FileSystemObjectStorage(tmp_path, stale_part_seconds=None)
    assert stale.exists()
    assert storage.sweep_parts(idle_seconds=10) == 1 and not stale.exists()
    assert storage.sweep_parts(idle_seconds=10) == 0
