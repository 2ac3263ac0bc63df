"""A converged round reads no store: coverage that holds nothing above the other side's vector is enough."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pytest

from starkeep_sync import HLCClock, create_data_record, create_sync_engine
from starkeep_sync.core.hlc import HLCTimestamp, serialize_hlc
from starkeep_sync.core.protocols import RecordPage
from starkeep_sync.core.records import AppSyncableNamespace, AppSyncableRowEntry, AppSyncableTableInfo
from starkeep_sync.core.responder import create_in_process_sync_transport
from starkeep_sync.device.memory import MemoryAppSource, MemoryDatabaseAdapter, MemoryObjectStorage
from starkeep_sync.device.supervisor import sync_until_done

pytestmark = pytest.mark.nodb


class CountingDatabase(MemoryDatabaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def query_since(self, watermarks: Mapping[str, HLCTimestamp], limit: int, cursor: str | None = None,
                    exclude: Collection[tuple[str, HLCTimestamp]] | None = None) -> RecordPage:
        self.reads += 1
        return super().query_since(watermarks, limit, cursor, exclude)


def record(clock: HLCClock, n: int) -> Any:
    return create_data_record(clock, type="text/plain", origin_app_id="t", content_hash="", object_storage_key="",
                              size_bytes=0, id=f"r{n}")


def test_a_converged_shared_round_reads_neither_store_and_a_new_write_is_read_and_shipped() -> None:
    server, device = CountingDatabase(), CountingDatabase()
    transport = create_in_process_sync_transport(database=server, storage=MemoryObjectStorage(),
                                                 clock=HLCClock("cloud"))
    clock = HLCClock("phone")
    for n in range(5):
        device.put(record(clock, n))
    engine = create_sync_engine(local_database=device, local_storage=MemoryObjectStorage(),
                                remote_storage=MemoryObjectStorage(), transport=transport, clock=clock)
    sync_until_done(engine)
    assert len(server) == 5
    server.reads = device.reads = 0
    result = engine.exchange()
    assert (result.shipped, result.applied, result.has_more) == (0, 0, False)
    assert (server.reads, device.reads) == (0, 0)
    device.put(record(clock, 9))  # above the peer vector: read and shipped
    assert engine.exchange().shipped == 1 and device.reads == 1 and server.get("r9") is not None


def test_a_converged_app_round_reads_no_table_and_a_new_row_is_read() -> None:
    ns = AppSyncableNamespace("notes", [AppSyncableTableInfo("notes", ["id"]), AppSyncableTableInfo("tags", ["id"])])
    server_source, device_source = MemoryAppSource([ns]), MemoryAppSource([ns])
    scans: list[str] = []
    for source in (server_source, device_source):
        inner = source.applier.scan_since

        def counted(app_id: str, table: str, *args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            scans.append(table)
            return _inner(app_id, table, *args, **kwargs)

        source.applier.scan_since = counted  # type: ignore[method-assign]
    clock = HLCClock("phone")
    stamp = clock.now()
    device_source.applier.apply(AppSyncableRowEntry(stamp, "notes", "notes", "insert",
                                                    {"id": "n1", "updated_at": serialize_hlc(stamp)}, None))
    transport = create_in_process_sync_transport(database=None, storage=MemoryObjectStorage(), clock=HLCClock("cloud"),
                                                 app_source=server_source, sync_shared_records=False, app_id="notes")
    engine = create_sync_engine(local_database=None, local_storage=MemoryObjectStorage(),
                                remote_storage=MemoryObjectStorage(), transport=transport, clock=clock,
                                app_source=device_source, sync_shared_records=False, app_id="notes")
    sync_until_done(engine)
    assert server_source.applier.get_row("notes", "notes", ["n1"]) is not None
    scans.clear()
    assert engine.exchange().shipped == 0 and scans == []
    stamp = clock.now()
    device_source.applier.apply(AppSyncableRowEntry(stamp, "notes", "tags", "insert",
                                                    {"id": "t1", "updated_at": serialize_hlc(stamp)}, None))
    # Only the table with news: on the device, and on the server, which holds the row it just took in
    # above the device's vector (and leaves it out of the answer: no echo).
    result = engine.exchange()
    assert result.shipped == 1 and result.received == 0 and scans == ["tags", "tags"]
