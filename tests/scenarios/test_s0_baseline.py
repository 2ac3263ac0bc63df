"""S0 baseline: clean inserts both ways, no-op and idempotent rounds, fresh starts (PROTOCOL §9)."""

from __future__ import annotations

import pytest

from tests.scenarios.support import (
    AR,
    AR_NOBLOB,
    AW,
    SR,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_same,
    assert_sides_equal,
    converge,
    synced_ids,
)

S0_TYPES = pytest.mark.parametrize("dt", [SR, AR, AR_NOBLOB, AW], ids=str)


@S0_TYPES
def test_S0_001_clean_local_insert_reaches_cloud(pair, dt: DataType):
    dt.insert(pair.local, "s0-1")
    item = dt.get(pair.local, "s0-1")

    r = pair.sync(dt.channel)

    assert (r.shipped, r.applied, r.received, r.has_more) == (1, 0, 0, False)
    assert not r.errors
    assert assert_same(pair, dt, "s0-1") == item
    if dt.has_blobs:
        assert_blob_resident(pair.cloud, dt, item)
    own, peer = pair.watermarks(dt.channel)
    assert peer["local"] == dt.hlc(item)
    # No echo: the pushed item is covered by our own vector, so it is never sent back.
    assert own["local"] == dt.hlc(item)
    assert_converged_round(pair, dt.channel)


@S0_TYPES
def test_S0_002_clean_cloud_insert_reaches_local(pair, dt: DataType):
    dt.insert(pair.cloud, "s0-2")
    item = dt.get(pair.cloud, "s0-2")
    synced = synced_ids(pair, dt.channel)

    r = pair.sync(dt.channel)

    assert (r.shipped, r.applied, r.received, r.has_more) == (0, 1, 1, False)
    assert assert_same(pair, dt, "s0-2") == item
    if dt.has_blobs:
        assert_blob_resident(pair.local, dt, item)
    assert synced == [["s0-2"]]
    own, peer = pair.watermarks(dt.channel)
    assert own["cloud"] == dt.hlc(item)
    assert peer["cloud"] == dt.hlc(item)
    assert_converged_round(pair, dt.channel)


@S0_TYPES
def test_S0_006_converged_round_is_a_noop(pair, dt: DataType):
    dt.insert(pair.local, "mine")
    dt.insert(pair.cloud, "theirs")
    r = pair.sync(dt.channel)
    assert (r.shipped, r.applied, r.has_more) == (1, 1, False)
    synced = synced_ids(pair, dt.channel)

    assert_converged_round(pair, dt.channel, rounds=3)
    assert synced == []  # nothing newly applied, nothing announced
    assert_sides_equal(pair, dt)


@S0_TYPES
def test_S0_007_repeat_is_idempotent(pair, dt: DataType):
    for i in range(3):
        dt.insert(pair.local, f"l{i}")
        dt.insert(pair.cloud, f"c{i}")
    converge(pair, dt.channel)
    before_local, before_cloud = dt.all(pair.local), dt.all(pair.cloud)

    # Replay the whole history: both vectors forgotten, every item travels again.
    pair.reset_watermarks(dt.channel)
    r = pair.sync(dt.channel)

    assert r.shipped == 6  # everything local holds (the cloud's three too), above an empty peer vector
    assert r.received == 0  # the responder holds nothing the request did not carry: no echo
    assert r.applied == 0
    assert r.bytes_moved == 0  # every blob is already where it goes
    assert not r.has_more
    assert dt.all(pair.local) == before_local
    assert dt.all(pair.cloud) == before_cloud
    assert_converged_round(pair, dt.channel)


@S0_TYPES
def test_S0_008_fresh_start_from_zero_watermarks(pair, dt: DataType):
    for i in range(4):
        dt.insert(pair.local, f"l{i}")
    for i in range(3):
        dt.insert(pair.cloud, f"c{i}")
    assert pair.watermarks(dt.channel) == ({}, {})

    results = converge(pair, dt.channel)

    assert sum(r.shipped for r in results) == 4
    assert sum(r.applied for r in results) == 3
    items = assert_sides_equal(pair, dt)
    assert len(items) == 7
    if dt.has_blobs:
        for item in items.values():
            assert_blob_resident(pair.local, dt, item)
            assert_blob_resident(pair.cloud, dt, item)


@S0_TYPES
def test_S0_009_only_the_new_item_ships_after_convergence(pair, dt: DataType):
    for i in range(3):
        dt.insert(pair.local, f"old{i}")
    converge(pair, dt.channel)

    dt.insert(pair.local, "new-local")
    r = pair.sync(dt.channel)
    assert (r.shipped, r.applied, r.received, r.has_more) == (1, 0, 0, False)
    assert_same(pair, dt, "new-local")

    dt.insert(pair.cloud, "new-cloud")
    r = pair.sync(dt.channel)
    assert (r.shipped, r.applied, r.received, r.has_more) == (0, 1, 1, False)
    assert_same(pair, dt, "new-cloud")
    assert len(assert_sides_equal(pair, dt)) == 5
    assert_converged_round(pair, dt.channel)
