"""S1 presence x operation: insert / update / soft-delete on L or C from every presence (PROTOCOL §9).

After one round both sides agree, the LWW winner (later HLC) holds, blobs
arrive, and soft-deleted blobs stay.
"""

from __future__ import annotations

import pytest

from starkeep_sync import ZERO_HLC
from tests.scenarios.support import (
    DATA_TYPES,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_same,
    synced_ids,
    winner,
)

PRESENCES = ["neither", "local-only", "cloud-only", "both-same", "both-diverged"]
OPS = ["insert", "update", "soft-delete"]
SUBJECT = "subject"
NEW = "inserted"


def set_up_presence(pair, dt: DataType, presence: str) -> None:
    L, C = pair.local, pair.cloud
    if presence == "local-only":
        dt.insert(L, SUBJECT, "v1")
    elif presence == "cloud-only":
        dt.insert(C, SUBJECT, "v1")
    elif presence in ("both-same", "both-diverged"):
        dt.insert(L, SUBJECT, "v1")
        r = pair.sync(dt.channel)
        assert r.shipped == 1 and not r.has_more
        assert_same(pair, dt, SUBJECT)
        if presence == "both-diverged":
            dt.update(L, SUBJECT, "v2-local")
            dt.update(C, SUBJECT, "v2-cloud")
            assert dt.get(L, SUBJECT) != dt.get(C, SUBJECT)


@pytest.mark.parametrize("presence", PRESENCES)
@pytest.mark.parametrize("actor", ["L", "C"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", DATA_TYPES, ids=str)
def test_S1_presence_x_operation(pair, dt: DataType, op: str, actor: str, presence: str):
    set_up_presence(pair, dt, presence)
    side = pair.local if actor == "L" else pair.cloud
    held_before_op = dt.get(side, SUBJECT)

    if op == "insert":
        dt.insert(side, NEW, f"new-{actor}")
    elif op == "update":
        dt.update(side, SUBJECT, f"v3-{actor}")
    else:
        dt.delete(side, SUBJECT)

    ids = [SUBJECT, NEW]
    before = {rid: (dt.get(pair.local, rid), dt.get(pair.cloud, rid)) for rid in ids}
    blobs_before = {
        (s.node_id, key)
        for s in (pair.local, pair.cloud)
        for rid in ids
        if (item := dt.get(s, rid)) is not None and (key := dt.blob_key(item)) and s.has_blob(key)
    }
    synced = synced_ids(pair, dt.channel)
    peer = pair.watermarks(dt.channel)[1]

    r = pair.sync(dt.channel)

    assert not r.has_more and not r.errors, r
    # Local versions the cloud has not taken in ship; what the cloud wins with comes back, nothing else.
    expect_shipped = sum(
        1 for lo, cl in before.values()
        if lo is not None and lo != cl and dt.hlc(lo) > peer.get(dt.hlc(lo).node_id, ZERO_HLC)
    )
    expect_applied = [
        rid for rid, (lo, cl) in before.items() if cl is not None and (lo is None or dt.hlc(cl) > dt.hlc(lo))
    ]
    assert r.shipped == expect_shipped
    assert r.applied == len(expect_applied)
    assert r.received == len(expect_applied)  # no echo of what we pushed
    assert sorted(i for ids in synced for i in ids) == sorted(expect_applied)

    for rid, (lo, cl) in before.items():
        expected = winner(dt, lo, cl)
        got = assert_same(pair, dt, rid)
        assert got == expected, f"{rid}: LWW winner not held"
        if expected is not None and not dt.deleted(expected) and dt.blob_key(expected):
            assert_blob_resident(pair.local, dt, expected)
            assert_blob_resident(pair.cloud, dt, expected)

    # The operation itself is the latest write wherever it took effect.
    subject = dt.get(pair.local, SUBJECT)
    if op == "insert":
        assert dt.get(pair.local, NEW) is not None
        assert not dt.deleted(dt.get(pair.local, NEW))
    elif op == "update" and held_before_op is not None:
        assert subject == dt.get(side, SUBJECT)
        assert not dt.deleted(subject)
    elif op == "soft-delete" and held_before_op is not None:
        assert subject is not None and dt.deleted(subject)
    if subject is not None and dt.deleted(subject):
        # Soft deletes never remove blobs: whatever was held is still held.
        for node, key in blobs_before:
            s = pair.local if node == "local" else pair.cloud
            assert s.has_blob(key), f"{node} lost blob {key} of a soft-deleted item"

    assert_converged_round(pair, dt.channel)
