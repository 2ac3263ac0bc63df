"""Responder coverage: the vector is computed after apply, over the channel only; a halted
node is not covered; a peer that lost data gets it back; the clock skew guard (PROTOCOL §1, §4, §6)."""

from __future__ import annotations

import pytest

from starkeep_sync import AppSyncableRowEntry, HLCClock, SyncExchangeRequest
from tests.scenarios.support import (
    AR,
    AW,
    DATA_TYPES,
    SR,
    DataType,
    as_sent,
    assert_converged_round,
    assert_same,
    assert_sides_equal,
    converge,
    synced_ids,
)

types = pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
DAY_MS = 86_400_000


@types
def test_responder_coverage_is_computed_after_apply(pair, dt: DataType):
    dt.insert(pair.cloud, "theirs")
    dt.insert(pair.local, "mine")
    mine = dt.get(pair.local, "mine")

    pair.sync(dt.channel)

    # The vector that came back already covers what this very request carried.
    peer = pair.watermarks(dt.channel)[1]
    assert peer["local"] == dt.hlc(mine)
    assert peer["cloud"] == dt.hlc(dt.get(pair.cloud, "theirs"))


def test_responder_coverage_is_over_the_channel_only(pair):
    SR.insert(pair.cloud, "sr")
    AW.insert(pair.cloud, "aw")
    AR.insert(pair.cloud, "ar")
    pair.cloud.write_row("ot", "other", app_id="other", table="items")  # the cloud's latest write

    pair.sync("notes")
    assert pair.watermarks("notes")[1] == {"cloud": AR.hlc(AR.get(pair.cloud, "ar"))}
    pair.sync("drive")
    assert pair.watermarks("drive")[1] == {"cloud": SR.hlc(SR.get(pair.cloud, "sr"))}
    pair.sync("other")
    assert pair.watermarks("other")[1] == {"cloud": AW.hlc(pair.cloud.row("ot", "items", "other"))}


@types
def test_responder_coverage_skips_a_halted_node(pair, dt: DataType):
    """An item the responder refuses halts its node: nothing after it lands, nothing of it is covered."""
    x = pair.local.node_clock("nodeX")
    ahead = HLCClock("nodeX", wall_clock=lambda: pair.local.time() + 2 * DAY_MS)
    dt.insert(pair.local, "x-ok", clock=x)
    dt.insert(pair.local, "x-skewed", clock=ahead)  # 48 h ahead: refused
    dt.insert(pair.local, "mine")
    ok = dt.get(pair.local, "x-ok")

    for _ in range(2):
        r = pair.sync(dt.channel)
        assert not r.has_more
        assert dt.get(pair.cloud, "x-skewed") is None
        assert_same(pair, dt, "x-ok")
        assert_same(pair, dt, "mine")  # other nodes are unaffected
        peer = pair.watermarks(dt.channel)[1]
        assert peer["nodeX"] == dt.hlc(ok)  # the refused item is not covered, so it is offered again


def test_responder_coverage_halts_a_node_at_its_first_refused_row(pair):
    """Hand-made request: a row of an unregistered table halts its node for the round."""
    z = pair.local.node_clock("nodeZ")
    t1, t2, t3 = z.now(), z.now(), z.now()
    rows = [
        as_sent(AppSyncableRowEntry(t1, "notes", "notes", "insert", {"id": "z1", "body": "ok"})),
        as_sent(AppSyncableRowEntry(t2, "notes", "no_such_table", "insert", {"id": "z2"})),
        as_sent(AppSyncableRowEntry(t3, "notes", "notes", "insert", {"id": "z3", "body": "after the refusal"})),
    ]

    response = pair.transport("notes").exchange(SyncExchangeRequest(watermarks={}, app_syncable_rows=rows))

    assert pair.cloud.row("z1") is not None
    assert pair.cloud.row("z3") is None
    assert response.responder_watermarks["nodeZ"] == t1


@types
def test_responder_coverage_peer_that_lost_data_gets_it_back(pair, dt: DataType):
    for i in range(3):
        dt.insert(pair.local, f"l{i}")
        dt.insert(pair.cloud, f"c{i}")
    converge(pair, dt.channel)
    before = assert_sides_equal(pair, dt)

    # The responder loses everything: its coverage drops and local re-ships.
    pair.cloud.wipe()
    results = converge(pair, dt.channel)
    assert results[0].has_more
    assert assert_sides_equal(pair, dt) == before

    # The requester loses everything (data and state): the responder gives it all back.
    pair.local.wipe()
    pair.wipe_local_state(dt.channel)
    results = converge(pair, dt.channel)
    assert sum(r.applied for r in results) == len(before)
    assert assert_sides_equal(pair, dt) == before
    if dt.has_blobs:
        for item in before.values():
            assert pair.local.has_blob(dt.blob_key(item))


# -- clock skew ------------------------------------------------------------------


@types
def test_responder_coverage_refuses_clock_skew_without_moving_its_clock(pair, dt: DataType):
    # Well over 24 h ahead of both the test's manual time and a server's real clock.
    skew_wall = pair.local.time() + 2 * DAY_MS
    ahead = HLCClock("nodeS", wall_clock=lambda: skew_wall)
    dt.insert(pair.local, "skewed", clock=ahead)
    assert dt.hlc(dt.get(pair.local, "skewed")).wall_time == skew_wall

    r = pair.sync(dt.channel)

    assert not r.has_more
    assert dt.get(pair.cloud, "skewed") is None
    assert "nodeS" not in pair.watermarks(dt.channel)[1]
    # The responder's clock was not dragged a day ahead: its next write is stamped near now.
    dt.insert(pair.cloud, "after")
    assert dt.hlc(dt.get(pair.cloud, "after")).wall_time < skew_wall - DAY_MS
    # And the refusal never blocked anything else.
    r = pair.sync(dt.channel)
    assert r.applied == 1
    assert_same(pair, dt, "after")


@types
def test_responder_coverage_requester_refuses_clock_skew_too(pair, dt: DataType):
    skew_wall = pair.local.time() + 2 * DAY_MS
    ahead = HLCClock("nodeS", wall_clock=lambda: skew_wall)
    dt.insert(pair.cloud, "fine")
    dt.insert(pair.cloud, "skewed", clock=ahead)
    synced = synced_ids(pair, dt.channel)

    r = pair.sync(dt.channel)

    assert len(r.refused) == 1 and "skewed" not in str(synced)
    assert dt.get(pair.local, "skewed") is None
    assert_same(pair, dt, "fine")
    assert "nodeS" not in pair.watermarks(dt.channel)[0]  # asked for again next round
    dt.insert(pair.local, "after")
    assert dt.hlc(dt.get(pair.local, "after")).wall_time < skew_wall - DAY_MS
    r = pair.sync(dt.channel)
    assert r.shipped == 1 and len(r.refused) == 1


@types
def test_responder_coverage_converged_round_after_mixed_traffic(pair, dt: DataType):
    """A converged round moves nothing and leaves both vectors as they were, whatever came before."""
    x = pair.local.node_clock("nodeX")
    for i in range(3):
        dt.insert(pair.local, f"l{i}")
        dt.insert(pair.local, f"x{i}", clock=x)
        dt.insert(pair.cloud, f"c{i}")
    dt.delete(pair.local, "l1")
    dt.update(pair.cloud, "c2", "c2-v2")
    converge(pair, dt.channel, page_limit=2, scan_page_size=1)
    assert_converged_round(pair, dt.channel, rounds=2)
    assert_converged_round(pair, dt.channel, rounds=2, page_limit=2, scan_page_size=1)
