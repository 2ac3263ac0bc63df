"""Scenario helpers: the three data types behind one interface, and common checks.

Everything here goes through the ``pair`` fixture API (:class:`tests.harness.Pair`
and :class:`tests.harness.Side`), so the scenarios run unchanged in-process and
over HTTP.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from starkeep_sync import (
    FILE_RECORDS_TABLE,
    LOCAL_DATA_SYNCED,
    AppSyncableRowEntry,
    ChangeEvent,
    ExchangeResult,
    HLCClock,
    HLCTimestamp,
    RecordResidency,
    deserialize_hlc,
    serialize_hlc,
)
from tests.harness import NOTES_APP, Pair, Side

# -- data types -----------------------------------------------------------------


@dataclass(frozen=True)
class DataType:
    """SR, AR or AW: how to write, read and judge one item of that type on a side."""

    name: str
    channel: str

    def __str__(self) -> str:
        return self.name

    # writes (each returns nothing useful; read back with ``get``)
    def insert(self, side: Side, rid: str, text: str | None = None, *, clock: HLCClock | None = None) -> None:
        raise NotImplementedError

    def update(self, side: Side, rid: str, text: str, *, clock: HLCClock | None = None) -> None:
        """Change a held item. A side that holds no copy has nothing to update."""
        raise NotImplementedError

    def delete(self, side: Side, rid: str, *, clock: HLCClock | None = None) -> None:
        raise NotImplementedError

    # reads
    def get(self, side: Side, rid: str) -> Any:
        raise NotImplementedError

    def all(self, side: Side) -> dict[str, Any]:
        """Every item of this type held on ``side``, by id, tombstones included."""
        raise NotImplementedError

    def hlc(self, item: Any) -> HLCTimestamp:
        raise NotImplementedError

    def deleted(self, item: Any) -> bool:
        raise NotImplementedError

    def blob_key(self, item: Any) -> str | None:
        return None

    def content_hash(self, item: Any) -> str | None:
        return None

    @property
    def has_blobs(self) -> bool:
        return False


class SharedRecords(DataType):
    def insert(self, side, rid, text=None, *, clock=None):
        side.write_record(rid, text=text or rid, clock=clock)

    def update(self, side, rid, text, *, clock=None):
        if side.record(rid) is not None:
            side.write_record(rid, text=text, clock=clock)

    def delete(self, side, rid, *, clock=None):
        side.delete_record(rid, clock=clock)

    def get(self, side, rid):
        return side.record(rid)

    def all(self, side):
        return {r.id: r for r in side.all_records()}

    def hlc(self, item):
        return item.updated_at

    def deleted(self, item):
        return item.deleted_at is not None

    def blob_key(self, item):
        return item.object_storage_key or None

    def content_hash(self, item):
        return item.content_hash

    @property
    def has_blobs(self) -> bool:
        return True


class AppRecords(DataType):
    """Rows of ``_starkeep_sync_records``: an app's file-backed records."""

    with_key: bool = True

    def insert(self, side, rid, text=None, *, clock=None):
        side.write_file_row(rid, text, with_key=self.with_key, clock=clock)

    def update(self, side, rid, text, *, clock=None):
        if side.file_row(rid) is not None:
            side.write_file_row(rid, text, with_key=self.with_key, clock=clock)

    def delete(self, side, rid, *, clock=None):
        side.delete_row(rid, table=FILE_RECORDS_TABLE, clock=clock)

    def get(self, side, rid):
        return side.file_row(rid)

    def all(self, side):
        return {r["id"]: r for r in side.rows(FILE_RECORDS_TABLE)}

    def hlc(self, item):
        return deserialize_hlc(item["updated_at"])

    def deleted(self, item):
        return bool(item.get("deleted_at"))

    def blob_key(self, item):
        return item.get("object_storage_key") or None

    def content_hash(self, item):
        return item.get("content_hash") or None

    @property
    def has_blobs(self) -> bool:
        return self.with_key


class AppRecordsWithoutBlob(AppRecords):
    """AR rows that name no blob: metadata only, like an AW row."""

    with_key = False


class AppRows(DataType):
    """Rows of the app table ``notes``: metadata only."""

    def insert(self, side, rid, text=None, *, clock=None):
        side.write_row(rid, text or rid, clock=clock)

    def update(self, side, rid, text, *, clock=None):
        side.update_row(rid, text, clock=clock)

    def delete(self, side, rid, *, clock=None):
        side.delete_row(rid, clock=clock)

    def get(self, side, rid):
        return side.row(rid)

    def all(self, side):
        return {r["id"]: r for r in side.rows()}

    def hlc(self, item):
        return deserialize_hlc(item["updated_at"])

    def deleted(self, item):
        return bool(item.get("deleted_at"))


SR = SharedRecords("SR", "drive")
AR = AppRecords("AR", NOTES_APP)
AR_NOBLOB = AppRecordsWithoutBlob("AR_noblob", NOTES_APP)
AW = AppRows("AW", NOTES_APP)

DATA_TYPES = [SR, AR, AW]
BLOB_TYPES = [SR, AR]


def winner(dt: DataType, *items: Any) -> Any:
    """The LWW winner among copies of one item (``None`` for a missing copy)."""
    held = [i for i in items if i is not None]
    return max(held, key=dt.hlc) if held else None


# -- checks -----------------------------------------------------------------------


def assert_same(pair: Pair, dt: DataType, rid: str) -> Any:
    """Both sides hold the identical copy of ``rid``; return it."""
    local, cloud = dt.get(pair.local, rid), dt.get(pair.cloud, rid)
    assert local == cloud, f"{dt} {rid}: sides differ\n local={local}\n cloud={cloud}"
    return local


def assert_blob_resident(side: Side, dt: DataType, item: Any) -> None:
    """The blob ``item`` names is on ``side`` and its bytes match the content hash."""
    key = dt.blob_key(item)
    assert key, f"{item} names no blob"
    assert side.has_blob(key), f"{side.node_id} lacks blob {key}"
    obj = side.storage.get(key)
    assert obj is not None
    assert hashlib.sha256(obj.data).hexdigest() == dt.content_hash(item)
    assert side.residency(item) == RecordResidency.RESIDENT


def assert_converged_round(pair: Pair, channel: str, rounds: int = 1, **kw: Any) -> None:
    """A round that ships 0, applies 0, receives 0, moves no bytes and leaves both vectors alone."""
    for _ in range(rounds):
        before = pair.watermarks(channel)
        r = pair.sync(channel, **kw)
        assert (r.shipped, r.applied, r.received, r.has_more) == (0, 0, 0, False), r
        assert r.bytes_moved == 0, r
        assert not r.errors, r.errors
        assert pair.watermarks(channel) == before


def converge(pair: Pair, channel: str, **kw: Any) -> list[ExchangeResult]:
    """Rounds until ``has_more`` is false, then check the next round is a no-op."""
    results = pair.sync_until_done(channel, **kw)
    assert_converged_round(pair, channel, **kw)
    return results


def events(pair: Pair, channel: str, event_type: str, **kw: Any) -> list[list[str]]:
    """Subscribe to ``event_type`` on the engine for ``channel``; the list fills as rounds run."""
    seen: list[list[str]] = []

    def listener(event: ChangeEvent) -> None:
        if event.event_type == event_type:
            seen.append(list(event.record_ids))

    pair.engine(channel, **kw).change_notifier.subscribe(listener)
    return seen


def synced_ids(pair: Pair, channel: str, **kw: Any) -> list[list[str]]:
    """The ids of each ``local-data-synced`` event on the engine for ``channel``, as rounds run."""
    return events(pair, channel, LOCAL_DATA_SYNCED, **kw)


def assert_sides_equal(pair: Pair, dt: DataType) -> dict[str, Any]:
    """Both sides hold exactly the same items of ``dt``; return them."""
    local, cloud = dt.all(pair.local), dt.all(pair.cloud)
    only_local, only_cloud = sorted(local.keys() - cloud.keys()), sorted(cloud.keys() - local.keys())
    assert not only_local and not only_cloud, f"only local: {only_local[:5]}, only cloud: {only_cloud[:5]}"
    diff = [k for k in local if local[k] != cloud[k]]
    assert not diff, f"{len(diff)} items differ, e.g. {local[diff[0]]} vs {cloud[diff[0]]}"
    return local


def _wire_keys(records: Any, entries: Any) -> set[tuple[Any, ...]]:
    keys: set[tuple[Any, ...]] = {("r", r.id, r.updated_at) for r in records}
    for e in entries:
        ref = e.where or e.row or {}
        keys.add(("a", e.app_id, e.table, ref.get("id"), e.timestamp))
    return keys


def echoed(pair: Pair, channel: str, since: int = 0) -> list[tuple[Any, ...]]:
    """Items the responder returned after the requester had pushed them (same round or later)."""
    pushed: set[tuple[Any, ...]] = set()
    out = []
    for ex in pair.exchanges[since:]:
        if ex.channel != channel:
            continue
        pushed |= _wire_keys(ex.request.records, ex.request.app_syncable_rows)
        out.extend(sorted(_wire_keys(ex.response.records, ex.response.app_syncable_rows) & pushed, key=str))
    return out


def returned(pair: Pair, channel: str, since: int = 0) -> list[tuple[Any, ...]]:
    """Every item the responder sent on ``channel`` (from round ``since`` on), in order."""
    out: list[tuple[Any, ...]] = []
    for ex in pair.exchanges[since:]:
        if ex.channel == channel:
            out.extend(sorted(_wire_keys(ex.response.records, ex.response.app_syncable_rows), key=str))
    return out


def assert_each_returned_once(pair: Pair, channel: str, since: int = 0) -> list[tuple[Any, ...]]:
    items = returned(pair, channel, since)
    dupes = {k for k in items if items.count(k) > 1}
    assert not dupes, f"returned more than once: {sorted(dupes, key=str)[:5]}"
    return items


def as_sent(entry: AppSyncableRowEntry) -> AppSyncableRowEntry:
    """An insert entry as a scan would send it: the full row carries its ``updated_at``."""
    return replace(entry, row={**(entry.row or {}), "updated_at": serialize_hlc(entry.timestamp)})
