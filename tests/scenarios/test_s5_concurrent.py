"""S5 concurrent updates: both sides write before one round; the later HLC wins (PROTOCOL §2 LWW, §9)."""

from __future__ import annotations

import pytest

from starkeep_sync import HLCClock
from tests.scenarios.support import (
    DATA_TYPES,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_same,
    converge,
)

types = pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
ID = "contested"


def shared(pair, dt: DataType) -> None:
    dt.insert(pair.local, ID, "v1")
    converge(pair, dt.channel)


def assert_winner_everywhere(pair, dt: DataType, expected) -> None:
    got = assert_same(pair, dt, ID)
    assert got == expected
    if not dt.deleted(got) and dt.blob_key(got):
        assert_blob_resident(pair.local, dt, got)
        assert_blob_resident(pair.cloud, dt, got)


@pytest.mark.parametrize("later", ["L", "C"])
@types
def test_S5_001_both_update_later_hlc_wins(pair, dt: DataType, later: str):
    shared(pair, dt)
    first, second = (pair.cloud, pair.local) if later == "L" else (pair.local, pair.cloud)
    dt.update(first, ID, f"by-{first.node_id}")
    dt.update(second, ID, f"by-{second.node_id}")
    expected = dt.get(second, ID)
    assert dt.hlc(expected) > dt.hlc(dt.get(first, ID))

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    assert r.shipped == 1  # local's version always goes out; it wins or loses there
    assert r.applied == (1 if later == "C" else 0)
    assert_winner_everywhere(pair, dt, expected)
    assert_converged_round(pair, dt.channel)  # round 2 is a no-op


@pytest.mark.parametrize("later", ["update", "delete"])
@pytest.mark.parametrize("deleter", ["L", "C"])
@types
def test_S5_002_update_vs_delete_either_way(pair, dt: DataType, deleter: str, later: str):
    shared(pair, dt)
    deleting, updating = (pair.local, pair.cloud) if deleter == "L" else (pair.cloud, pair.local)
    if later == "update":
        dt.delete(deleting, ID)
        dt.update(updating, ID, "edited")
        expected = dt.get(updating, ID)
        assert not dt.deleted(expected)
    else:
        dt.update(updating, ID, "edited")
        dt.delete(deleting, ID)
        expected = dt.get(deleting, ID)
        assert dt.deleted(expected)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    assert_winner_everywhere(pair, dt, expected)
    assert_converged_round(pair, dt.channel)


@pytest.mark.parametrize("ops", ["update/update", "delete/update", "update/delete"])
@types
def test_S5_003_equal_wall_and_counter_larger_node_id_wins(pair, dt: DataType, ops: str):
    """Same (wall_time, counter) on both sides: ``"local" > "cloud"``, so local's write wins."""
    shared(pair, dt)
    wall = pair.local.time() + 1_000
    pinned_local = HLCClock("local", wall_clock=lambda: wall)
    pinned_cloud = HLCClock("cloud", wall_clock=lambda: wall)
    local_op, cloud_op = ops.split("/")
    for side, op, clock in ((pair.local, local_op, pinned_local), (pair.cloud, cloud_op, pinned_cloud)):
        if op == "update":
            dt.update(side, ID, f"tie-{side.node_id}", clock=clock)
        else:
            dt.delete(side, ID, clock=clock)
    # Both real clocks move past the pinned instant before anything else is written.
    pair.local.time.advance(2_000)
    lo, cl = dt.get(pair.local, ID), dt.get(pair.cloud, ID)
    assert dt.hlc(lo)[:2] == dt.hlc(cl)[:2] == (wall, 0)

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors
    assert (r.shipped, r.applied) == (1, 0)
    assert_winner_everywhere(pair, dt, lo)
    assert dt.deleted(lo) == (local_op == "delete")
    assert_converged_round(pair, dt.channel)
