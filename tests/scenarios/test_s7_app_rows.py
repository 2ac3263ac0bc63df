"""S7 app-row delete vs update: LWW on ``updated_at`` for AW rows (PROTOCOL §2, §9).

Both orders, the two writes in one round or in two, and a tie on
``(wall_time, counter)``. Whatever the order, both sides end with the same
row, stamped with the later HLC, in the state the later write left it.
"""

from __future__ import annotations

import pytest

from starkeep_sync import HLCClock, serialize_hlc
from tests.scenarios.support import AW, assert_converged_round, assert_same, converge

ID = "note-1"


def side_pair(pair, first: str):
    return (pair.local, pair.cloud) if first == "L" else (pair.cloud, pair.local)


@pytest.mark.parametrize("rounds", ["one-round", "two-rounds"])
@pytest.mark.parametrize("first", ["L", "C"])
@pytest.mark.parametrize("order", ["delete-then-update", "update-then-delete"])
def test_S7_app_row_delete_vs_update(pair, order: str, first: str, rounds: str):
    pair.local.write_row(ID, "original")
    converge(pair, AW.channel)
    a, b = side_pair(pair, first)  # a writes first, b second

    first_op, second_op = order.split("-then-")
    (a.delete_row(ID) if first_op == "delete" else a.update_row(ID, f"edit-by-{a.node_id}"))
    if rounds == "two-rounds":
        r = pair.sync(AW.channel)
        assert not r.has_more and not r.errors
        assert_same(pair, AW, ID)
    entry = b.delete_row(ID) if second_op == "delete" else b.update_row(ID, f"edit-by-{b.node_id}")
    expected = b.row(ID)
    assert expected["updated_at"] == serialize_hlc(entry.timestamp)

    r = pair.sync(AW.channel)

    assert not r.has_more and not r.errors
    got = assert_same(pair, AW, ID)
    assert got == expected
    assert got["updated_at"] == serialize_hlc(entry.timestamp)  # the later HLC holds
    if second_op == "delete":
        assert got["deleted_at"] == got["updated_at"]
    elif rounds == "one-round":
        # The update was made to a live row; that live row wins over the older delete.
        assert got["deleted_at"] is None and got["body"] == f"edit-by-{b.node_id}"
    else:
        # The update patched a row its side already knew deleted: it stays deleted,
        # carrying the edit, on both sides alike.
        assert got["deleted_at"] == got["updated_at"] and got["body"] == f"edit-by-{b.node_id}"
    assert_converged_round(pair, AW.channel)


@pytest.mark.parametrize("deleter", ["L", "C"])
def test_S7_app_row_delete_vs_update_tie_larger_node_id_wins(pair, deleter: str):
    pair.local.write_row(ID, "original")
    converge(pair, AW.channel)
    wall = pair.local.time() + 1_000
    clocks = {s.node_id: HLCClock(s.node_id, wall_clock=lambda: wall) for s in (pair.local, pair.cloud)}
    deleting, updating = (pair.local, pair.cloud) if deleter == "L" else (pair.cloud, pair.local)
    deleting.delete_row(ID, clock=clocks[deleting.node_id])
    updating.update_row(ID, "tied edit", clock=clocks[updating.node_id])
    pair.local.time.advance(2_000)

    r = pair.sync(AW.channel)

    assert not r.has_more and not r.errors
    got = assert_same(pair, AW, ID)
    assert got["node_id"] == "local" and got["updated_at"].endswith(":0000:local")
    assert got == pair.local.row(ID)
    assert bool(got["deleted_at"]) == (deleter == "L")
    assert_converged_round(pair, AW.channel)
