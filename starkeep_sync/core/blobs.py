"""Blob transfer between two object storages, with integrity checking (PROTOCOL §7)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Protocol, runtime_checkable

from .constants import LOGGER_NAME
from .exceptions import BlobIntegrityError, SyncTransportError
from .keys import expected_sha256
from .protocols import ObjectStorage

logger = logging.getLogger(LOGGER_NAME)

CHUNK_SIZE = 1024 * 1024

#: RFC 9530 header carrying the sha256 of an upload, for the receiver to check.
CONTENT_DIGEST_HEADER = "Content-Digest"


def content_digest(sha256_hex: str) -> str:
    """``Content-Digest`` value for a sha256 given in hex: ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"


def parse_content_digest(value: str) -> str | None:
    """The sha256 (hex) in a ``Content-Digest`` value; ``None`` when it names only other
    algorithms; ``ValueError`` when malformed."""
    found = None
    for member in value.split(","):
        name, sep, rest = member.strip().partition("=")
        if not sep:
            raise ValueError("expected <algorithm>=:<base64>:")
        if name.strip().lower() != "sha-256":
            continue
        rest = rest.strip()
        if len(rest) < 2 or not (rest.startswith(":") and rest.endswith(":")):
            raise ValueError("the sha-256 value must be :<base64>:")
        try:
            raw = base64.b64decode(rest[1:-1], validate=True)
        except binascii.Error:
            raise ValueError("the sha-256 value is not base64") from None
        if len(raw) != 32:
            raise ValueError("the sha-256 value must be 32 bytes")
        found = raw.hex()
    return found


@runtime_checkable
class ConditionalPut(Protocol):
    """An optional ``ObjectStorage`` capability: store unless present, in one step.

    A destination that offers it (the HTTP client) checks presence and, when
    ``sha256`` is given, the received bytes' hash itself, so
    :meth:`FileSyncEngine.transfer_file` neither asks ``has`` first nor hashes
    the bytes on the way out.
    """

    def put_if_absent(self, key: str, data: IO[bytes], content_type: str | None = None, *,
                      sha256: str | None = None) -> int | None:
        """Store ``data`` unless ``key`` is present: the bytes stored, or ``None`` when it was.
        Raises (and stores nothing) when the bytes do not hash to ``sha256``."""


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


#: HTTP statuses of a blob upload that no retry can fix (PROTOCOL §5c): a bad key or bytes that do not
#: match their hash (400), a key outside the channel (403), too large (413), over the owner's quota (507).
PERMANENT_PUSH_STATUSES = frozenset({400, 403, 413, 507})
#: ...except a 507 that says the server's own disk is full: its operator frees space and the retry works.
TRANSIENT_PUSH_CODES = frozenset({"insufficient_storage"})


def is_permanent_push_failure(err: BaseException | None) -> bool:
    """Whether a failed upload would fail the same way if tried again.

    A local blob whose bytes no longer hash to its key or content hash, and the
    peer's refusals listed in ``PERMANENT_PUSH_STATUSES`` (but for
    ``TRANSIENT_PUSH_CODES``). Network errors, 5xx, 429 and a blob not (yet)
    held locally are transient.
    """
    if isinstance(err, BlobIntegrityError):
        return True
    return (isinstance(err, SyncTransportError) and err.status in PERMANENT_PUSH_STATUSES
            and err.code not in TRANSIENT_PUSH_CODES)


@dataclass(slots=True)
class TransferOutcome:
    """How one blob transfer ended: ``ok`` when the destination holds the key afterwards."""

    key: str
    ok: bool
    bytes_moved: int = 0
    error: BaseException | None = None

    @property
    def reason(self) -> str:
        err = self.error
        return "" if err is None else f"{type(err).__name__}: {err}"


class CountingReader(io.RawIOBase):
    """Passes a binary stream through, telling ``on_bytes`` how many new bytes each read gave.

    Seeking is passed through too, so a client can still send a file from its
    position. Bytes read again after seeking back (a client that checks a file's
    hash before uploading it) are not counted twice: only reads past the furthest
    point reached so far count.
    """

    def __init__(self, stream: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self._stream = stream
        self._on_bytes = on_bytes
        self._pos = 0
        self._furthest = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        seekable = getattr(self._stream, "seekable", None)
        return bool(seekable and seekable())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._stream.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._stream.tell()

    def read(self, size: int | None = -1) -> bytes:
        chunk = self._stream.read(-1 if size is None else size)
        self._pos += len(chunk)
        if self._pos > self._furthest:
            self._on_bytes(self._pos - self._furthest)
            self._furthest = self._pos
        return chunk

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


class ChunkPipe:
    """Hands chunks, in order, to ``consume`` on a helper thread, so the caller goes on
    receiving the next one meanwhile (hashlib, sockets and files all release the GIL).

    The first chunk is consumed inline, so a small blob never starts a thread;
    at most ``depth`` chunks wait in the queue, so memory stays bounded. An
    error in ``consume`` is raised by the next :meth:`submit` or by :meth:`close`,
    which waits for the queued chunks. Call :meth:`close` when done.
    """

    def __init__(self, consume: Callable[[bytes], object], depth: int = 4, name: str = "starkeep-pipe") -> None:
        self._consume = consume
        self._depth = depth
        self._name = name
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._stop: weakref.finalize | None = None
        self._errors: list[BaseException] = []
        self._submitted = 0

    def submit(self, chunk: bytes) -> None:
        if self._errors:
            self.close()
        self._submitted += 1
        if self._queue is None:
            if self._submitted == 1:
                self._consume(chunk)
                return
            self._start()
        assert self._queue is not None
        self._queue.put(chunk if isinstance(chunk, bytes) else bytes(chunk))  # the caller may reuse a buffer

    def _start(self) -> None:
        q: queue.Queue[bytes | None] = queue.Queue(maxsize=self._depth)
        thread = threading.Thread(target=_drain_queue, args=(self._consume, q, self._errors), name=self._name,
                                  daemon=True)
        thread.start()
        self._queue, self._thread = q, thread
        # An abandoned pipe (its transfer raised) must not leave the thread waiting forever.
        self._stop = weakref.finalize(self, q.put, None)

    def close(self) -> None:
        """Wait for the queued chunks, stop the thread; raise what ``consume`` raised."""
        if self._thread is not None:
            assert self._stop is not None
            self._stop()
            self._thread.join()
            self._thread = self._queue = self._stop = None
        if self._errors:
            raise self._errors[0]


def _drain_queue(consume: Callable[[bytes], object], chunks: queue.Queue[bytes | None],
                 errors: list[BaseException]) -> None:
    while (chunk := chunks.get()) is not None:
        if errors:
            continue  # keep taking chunks so the producer never blocks; it raises on its next submit
        try:
            consume(chunk)
        except BaseException as err:  # handed to the producer thread
            errors.append(err)


class PipelinedSha256:
    """A sha256 whose updates run on a helper thread (:class:`ChunkPipe`).

    Hashing is the slowest step of a blob transfer; overlapped with receiving
    and writing it no longer adds to it. Call :meth:`hexdigest` or :meth:`close`.
    """

    def __init__(self, depth: int = 4) -> None:
        self._hash = hashlib.sha256()
        self._pipe = ChunkPipe(self._hash.update, depth, "starkeep-sha256")

    def update(self, data: bytes) -> None:
        self._pipe.submit(data)

    def close(self) -> None:
        self._pipe.close()

    def hexdigest(self) -> str:
        self._pipe.close()
        return self._hash.hexdigest()


class HashingReader(io.RawIOBase):
    """Wraps a binary stream; hashes what passes; raises at EOF on a mismatch.

    Raising *before* returning EOF matters: the destination is still inside its
    ``put`` and, by contract, stores nothing when reading fails.
    """

    def __init__(self, stream: IO[bytes], expected: str | None, max_bytes: int | None = None) -> None:
        self._stream = stream
        self._expected = expected
        self._hash = PipelinedSha256()
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
            self._hash.close()
            raise BlobIntegrityError(f"blob is larger than {self._max} bytes")
        self._hash.update(chunk)
        return chunk

    def close(self) -> None:
        self._hash.close()
        super().close()

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
        """Copy one blob; ``True`` when the destination holds it afterwards (see :meth:`transfer`)."""
        outcome = self.transfer(manifest, source, destination, direction=direction)
        self.bytes_moved += outcome.bytes_moved
        return outcome.ok

    def transfer(
        self,
        manifest: FileSyncManifest,
        source: ObjectStorage,
        destination: ObjectStorage,
        *,
        direction: str = "transfer",
        on_bytes: Callable[[int], None] | None = None,
        conditional: bool | None = None,
    ) -> TransferOutcome:
        """Copy one blob, checking its bytes against its hash on the way.

        Never raises for a transfer problem: a missing source, a storage error or
        an integrity mismatch is logged, remembered in :attr:`failures` and comes
        back in the outcome. ``bytes_moved`` counts the bytes read from the
        source (so an upload the destination refused after receiving it counts
        too); ``on_bytes`` hears of them as they pass. Safe to call from several
        threads at once; a key already in flight returns a failed outcome at once.
        ``conditional``: whether ``destination`` is a :class:`ConditionalPut`, if the caller knows.
        """
        key = manifest.object_storage_key
        with self._lock:
            if key in self._in_flight:
                return TransferOutcome(key, False, 0, RuntimeError(f"a transfer of {key!r} is in flight"))
            self._in_flight.add(key)
        moved = 0

        def count(n: int) -> None:
            nonlocal moved
            moved += n
            if on_bytes is not None:
                on_bytes(n)

        try:
            try:
                if conditional is None:
                    conditional = isinstance(destination, ConditionalPut)
                if not conditional and destination.has(key):
                    self._clear(key)
                    return TransferOutcome(key, True)
                raw = source.open(key)
                if raw is None:
                    raise FileNotFoundError(f"source has no blob at {key!r}")
                stream = CountingReader(raw, count)
                try:
                    expected = expected_sha256(manifest.file_hash, key)
                    if conditional:
                        # The destination checks presence and the hash itself (one request).
                        destination.put_if_absent(key, stream, manifest.mime_type, sha256=expected)
                    else:
                        destination.put(key, HashingReader(stream, expected), manifest.mime_type)
                finally:
                    stream.close()
            except Exception as err:
                logger.warning("blob %s of %s failed: %s", direction, key, err)
                self._record_failure(key, direction, f"{type(err).__name__}: {err}")
                return TransferOutcome(key, False, moved, err)
            self._clear(key)
            return TransferOutcome(key, True, moved)
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
