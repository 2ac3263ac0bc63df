"""Blob transfer between two object storages, with integrity checking (PROTOCOL §7)."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from .constants import LOGGER_NAME
from .exceptions import BlobIntegrityError
from .keys import expected_sha256
from .protocols import ObjectStorage

logger = logging.getLogger(LOGGER_NAME)

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileSyncManifest:
    """What must move for one item: its blob key and the hash it must match."""

    file_hash: str
    object_storage_key: str
    size_bytes: int = 0
    mime_type: str | None = None


@dataclass(slots=True)
class TransferFailure:
    """The remembered history of a key whose transfer keeps failing."""

    key: str
    direction: str
    attempts: int
    first_failure: float
    last_failure: float
    last_error: str


class HashingReader(io.RawIOBase):
    """Wraps a binary stream; hashes what passes; raises at EOF on a mismatch.

    Raising *before* returning EOF matters: the destination is still inside its
    ``put`` and, by contract, stores nothing when reading fails.
    """

    def __init__(self, stream: IO[bytes], expected: str | None, max_bytes: int | None = None) -> None:
        self._stream = stream
        self._expected = expected
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def _check_eof(self) -> None:
        if self._expected is not None:
            actual = self._hash.hexdigest()
            if actual != self._expected:
                raise BlobIntegrityError(
                    f"blob bytes hash to {actual}, expected {self._expected}",
                )

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            # "Read to EOF", as io promises: returning one chunk here would let a
            # caller that reads once store a truncated blob, unchecked.
            return self.readall()
        chunk = self._stream.read(size)
        if not chunk:
            self._check_eof()
            return b""
        self.bytes_read += len(chunk)
        if self._max is not None and self.bytes_read > self._max:
            raise BlobIntegrityError(f"blob is larger than {self._max} bytes")
        self._hash.update(chunk)
        return chunk

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class FileSyncEngine:
    """Moves blobs: short-circuits present keys, dedupes in-flight keys, verifies hashes,
    and remembers per-key failures instead of retrying silently forever."""

    def __init__(self, *, clock: callable = time.time) -> None:  # type: ignore[valid-type]
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._failures: dict[str, TransferFailure] = {}
        self._now = clock
        self.bytes_moved = 0

    def is_transfer_in_flight(self, key: str) -> bool:
        with self._lock:
            return key in self._in_flight

    @property
    def failures(self) -> dict[str, TransferFailure]:
        """Keys whose last transfer failed (cleared when one succeeds)."""
        with self._lock:
            return dict(self._failures)

    def restore_failures(self, failures: Iterable[TransferFailure]) -> None:
        """Seed the failure history, e.g. from what an earlier process persisted."""
        with self._lock:
            for f in failures:
                self._failures[f.key] = f

    def _record_failure(self, key: str, direction: str, error: str) -> None:
        now = self._now()
        with self._lock:
            f = self._failures.get(key)
            if f is None:
                self._failures[key] = TransferFailure(key, direction, 1, now, now, error)
            else:
                f.attempts += 1
                f.last_failure = now
                f.last_error = error
                f.direction = direction

    def transfer_file(
        self,
        manifest: FileSyncManifest,
        source: ObjectStorage,
        destination: ObjectStorage,
        *,
        direction: str = "transfer",
    ) -> bool:
        """Copy one blob; ``True`` when the destination holds it afterwards.

        Never raises for a transfer problem: a missing source, a storage error
        or an integrity mismatch is logged, remembered and returns ``False``.
        """
        key = manifest.object_storage_key
        with self._lock:
            if key in self._in_flight:
                return False
            self._in_flight.add(key)
        try:
            try:
                if destination.has(key):
                    self._clear(key)
                    return True
                stream = source.open(key)
                if stream is None:
                    raise FileNotFoundError(f"source has no blob at {key!r}")
                try:
                    reader = HashingReader(stream, expected_sha256(manifest.file_hash, key))
                    destination.put(key, reader, manifest.mime_type)
                    self.bytes_moved += reader.bytes_read
                finally:
                    stream.close()
            except Exception as err:
                logger.warning("blob %s of %s failed: %s", direction, key, err)
                self._record_failure(key, direction, f"{type(err).__name__}: {err}")
                return False
            self._clear(key)
            return True
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def get_files_to_push(
        self, manifests: Iterable[FileSyncManifest], local: ObjectStorage, remote: ObjectStorage
    ) -> list[FileSyncManifest]:
        """Manifests held locally and not yet remotely."""
        return [
            m for m in manifests
            if local.has(m.object_storage_key) and not remote.has(m.object_storage_key)
        ]

    def get_files_to_pull(
        self, manifests: Iterable[FileSyncManifest], local: ObjectStorage, remote: ObjectStorage
    ) -> list[FileSyncManifest]:
        """Manifests held remotely and not yet locally."""
        return [
            m for m in manifests
            if not local.has(m.object_storage_key) and remote.has(m.object_storage_key)
        ]


def create_file_sync_engine() -> FileSyncEngine:
    return FileSyncEngine()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
