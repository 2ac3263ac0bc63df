"""Synthetic records, app rows and blobs, made before any clock starts."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from starkeep_sync import (
    AppSyncableNamespace,
    AppSyncableRowEntry,
    AppSyncableTableInfo,
    DataRecord,
    HLCClock,
    create_data_record,
    shared_object_key,
)
from starkeep_sync.device.memory import MemoryAppSource

APP_ID = "bench"
TABLE = "items"
NAMESPACE = AppSyncableNamespace(APP_ID, [AppSyncableTableInfo(TABLE, ["id"])])
MIB = 1024 * 1024


def metadata_records(clock: HLCClock, n: int, prefix: str = "") -> list[DataRecord]:
    """``n`` live shared records without blobs (``objectStorageKey`` empty: metadata only)."""
    out = []
    for i in range(n):
        digest = hashlib.sha256(f"{prefix}{clock.node_id}:{i}".encode()).hexdigest()
        out.append(create_data_record(
            clock, type="image/jpeg", origin_app_id="bench", content_hash=digest, object_storage_key="",
            size_bytes=100_000 + i, mime_type="image/jpeg", original_filename=f"photo-{i:07d}.jpg",
            label=f"holiday {i % 97}",
        ))
    return out


def blob_record(clock: HLCClock, storage: Any, data: bytes) -> DataRecord:
    """A record whose blob (``data``) is put in ``storage``."""
    digest = hashlib.sha256(data).hexdigest()
    key = shared_object_key("image/jpeg", digest)
    storage.put(key, data, "image/jpeg")
    return create_data_record(clock, type="image/jpeg", origin_app_id="bench", content_hash=digest,
                              object_storage_key=key, size_bytes=len(data), mime_type="image/jpeg",
                              original_filename=f"photo-{digest[:8]}.jpg")


def large_blob_record(clock: HLCClock, storage: Any, size: int, scratch: Path, seed: int) -> tuple[DataRecord, Path]:
    """A record with one large random blob, written in chunks; returns it and a same-size copy source."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    scratch.parent.mkdir(parents=True, exist_ok=True)
    with open(scratch, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(8 * MIB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    key = shared_object_key("image/jpeg", digest.hexdigest())
    with open(scratch, "rb") as f:
        storage.put(key, f, "image/jpeg")
    record = create_data_record(clock, type="image/jpeg", origin_app_id="bench", content_hash=digest.hexdigest(),
                                object_storage_key=key, size_bytes=size, mime_type="image/jpeg",
                                original_filename="large.bin")
    return record, scratch


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def item_row(i: int) -> dict[str, Any]:
    return {"id": f"item-{i:07d}", "title": f"Item number {i}", "done": i % 3 == 0, "position": i,
            "tags": ["bench", f"t{i % 13}"]}


def app_rows(clock: HLCClock, source: MemoryAppSource, n: int) -> list[AppSyncableRowEntry]:
    """Insert ``n`` rows of ``bench.items`` into a device's app source; returns the entries."""
    out = []
    for i in range(n):
        entry = AppSyncableRowEntry(clock.now(), APP_ID, TABLE, "insert", item_row(i), None)
        source.applier.apply(entry)
        out.append(entry)
    return out
