"""S2 tombstones: deletes travel both ways; both deleted; delete vs later update (PROTOCOL §9)."""

from __future__ import annotations

import pytest

from starkeep_sync import RecordResidency
from tests.scenarios.support import (
    DATA_TYPES,
    DataType,
    assert_converged_round,
    assert_same,
    converge,
    synced_ids,
)

ID = "doomed"


def sides(pair, who: str):
    return (pair.local, pair.cloud) if who == "L" else (pair.cloud, pair.local)


def shared_item(pair, dt: DataType) -> None:
    dt.insert(pair.local, ID, "v1")
    converge(pair, dt.channel)


@pytest.mark.parametrize("deleter", ["L", "C"])
@pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
def test_S2_001_delete_travels(pair, dt: DataType, deleter: str):
    shared_item(pair, dt)
    live = dt.get(pair.local, ID)
    actor, _ = sides(pair, deleter)
    dt.delete(actor, ID)
    tombstone = dt.get(actor, ID)
    assert dt.deleted(tombstone)
    synced = synced_ids(pair, dt.channel)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    if deleter == "L":
        assert (r.shipped, r.applied, r.received) == (1, 0, 0)
        assert synced == []
    else:
        assert (r.shipped, r.applied, r.received) == (0, 1, 1)
        assert synced == [[ID]]
    assert assert_same(pair, dt, ID) == tombstone
    assert dt.hlc(tombstone) > dt.hlc(live)
    for s in (pair.local, pair.cloud):
        assert s.residency(dt.get(s, ID)) == RecordResidency.TOMBSTONED
        if dt.blob_key(live):
            assert s.has_blob(dt.blob_key(live)), "sync must never delete a blob"
    assert_converged_round(pair, dt.channel)


@pytest.mark.parametrize("later", ["L", "C"])
@pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
def test_S2_002_both_deleted_later_tombstone_wins(pair, dt: DataType, later: str):
    shared_item(pair, dt)
    first, second = sides(pair, "C" if later == "L" else "L")
    dt.delete(first, ID)
    dt.delete(second, ID)
    early, late = dt.get(first, ID), dt.get(second, ID)
    assert dt.hlc(late) > dt.hlc(early)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    got = assert_same(pair, dt, ID)
    assert got == late
    assert dt.deleted(got)
    assert r.shipped == 1  # local's tombstone always ships; it only wins when it is the later one
    assert r.applied == (1 if later == "C" else 0)
    assert_converged_round(pair, dt.channel)


@pytest.mark.parametrize("order", ["delete-then-update", "update-then-delete"])
@pytest.mark.parametrize("deleter", ["L", "C"])
@pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
def test_S2_003_delete_vs_later_update_later_hlc_wins(pair, dt: DataType, deleter: str, order: str):
    """One side deletes, the other updates its live copy; the later HLC wins on both sides."""
    shared_item(pair, dt)
    deleting, updating = sides(pair, deleter)
    if order == "delete-then-update":
        dt.delete(deleting, ID)
        dt.update(updating, ID, "v2")
        expected = dt.get(updating, ID)
        assert not dt.deleted(expected)
    else:
        dt.update(updating, ID, "v2")
        dt.delete(deleting, ID)
        expected = dt.get(deleting, ID)
        assert dt.deleted(expected)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    got = assert_same(pair, dt, ID)
    assert got == expected
    if not dt.deleted(got) and dt.blob_key(got):
        assert pair.local.residency(got) == RecordResidency.RESIDENT
        assert pair.cloud.residency(got) == RecordResidency.RESIDENT
    assert_converged_round(pair, dt.channel)


@pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
def test_S2_004_tombstone_blocks_an_older_write_arriving_later(pair, dt: DataType):
    """An older write carried in after the delete never resurrects the item.

    For app rows the cloud deletes a row it never held: the applier stores the
    tombstone so the older insert, arriving later, loses.
    """
    third = pair.local.node_clock("nodeX")
    dt.insert(pair.local, ID, "old", clock=third)  # written on nodeX, carried by local, not yet synced
    old = dt.get(pair.local, ID)
    if dt.name == "SR":
        dt.insert(pair.cloud, ID, "cloud")
    dt.delete(pair.cloud, ID)
    tombstone = dt.get(pair.cloud, ID)
    assert tombstone is not None and dt.deleted(tombstone)
    assert dt.hlc(tombstone) > dt.hlc(old)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    assert r.shipped == 1  # the older write goes out and loses
    assert assert_same(pair, dt, ID) == tombstone
    peer = pair.watermarks(dt.channel)[1]
    assert peer["nodeX"] == dt.hlc(old)  # taken in (covered) though it lost
    assert_converged_round(pair, dt.channel)
