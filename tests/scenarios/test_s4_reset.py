"""S4 watermark reset: wiped vectors, new devices, fresh, wiped and restored servers (PROTOCOL §4, §9)."""

from __future__ import annotations

import pytest

from tests.scenarios.support import (
    DATA_TYPES,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_each_returned_once,
    assert_sides_equal,
    converge,
    echoed,
)

types = pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
SMALL = {"page_limit": 3, "scan_page_size": 2}


def history(pair, dt: DataType, tag: str = "", n: int = 4) -> None:
    """Items on both sides, from three nodes, some updated, one deleted."""
    x = pair.local.node_clock("nodeX")
    for i in range(n):
        dt.insert(pair.local, f"l{tag}{i}", f"l{tag}{i}")
        dt.insert(pair.cloud, f"c{tag}{i}", f"c{tag}{i}")
        dt.insert(pair.local, f"x{tag}{i}", f"x{tag}{i}", clock=x)
    dt.update(pair.local, f"l{tag}0", f"l{tag}0-v2")
    dt.delete(pair.cloud, f"c{tag}1")


def assert_blobs_everywhere(pair, dt: DataType, items) -> None:
    if not dt.has_blobs:
        return
    for item in items.values():
        if not dt.deleted(item):
            assert_blob_resident(pair.local, dt, item)
            assert_blob_resident(pair.cloud, dt, item)


@pytest.mark.parametrize("wiped", ["both", "own", "peer"])
@types
def test_S4_001_requester_watermarks_wiped_converge_without_drift(pair, dt: DataType, wiped: str):
    history(pair, dt)
    converge(pair, dt.channel, **SMALL)
    before = assert_sides_equal(pair, dt)
    vectors = pair.watermarks(dt.channel)

    if wiped == "both":
        pair.wipe_local_state(dt.channel)
    else:
        pair.reset_watermarks(dt.channel, own=wiped == "own", peer=wiped == "peer")
    start = len(pair.exchanges)
    results = converge(pair, dt.channel, **SMALL)

    assert len(results) > 1  # several pages
    assert sum(r.applied for r in results) == 0  # nothing lands twice
    assert sum(r.bytes_moved for r in results) == 0
    # Whatever the cloud re-sends, it sends once.
    assert len(assert_each_returned_once(pair, dt.channel, start)) == sum(r.received for r in results)
    if wiped == "peer":
        # The own vector is intact: nothing comes back.
        assert sum(r.received for r in results) == 0
    if wiped == "own":
        assert sum(r.shipped for r in results) == 0
    else:
        # Local re-ships its first page only: the responder's coverage vector then
        # replaces the empty peer vector and says the cloud already holds the rest.
        assert sum(r.shipped for r in results) == SMALL["page_limit"]
        assert echoed(pair, dt.channel, start) == []
    assert assert_sides_equal(pair, dt) == before
    assert pair.watermarks(dt.channel) == vectors  # no drift


@types
def test_S4_002_new_device_with_data_joins(pair, dt: DataType):
    # The cloud already holds data (from other devices); the new device has its own, and no state.
    y = pair.cloud.node_clock("nodeY")
    for i in range(5):
        dt.insert(pair.cloud, f"c{i}", f"c{i}")
        dt.insert(pair.cloud, f"y{i}", f"y{i}", clock=y)
    for i in range(4):
        dt.insert(pair.local, f"n{i}", f"n{i}")

    results = converge(pair, dt.channel, **SMALL)

    assert sum(r.shipped for r in results) == 4
    assert sum(r.applied for r in results) == 10
    assert echoed(pair, dt.channel) == []
    items = assert_sides_equal(pair, dt)
    assert len(items) == 14
    assert_blobs_everywhere(pair, dt, items)


@types
def test_S4_003_fresh_server_with_none(pair, dt: DataType):
    """A device with data and zero state meets an empty server: everything ships once."""
    x = pair.local.node_clock("nodeX")
    for i in range(5):
        dt.insert(pair.local, f"l{i}", f"l{i}")
        dt.insert(pair.local, f"x{i}", f"x{i}", clock=x)
    dt.delete(pair.local, "l3")

    results = converge(pair, dt.channel, **SMALL)

    assert sum(r.shipped for r in results) == 10
    assert sum(r.applied for r in results) == 0
    assert sum(r.received for r in results) == 0
    items = assert_sides_equal(pair, dt)
    assert len(items) == 10
    assert_blobs_everywhere(pair, dt, items)


@types
def test_S4_004_wiped_responder_is_detected_and_everything_reshipped(pair, dt: DataType):
    history(pair, dt)
    converge(pair, dt.channel)
    before = assert_sides_equal(pair, dt)

    pair.cloud.wipe()  # reinstalled from scratch; the device's state still says "all synced"
    r = pair.sync(dt.channel, **SMALL)
    # Nothing is above the old peer vector, but the responder's coverage went down:
    # that alone must make the round report more to do.
    assert (r.shipped, r.applied, r.has_more) == (0, 0, True)
    results = [r, *converge(pair, dt.channel, **SMALL)]

    assert sum(x.shipped for x in results) == len(before)  # every item local holds, cloud-made ones too
    assert sum(x.applied for x in results) == 0
    assert assert_sides_equal(pair, dt) == before
    assert_blobs_everywhere(pair, dt, before)


@types
def test_S4_005_restored_responder_gets_what_it_lost(pair, dt: DataType):
    history(pair, dt, "a")
    converge(pair, dt.channel)
    backup = pair.cloud.snapshot()

    history(pair, dt, "b")  # more work on both sides after the backup
    dt.delete(pair.local, "la2")
    converge(pair, dt.channel)
    before = assert_sides_equal(pair, dt)

    pair.cloud.restore(backup)
    lost = {k for k, v in before.items() if dt.get(pair.cloud, k) != v}
    assert lost  # the restore really lost something
    r = pair.sync(dt.channel)
    # Nothing is above the old peer vector, but the responder's coverage went down.
    assert (r.shipped, r.applied, r.has_more) == (0, 0, True)
    results = [r, *converge(pair, dt.channel)]

    assert sum(x.shipped for x in results) == len(lost)  # exactly what it lost, once
    assert sum(x.applied for x in results) == 0
    assert assert_sides_equal(pair, dt) == before
    assert_blobs_everywhere(pair, dt, before)
    assert_converged_round(pair, dt.channel)
