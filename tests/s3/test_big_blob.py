"""A large blob syncs device -> server -> device in bounded memory on every side (PROTOCOL §7).

The server runs in its own process (``manage.py runserver --noreload``) so its
peak resident set can be read from ``/proc/<pid>/status`` (``VmHWM``); the
devices run here, and ``tracemalloc`` measures their peak Python allocations.
Both devices are ``SqliteDeviceStore``s (file-system blobs) driven by the real
engine over HTTP. The blob is written to disk in 1 MiB pieces and never held whole.
"""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starkeep_sync import HLCClock, SyncEngine, create_data_record, create_sync_engine, shared_object_key
from starkeep_sync.client import HttpObjectStorage, create_http_sync_transport
from starkeep_sync.device.sqlite import SqliteDeviceStore
from starkeep_sync.device.supervisor import sync_until_done
from tests.s3.conftest import MotoS3
from tests.s3.server_process import MIB, ServerProcess, running_server

BIG = 256 * MIB
BOUND = 64 * MIB
MIME = "video/mp4"


def write_random_file(path: Path, size: int) -> str:
    """``size`` random bytes written in 1 MiB pieces; returns their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def sha256_of_stream(stream: Any) -> str:
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Device:
    store: SqliteDeviceStore
    engine: SyncEngine
    clock: HLCClock

    def add_file(self, path: Path, digest: str) -> str:
        """Store the file as a blob (streamed) and record it; returns the record id."""
        key = shared_object_key(MIME, digest)
        with open(path, "rb") as source:
            self.store.storage.put(key, source, MIME)
        record = create_data_record(self.clock, type=MIME, origin_app_id="tests", content_hash=digest,
                                    object_storage_key=key, size_bytes=path.stat().st_size, mime_type=MIME,
                                    original_filename=path.name)
        self.store.database.put(record)
        return record.id


def make_device(workdir: Path, name: str, server: ServerProcess, *, use_presign: bool = False) -> Device:
    workdir.mkdir(parents=True, exist_ok=True)
    store = SqliteDeviceStore(workdir / f"{name}.db", workdir / f"{name}-blobs")
    state = store.state(f"drive@{server.url}")
    clock = HLCClock(name, initial_state=state.get_hlc_clock_state(), on_tick=state.set_hlc_clock_state)
    base = f"{server.url}/apps/starkeep-drive"
    engine = create_sync_engine(
        local_database=store.database, local_storage=store.storage,
        remote_storage=HttpObjectStorage(base, auth=server.token, use_presign=use_presign, timeout=120),
        transport=create_http_sync_transport(base_url=base, auth=server.token),
        clock=clock, sync_state=state,
    )
    return Device(store, engine, clock)


@contextmanager
def emptied(moto_s3: MotoS3, bucket: str) -> Iterator[None]:
    """Drop the bucket's objects afterwards: moto holds them in this process."""
    try:
        yield
    finally:
        moto_s3.empty(bucket)


@contextmanager
def traced_peak() -> Iterator[Callable[[], int]]:
    """Peak bytes of Python allocations inside the block (``tracemalloc``)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    peak: list[int] = []
    try:
        yield lambda: peak[0]
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - base)
        if started:
            tracemalloc.stop()


def warm_up(phone: Device, laptop: Device, tmp: Path) -> None:
    """One small blob both ways, so every route and lazy import is loaded before the baseline."""
    small = tmp / "small.bin"
    phone.add_file(small, write_random_file(small, MIB))
    assert sum(r.shipped for r in sync_until_done(phone.engine)) == 1
    assert sum(r.applied for r in sync_until_done(laptop.engine)) == 1


def sync_one(device: Device, direction: str) -> tuple[float, int, int]:
    """One sync to completion: (seconds, peak traced bytes, bytes moved in ``direction``)."""
    started = time.monotonic()
    with traced_peak() as peak:
        results = sync_until_done(device.engine)
    assert not any(r.errors for r in results), [r.errors for r in results]
    moved = sum(r.pushed_bytes if direction == "push" else r.pulled_bytes for r in results)
    return time.monotonic() - started, peak(), moved


def report(name: str, **numbers: float) -> None:
    shown = ", ".join(f"{k}={v / MIB:.1f} MiB" if k.endswith("bytes") else f"{k}={v:.1f}s"
                      for k, v in numbers.items())
    print(f"\n[{name}] {shown}")


def test_a_256_mib_blob_syncs_through_the_server_in_bounded_memory(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as server:
        phone = make_device(tmp_path / "phone", "phone", server)
        laptop = make_device(tmp_path / "laptop", "laptop", server)
        warm_up(phone, laptop, tmp_path)
        baseline = server.peak_rss()

        big = tmp_path / "big.bin"
        digest = write_random_file(big, BIG)
        rid = phone.add_file(big, digest)
        big.unlink()

        push_s, push_peak, pushed = sync_one(phone, "push")
        pull_s, pull_peak, pulled = sync_one(laptop, "pull")
        growth = server.peak_rss() - baseline

        report("256 MiB via file-system server", push_s=push_s, pull_s=pull_s, server_baseline_bytes=baseline,
               server_growth_bytes=growth, client_push_peak_bytes=push_peak, client_pull_peak_bytes=pull_peak)
        assert pushed == BIG and pulled == BIG

        # The second device holds the record and the very bytes.
        record = laptop.store.database.get(rid)
        assert record is not None and record.content_hash == digest and record.size_bytes == BIG
        stream = laptop.store.storage.open(record.object_storage_key)
        assert stream is not None
        assert sha256_of_stream(stream) == digest
        # ... and so does the server's media folder, under the owner's prefix.
        on_server = list((tmp_path / "server" / "media").rglob(digest))
        assert len(on_server) == 1 and on_server[0].stat().st_size == BIG

        assert growth < BOUND, f"server peak RSS grew by {growth / MIB:.1f} MiB\n{server.output()}"
        assert push_peak < BOUND, f"client push peaked at {push_peak / MIB:.1f} MiB"
        assert pull_peak < BOUND, f"client pull peaked at {pull_peak / MIB:.1f} MiB"



S3_BIG = 128 * MIB


def test_big_blobs_stream_through_the_server_to_and_from_s3(tmp_path: Path, moto_s3: MotoS3) -> None:
    """With S3 storage the server streams too: PUT to S3, confirm and GET from S3.

    The phone uploads through the server's PUT route, the tablet straight to S3
    through a presigned URL (then the server's confirm hashes the object); the
    laptop downloads both through the server's GET route.
    """
    bucket = moto_s3.new_bucket()
    env = {"STARKEEP_TEST_S3_ENDPOINT": moto_s3.endpoint_url, "STARKEEP_TEST_S3_BUCKET": bucket}
    with running_server(tmp_path / "server", settings="tests.s3.server_settings", extra_env=env) as server, \
            emptied(moto_s3, bucket):
        phone = make_device(tmp_path / "phone", "phone", server)
        tablet = make_device(tmp_path / "tablet", "tablet", server, use_presign=True)
        laptop = make_device(tmp_path / "laptop", "laptop", server)
        warm_up(phone, laptop, tmp_path)
        warm_up(tablet, laptop, tmp_path)
        baseline = server.peak_rss()

        digests: dict[str, str] = {}
        for device in (phone, tablet):
            big = tmp_path / "big.bin"
            digest = write_random_file(big, S3_BIG)
            digests[device.add_file(big, digest)] = digest
            big.unlink()

        put_s, _, put_bytes = sync_one(phone, "push")
        growth_put = server.peak_rss() - baseline
        presign_s, _, presign_bytes = sync_one(tablet, "push")
        growth_confirm = server.peak_rss() - baseline
        pull_s, _, pulled = sync_one(laptop, "pull")
        growth = server.peak_rss() - baseline
        report("2 x 128 MiB via S3 server", put_s=put_s, presign_s=presign_s, pull_s=pull_s,
               server_baseline_bytes=baseline, growth_after_put_bytes=growth_put,
               growth_after_confirm_bytes=growth_confirm, growth_after_get_bytes=growth)
        assert (put_bytes, presign_bytes, pulled) == (S3_BIG, S3_BIG, 2 * S3_BIG)

        for rid, digest in digests.items():
            record = laptop.store.database.get(rid)
            assert record is not None and record.content_hash == digest
            stream = laptop.store.storage.open(record.object_storage_key)
            assert stream is not None and sha256_of_stream(stream) == digest
            keys = [k for k in moto_s3.object_keys(bucket) if k.endswith(digest)]
            assert len(keys) == 1 and keys[0].startswith("starkeep/")
            meta = moto_s3.client.head_object(Bucket=bucket, Key=keys[0])
            assert (meta["ContentLength"], meta["ContentType"]) == (S3_BIG, MIME)

        assert growth < BOUND, f"server peak RSS grew by {growth / MIB:.1f} MiB\n{server.output()}"
