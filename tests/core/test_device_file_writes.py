"""A device's file storage, pulling a large blob chunk by chunk: a corrupted byte, a broken
download or a failing write leaves no file (not even its ``.part-`` temporary)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from starkeep_sync.core.blobs import CHUNK_SIZE, HashingReader
from starkeep_sync.core.exceptions import BlobIntegrityError, SyncTransportError
from starkeep_sync.device.files import FileSystemObjectStorage

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
    real_fdopen = os.fdopen

    class FillsUp(io.BufferedWriter):
        calls = 0

        def write(self, chunk: Any) -> int:
            FillsUp.calls += 1
            if FillsUp.calls == 2:
                raise OSError(28, "No space left on device")
            return super().write(chunk)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FillsUp(io.FileIO(fd, "wb")) if mode == "wb"
                        else real_fdopen(fd, mode, *a, **k))
    storage = FileSystemObjectStorage(tmp_path)
    with pytest.raises(OSError, match="No space"):
        storage.put(KEY, Download(data, CHUNK_SIZE))
    assert files_under(tmp_path) == []
