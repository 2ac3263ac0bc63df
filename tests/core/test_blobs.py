"""Blob transfer rules of PROTOCOL §7: FileSyncEngine."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import IO

import pytest

from starkeep_sync.core.blobs import (
    CHUNK_SIZE,
    ChunkPipe,
    FileSyncEngine,
    FileSyncManifest,
    HashingReader,
    PipelinedSha256,
    content_digest,
    create_file_sync_engine,
    parse_content_digest,
    sha256_hex,
)
from starkeep_sync.core.exceptions import BlobIntegrityError
from starkeep_sync.core.protocols import ObjectStorage, StoredObject


class DictStorage:
    """An ObjectStorage honouring the put contract: nothing is stored if reading fails."""

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.content_types: dict[str, str | None] = {}
        self.opened: list[str] = []
        self.streams: list[io.BytesIO] = []

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        if isinstance(data, bytes):
            body = data
        else:
            chunks = []
            while chunk := data.read(64 * 1024):
                chunks.append(chunk)
            body = b"".join(chunks)
        self.objects[key] = body
        self.content_types[key] = content_type

    def get(self, key: str) -> StoredObject | None:
        body = self.objects.get(key)
        return None if body is None else StoredObject(body, self.content_types.get(key), len(body))

    def open(self, key: str) -> IO[bytes] | None:
        self.opened.append(key)
        body = self.objects.get(key)
        if body is None:
            return None
        stream = io.BytesIO(body)
        self.streams.append(stream)
        return stream

    def has(self, key: str) -> bool:
        return key in self.objects

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class ReadAllStorage(DictStorage):
    """A destination that reads its input with one ``read()`` call."""

    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        body = data if isinstance(data, bytes) else data.read()
        self.objects[key] = body


class FailingPutStorage(DictStorage):
    def put(self, key: str, data: bytes | IO[bytes], content_type: str | None = None) -> None:
        raise OSError("disk full")


class ExplodingSource(DictStorage):
    def open(self, key: str) -> IO[bytes] | None:
        raise AssertionError("source must not be read")


class BlockingSource(DictStorage):
    """``open`` waits on ``release`` after signalling ``opened``."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.entered = threading.Event()
        self.release = threading.Event()

    def open(self, key: str) -> IO[bytes] | None:
        self.entered.set()
        assert self.release.wait(10), "test never released the source"
        return super().open(key)


def manifest_for(data: bytes, *, key: str | None = None, content_hash: str | None = None,
                 mime: str | None = "image/png") -> FileSyncManifest:
    digest = sha256_hex(data)
    return FileSyncManifest(
        file_hash=digest if content_hash is None else content_hash,
        object_storage_key=key or f"shared/image/{digest[:2]}/{digest}",
        size_bytes=len(data),
        mime_type=mime,
    )


def test_fake_storage_satisfies_protocol() -> None:
    assert isinstance(DictStorage(), ObjectStorage)


def test_transfer_copies_bytes_and_content_type() -> None:
    data = b"hello blob"
    m = manifest_for(data)
    src, dst = DictStorage({m.object_storage_key: data}), DictStorage()
    engine = FileSyncEngine()
    assert engine.transfer_file(m, src, dst) is True
    assert dst.objects[m.object_storage_key] == data
    assert dst.content_types[m.object_storage_key] == "image/png"
    assert engine.bytes_moved == len(data)
    assert engine.failures == {}
    assert not engine.is_transfer_in_flight(m.object_storage_key)
    assert all(s.closed for s in src.streams)


def test_destination_already_has_key_succeeds_without_reading_source() -> None:
    data = b"already there"
    m = manifest_for(data)
    src = ExplodingSource({m.object_storage_key: data})
    dst = DictStorage({m.object_storage_key: data})
    engine = FileSyncEngine()
    assert engine.transfer_file(m, src, dst) is True
    assert engine.bytes_moved == 0


def test_destination_has_key_even_when_source_lacks_it() -> None:
    m = manifest_for(b"x")
    assert FileSyncEngine().transfer_file(m, DictStorage(), DictStorage({m.object_storage_key: b"x"}))


def test_in_flight_transfer_of_same_key_is_not_started_twice() -> None:
    data = b"slow bytes"
    m = manifest_for(data)
    src = BlockingSource({m.object_storage_key: data})
    dst = DictStorage()
    engine = FileSyncEngine()
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(engine.transfer_file(m, src, dst)))
    first.start()
    try:
        assert src.entered.wait(10)
        assert engine.is_transfer_in_flight(m.object_storage_key)
        assert engine.transfer_file(m, src, dst) is False
        assert engine.is_transfer_in_flight(m.object_storage_key)
        assert src.opened == []  # the second attempt did not open the source
        assert m.object_storage_key not in engine.failures  # "not done" is not a failure
        # Another key is not blocked by the one in flight.
        other = manifest_for(b"other")
        assert engine.transfer_file(other, DictStorage({other.object_storage_key: b"other"}), dst)
    finally:
        src.release.set()
        first.join(10)
    assert results == [True]
    assert src.opened == [m.object_storage_key]
    assert dst.objects[m.object_storage_key] == data
    assert not engine.is_transfer_in_flight(m.object_storage_key)
    # Once the first has finished, the key can be transferred again (short-circuits).
    assert engine.transfer_file(m, src, dst) is True


def test_missing_source_is_a_failure_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    m = manifest_for(b"gone")
    engine = FileSyncEngine()
    with caplog.at_level("WARNING", logger="starkeep_sync"):
        assert engine.transfer_file(m, DictStorage(), DictStorage(), direction="pull") is False
    failure = engine.failures[m.object_storage_key]
    assert failure.attempts == 1
    assert failure.direction == "pull"
    assert "FileNotFoundError" in failure.last_error
    assert any(m.object_storage_key in r.getMessage() for r in caplog.records)
    assert not engine.is_transfer_in_flight(m.object_storage_key)


def test_integrity_mismatch_stores_nothing() -> None:
    good = b"the real bytes"
    m = manifest_for(good)
    src = DictStorage({m.object_storage_key: b"tampered bytes"})
    dst = DictStorage()
    engine = FileSyncEngine()
    assert engine.transfer_file(m, src, dst) is False
    assert not dst.has(m.object_storage_key)
    assert dst.objects == {}
    assert "BlobIntegrityError" in engine.failures[m.object_storage_key].last_error
    assert all(s.closed for s in src.streams)


def test_integrity_checked_against_hash_named_key_without_content_hash() -> None:
    m = manifest_for(b"real", content_hash="")
    src = DictStorage({m.object_storage_key: b"fake"})
    dst = DictStorage()
    assert FileSyncEngine().transfer_file(m, src, dst) is False
    assert dst.objects == {}


def test_uppercase_content_hash_is_accepted() -> None:
    data = b"case"
    m = manifest_for(data, content_hash=sha256_hex(data).upper())
    dst = DictStorage()
    assert FileSyncEngine().transfer_file(m, DictStorage({m.object_storage_key: data}), dst)
    assert dst.objects[m.object_storage_key] == data


def test_no_sha256_means_no_integrity_check() -> None:
    key = "apps/notes/syncable/photo.jpg"
    m = FileSyncManifest(file_hash="", object_storage_key=key)
    dst = DictStorage()
    assert FileSyncEngine().transfer_file(m, DictStorage({key: b"anything"}), dst)
    assert dst.objects[key] == b"anything"


def test_large_blob_mismatch_detected_by_a_read_all_destination() -> None:
    good = b"a" * (CHUNK_SIZE * 2 + 10)
    bad = b"a" * CHUNK_SIZE + b"b" * (CHUNK_SIZE + 10)
    m = manifest_for(good)
    dst = ReadAllStorage()
    engine = FileSyncEngine()
    assert engine.transfer_file(m, DictStorage({m.object_storage_key: bad}), dst) is False
    assert dst.objects == {}
    # The same destination receives the whole of a good blob.
    assert engine.transfer_file(m, DictStorage({m.object_storage_key: good}), dst) is True
    assert dst.objects[m.object_storage_key] == good


def test_destination_error_is_a_failure() -> None:
    data = b"x"
    m = manifest_for(data)
    engine = FileSyncEngine()
    assert engine.transfer_file(m, DictStorage({m.object_storage_key: data}), FailingPutStorage()) is False
    assert "disk full" in engine.failures[m.object_storage_key].last_error


def test_failure_attempts_count_and_clear_after_success() -> None:
    times = iter([10.0, 20.0, 30.0])
    engine = FileSyncEngine(clock=lambda: next(times))
    data = b"eventually"
    m = manifest_for(data)
    src, dst = DictStorage(), DictStorage()
    assert engine.transfer_file(m, src, dst, direction="push") is False
    assert engine.transfer_file(m, src, dst, direction="push") is False
    f = engine.failures[m.object_storage_key]
    assert f.key == m.object_storage_key
    assert f.attempts == 2
    assert f.first_failure == 10.0
    assert f.last_failure == 20.0
    assert f.direction == "push"
    src.objects[m.object_storage_key] = data
    assert engine.transfer_file(m, src, dst) is True
    assert m.object_storage_key not in engine.failures
    assert engine.failures == {}


def test_failure_cleared_when_destination_already_has_key() -> None:
    m = manifest_for(b"z")
    engine = FileSyncEngine()
    dst = DictStorage()
    assert not engine.transfer_file(m, DictStorage(), dst)
    assert m.object_storage_key in engine.failures
    dst.objects[m.object_storage_key] = b"z"
    assert engine.transfer_file(m, DictStorage(), dst)
    assert engine.failures == {}


def test_failures_property_is_a_snapshot() -> None:
    m = manifest_for(b"q")
    engine = FileSyncEngine()
    engine.transfer_file(m, DictStorage(), DictStorage())
    snapshot = engine.failures
    snapshot.clear()
    assert m.object_storage_key in engine.failures


def test_files_to_push_and_pull() -> None:
    only_local = manifest_for(b"1")
    only_remote = manifest_for(b"2")
    both = manifest_for(b"3")
    neither = manifest_for(b"4")
    local = DictStorage({only_local.object_storage_key: b"1", both.object_storage_key: b"3"})
    remote = DictStorage({only_remote.object_storage_key: b"2", both.object_storage_key: b"3"})
    engine = create_file_sync_engine()
    manifests = [only_local, only_remote, both, neither]
    assert engine.get_files_to_push(manifests, local, remote) == [only_local]
    assert engine.get_files_to_pull(manifests, local, remote) == [only_remote]
    assert engine.get_files_to_push(iter([]), local, remote) == []


def test_hashing_reader_passes_good_bytes_and_refuses_bad_at_eof() -> None:
    data = b"0123456789" * 1000
    reader = HashingReader(io.BytesIO(data), hashlib.sha256(data).hexdigest())
    out = b""
    while chunk := reader.read(333):
        out += chunk
    assert out == data
    assert reader.bytes_read == len(data)
    assert reader.hexdigest() == sha256_hex(data)

    bad = HashingReader(io.BytesIO(data), "0" * 64)
    assert bad.read(len(data)) == data
    with pytest.raises(BlobIntegrityError):
        bad.read(1)


def test_hashing_reader_read_all_returns_everything() -> None:
    data = bytes(range(256)) * ((CHUNK_SIZE // 256) + 5)
    assert HashingReader(io.BytesIO(data), sha256_hex(data)).read() == data
    assert HashingReader(io.BytesIO(data), None).read(-1) == data
    with pytest.raises(BlobIntegrityError):
        HashingReader(io.BytesIO(data), "1" * 64).read()


def test_hashing_reader_max_bytes() -> None:
    reader = HashingReader(io.BytesIO(b"x" * 10), None, max_bytes=5)
    with pytest.raises(BlobIntegrityError):
        reader.read(10)


def test_hashing_reader_readinto_and_buffered_wrapping() -> None:
    data = b"abc" * 5000
    wrapped = io.BufferedReader(HashingReader(io.BytesIO(data), sha256_hex(data)))
    assert wrapped.read() == data
    bad = io.BufferedReader(HashingReader(io.BytesIO(data), "2" * 64))
    with pytest.raises(BlobIntegrityError):
        bad.read()


def test_content_digest_round_trip_and_malformed_values() -> None:
    digest = sha256_hex(b"abc")
    assert parse_content_digest(content_digest(digest)) == digest
    assert parse_content_digest(f"md5=:AAAA:,  {content_digest(digest)}") == digest
    assert parse_content_digest("sha-512=:AAAA:") is None
    for bad in ("sha-256", "sha-256=abc", "sha-256=:!!:", "sha-256=:AAAA:"):
        with pytest.raises(ValueError):
            parse_content_digest(bad)


class ConditionalStorage(DictStorage):
    """A destination that checks presence and the hash itself, like the HTTP client."""

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        super().__init__(objects)
        self.has_calls = 0
        self.digests: list[str | None] = []

    def has(self, key: str) -> bool:
        self.has_calls += 1
        return super().has(key)

    def put_if_absent(self, key: str, data: IO[bytes], content_type: str | None = None, *,
                      sha256: str | None = None) -> int | None:
        self.digests.append(sha256)
        if key in self.objects:
            return None
        body = data.read()
        if sha256 is not None and sha256_hex(body) != sha256:
            raise BlobIntegrityError("mismatch")
        self.put(key, body, content_type)
        return len(body)


def test_transfer_uses_a_conditional_put_without_asking_has_first() -> None:
    data = b"conditional"
    key = f"shared/other/aa/{sha256_hex(data)}"
    source, destination = DictStorage({key: data}), ConditionalStorage()
    engine = FileSyncEngine()
    manifest = FileSyncManifest(sha256_hex(data), key)
    assert engine.transfer_file(manifest, source, destination)
    assert destination.objects[key] == data and engine.bytes_moved == len(data)
    assert engine.transfer_file(manifest, source, destination)  # present: nothing moves
    assert engine.bytes_moved == len(data)
    assert destination.has_calls == 0 and destination.digests == [sha256_hex(data)] * 2

    bad = FileSyncManifest(sha256_hex(b"other"), "shared/other/bb/not-hash-named")
    source.objects[bad.object_storage_key] = data
    assert not engine.transfer_file(bad, source, destination)
    assert bad.object_storage_key not in destination.objects
    assert engine.failures[bad.object_storage_key].attempts == 1


def test_pipelined_sha256_matches_hashlib_and_stops_its_thread() -> None:
    import gc

    chunks = [bytes([i]) * (CHUNK_SIZE // 3 + i) for i in range(7)] + [bytearray(b"tail")]
    hasher = PipelinedSha256(depth=2)
    for chunk in chunks:
        hasher.update(chunk)  # type: ignore[arg-type]
    assert hasher.hexdigest() == sha256_hex(b"".join(chunks))
    assert not any(t.name == "starkeep-sha256" for t in threading.enumerate())

    single = PipelinedSha256()
    single.update(b"one chunk")  # hashed inline: no thread for a small blob
    assert not any(t.name == "starkeep-sha256" for t in threading.enumerate())
    assert single.hexdigest() == sha256_hex(b"one chunk")

    abandoned = PipelinedSha256()
    abandoned.update(b"a" * 10)
    abandoned.update(b"b" * 10)  # the thread starts here
    (thread,) = [t for t in threading.enumerate() if t.name == "starkeep-sha256"]
    del abandoned
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_chunk_pipe_keeps_order_and_hands_back_the_consumer_error() -> None:
    seen: list[bytes] = []
    pipe = ChunkPipe(seen.append, depth=1)
    for i in range(5):
        pipe.submit(bytes([i]))
    pipe.close()
    assert seen == [bytes([i]) for i in range(5)]

    def fail(chunk: bytes) -> None:
        if chunk == b"bad":
            raise OSError("disk full")

    failing = ChunkPipe(fail, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for chunk in [b"ok", b"ok", b"bad"] + [b"more"] * 50:  # raised by a later submit or by close
            failing.submit(chunk)
        failing.close()
