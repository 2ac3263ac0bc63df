"""S6 pagination: 2,001 items with page_limit 1000 land exactly once over several rounds (PROTOCOL §4, §5, §9).

Both directions, SR / AR / AW, items of several nodes (some first written on
a third node and carried), a small scan page, and a blob failure mid-run
that clears.
"""

from __future__ import annotations

import pytest

from starkeep_sync import RecordResidency
from tests.harness import FlakyStorage
from tests.scenarios.support import (
    AR,
    AW,
    BLOB_TYPES,
    DATA_TYPES,
    SR,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_each_returned_once,
    assert_sides_equal,
    echoed,
    synced_ids,
)

types = pytest.mark.parametrize("dt", DATA_TYPES, ids=str)

# In process: 2,001 items in pages of 1,000. Over HTTP every blob is two real
# requests, so the same shape (two full pages and one more item, a scan page
# a tenth of the page) runs at a tenth of the size: 201 items in pages of 100.
N = 2001
PAGING = {"page_limit": 1000, "scan_page_size": 100}


@pytest.fixture(autouse=True)
def _scale(pair) -> None:
    global N, PAGING
    divisor = getattr(pair, "scale_divisor", 1)
    N = 2 * (1000 // divisor) + 1
    PAGING = {"page_limit": 1000 // divisor, "scan_page_size": max(1, 100 // divisor)}


def page() -> int:
    return PAGING["page_limit"]


def populate(side, dt: DataType, prefix: str, third_node: str, n: int | None = None) -> list[str]:
    """``n`` items on ``side``; every third one first written on ``third_node`` and carried here."""
    third = side.node_clock(third_node)
    ids = []
    for i in range(N if n is None else n):
        rid = f"{prefix}{i:05d}"
        dt.insert(side, rid, rid, clock=third if i % 3 == 0 else None)
        ids.append(rid)
    return ids


def assert_all_landed(pair, dt: DataType, expected: int) -> None:
    items = assert_sides_equal(pair, dt)
    assert len(items) == expected
    if dt.has_blobs:
        for item in items.values():
            for s in (pair.local, pair.cloud):
                assert s.residency(item) == RecordResidency.RESIDENT


@types
def test_S6_001_pagination_push(pair, dt: DataType):
    populate(pair.local, dt, "l", "nodeX")

    results = pair.sync_until_done(dt.channel, **PAGING)

    assert [r.shipped for r in results] == [page(), page(), 1]
    assert [r.has_more for r in results] == [True, True, False]  # exact: no trailing empty round
    assert sum(r.applied for r in results) == 0
    assert sum(r.received for r in results) == 0
    assert echoed(pair, dt.channel) == []
    assert_all_landed(pair, dt, N)
    assert_converged_round(pair, dt.channel, **PAGING)


@types
def test_S6_002_pagination_pull(pair, dt: DataType):
    ids = populate(pair.cloud, dt, "c", "nodeY")
    synced = synced_ids(pair, dt.channel, **PAGING)

    results = pair.sync_until_done(dt.channel, **PAGING)

    assert [r.applied for r in results] == [page(), page(), 1]
    assert [r.received for r in results] == [page(), page(), 1]
    assert [r.has_more for r in results] == [True, True, False]
    assert sum(r.shipped for r in results) == 0
    announced = [i for batch in synced for i in batch]
    assert sorted(announced) == ids  # each announced exactly once
    assert_each_returned_once(pair, dt.channel)
    assert_all_landed(pair, dt, N)
    assert_converged_round(pair, dt.channel, **PAGING)


@pytest.mark.parametrize(("dt", "order"), [
    # cloud-first is the hard case: every page cut falls below all of local's writes.
    (SR, "cloud-first"), (AR, "cloud-first"), (AW, "cloud-first"),
    (AW, "interleaved"), (AW, "local-first"),
], ids=str)
def test_S6_003_pagination_both_directions_at_once(pair, dt: DataType, order: str):
    """Both sides hold 2,001 new items from two nodes each, written in the given order in time."""
    lx, cy = pair.local.node_clock("nodeX"), pair.cloud.node_clock("nodeY")
    local_ids, cloud_ids = [f"l{i:05d}" for i in range(N)], [f"c{i:05d}" for i in range(N)]
    writes = [(pair.local, rid, lx if i % 3 == 0 else None) for i, rid in enumerate(local_ids)]
    cloud_writes = [(pair.cloud, rid, cy if i % 3 == 0 else None) for i, rid in enumerate(cloud_ids)]
    if order == "interleaved":
        writes = [w for pair_of in zip(writes, cloud_writes, strict=True) for w in pair_of]
    elif order == "cloud-first":
        writes = cloud_writes + writes
    else:
        writes = writes + cloud_writes
    for side, rid, clock in writes:
        dt.insert(side, rid, clock=clock)
    synced = synced_ids(pair, dt.channel, **PAGING)

    results = pair.sync_until_done(dt.channel, **PAGING)

    assert sum(r.shipped for r in results) == N  # each local item pushed exactly once
    assert sum(r.applied for r in results) == N  # each cloud item landed exactly once
    assert sorted(i for batch in synced for i in batch) == cloud_ids
    assert_each_returned_once(pair, dt.channel)
    # Our own writes never come back (PROTOCOL §5, rule 7a). Items of a third node that we carried can come
    # back once in a later round when a page cut fell below them: the wire cannot tell us the
    # responder has nothing else of that node there. They are no-ops (``applied`` is exact).
    assert [k for k in echoed(pair, dt.channel) if k[-1].node_id == "local"] == []
    assert results[-1].has_more is False and all(r.has_more for r in results[:-1])
    assert_all_landed(pair, dt, 2 * N)
    assert_converged_round(pair, dt.channel, **PAGING)


@pytest.mark.parametrize("failing_node", ["local", "nodeX"])
@pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)
def test_S6_004_pagination_push_with_a_mid_run_blob_failure_that_clears(pair, dt: DataType, failing_node: str):
    ids = populate(pair.local, dt, "l", "nodeX")
    # An item in the second page, of the chosen node.
    victim = next(
        rid for rid in ids[N * 7 // 10:]
        if dt.hlc(dt.get(pair.local, rid)).node_id == failing_node
    )
    key = dt.blob_key(dt.get(pair.local, victim))
    pair.remote_storage.fail_once.add(key)

    results = pair.sync_until_done(dt.channel, **PAGING)
    # The failed blob does not make the run go on (it waits for the next scheduled
    # round); everything else that fits the pages did ship.
    assert [r.failed_pushes for r in results if r.failed_pushes] == [[key]]
    assert sum(r.shipped for r in results) < N
    results += pair.sync_until_done(dt.channel, **PAGING)  # the next scheduled round

    assert sum(r.shipped for r in results) == N  # everything ships, exactly once
    assert sum(r.applied for r in results) == 0
    assert sum(r.received for r in results) == 0
    assert echoed(pair, dt.channel) == []
    assert_all_landed(pair, dt, N)
    assert_converged_round(pair, dt.channel, **PAGING)


@pytest.mark.parametrize("failing_node", ["cloud", "nodeY"])
@pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)
def test_S6_005_pagination_pull_with_a_mid_run_blob_failure_that_clears(pair, dt: DataType, failing_node: str):
    ids = populate(pair.cloud, dt, "c", "nodeY")
    victim = next(
        rid for rid in ids[N * 7 // 10:]
        if dt.hlc(dt.get(pair.cloud, rid)).node_id == failing_node
    )
    key = dt.blob_key(dt.get(pair.cloud, victim))
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_once.add(key)
    synced = synced_ids(pair, dt.channel, local_storage=flaky, **PAGING)

    results = pair.sync_until_done(dt.channel, local_storage=flaky, **PAGING)
    if pair.local.residency(dt.get(pair.local, victim)) == RecordResidency.STAGED:
        results += pair.sync_until_done(dt.channel, local_storage=flaky, **PAGING)  # next scheduled round

    assert [r.failed_pulls for r in results if r.failed_pulls] == [[key]]
    assert sum(r.applied for r in results) == N  # metadata of each item applied exactly once
    assert sorted(i for batch in synced for i in batch) == ids
    assert sum(r.shipped for r in results) == 0
    assert_all_landed(pair, dt, N)
    assert_converged_round(pair, dt.channel, local_storage=flaky, **PAGING)


@pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)
def test_S6_006_pagination_push_with_a_persistent_blob_failure_settles(pair, dt: DataType):
    """A blob that never uploads holds back its node's later items, and only those; the run
    still ends (has_more goes false) instead of re-offering the same stuck page forever."""
    ids = populate(pair.local, dt, "l", "nodeX")
    victim = next(rid for rid in ids[N * 3 // 20:] if dt.hlc(dt.get(pair.local, rid)).node_id == "local")
    stuck = dt.get(pair.local, victim)
    pair.remote_storage.fail_always.add(dt.blob_key(stuck))

    results = pair.sync_until_done(dt.channel, **PAGING)

    local = dt.all(pair.local)
    held_back = {rid for rid, item in local.items()
                 if dt.hlc(item).node_id == "local" and dt.hlc(item) >= dt.hlc(stuck)}
    cloud = dt.all(pair.cloud)
    assert set(cloud) == set(local) - held_back
    assert all(cloud[rid] == local[rid] for rid in cloud)
    assert sum(r.shipped for r in results) == N - len(held_back)
    assert pair.watermarks(dt.channel)[1]["local"] < dt.hlc(stuck)
    r = pair.sync(dt.channel, **PAGING)
    assert (r.shipped, r.has_more, r.failed_pushes) == (0, False, [dt.blob_key(stuck)])


@pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)
def test_S6_007_pagination_pull_with_a_persistent_blob_failure_settles(pair, dt: DataType):
    """A blob that never downloads stays staged; every item's metadata lands and the run ends."""
    ids = populate(pair.cloud, dt, "c", "nodeY")
    victim = next(rid for rid in ids[N * 7 // 10:] if dt.hlc(dt.get(pair.cloud, rid)).node_id == "cloud")
    stuck = dt.get(pair.cloud, victim)
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_always.add(dt.blob_key(stuck))

    results = pair.sync_until_done(dt.channel, local_storage=flaky, **PAGING)

    assert pair.local.residency(dt.get(pair.local, victim)) == RecordResidency.STAGED
    assert pair.watermarks(dt.channel)[0]["cloud"] >= dt.hlc(stuck)  # the staged set owns it, not the vector
    local = dt.all(pair.local)
    assert local == dt.all(pair.cloud)  # every item's metadata, the stuck one's included
    assert sum(r.applied for r in results) == len(local)  # nothing applied twice
    r = pair.sync(dt.channel, local_storage=flaky, **PAGING)
    assert (r.applied, r.received, r.has_more, r.staged) == (0, 0, False, 1)
    assert r.failed_pulls == [dt.blob_key(stuck)]


@pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)
def test_S6_008_pagination_pull_stuck_node_does_not_block_other_nodes(pair, dt: DataType):
    """The reference's known limitation: with a persistent pull failure early in a node's run, that
    node's later items filled every page and other nodes' items written after them never arrived.
    Metadata first and the staged set end it (PROTOCOL §5 step 5, §5c)."""
    ids = populate(pair.cloud, dt, "c", "nodeY")
    victim = next(rid for rid in ids[N * 3 // 20:] if dt.hlc(dt.get(pair.cloud, rid)).node_id == "cloud")
    stuck = dt.get(pair.cloud, victim)
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_always.add(dt.blob_key(stuck))

    results = pair.sync_until_done(dt.channel, local_storage=flaky, **PAGING)

    local, cloud = dt.all(pair.local), dt.all(pair.cloud)
    assert local == cloud
    for rid, item in local.items():
        if rid != victim:
            assert_blob_resident(pair.local, dt, item)
    assert pair.local.residency(dt.get(pair.local, victim)) == RecordResidency.STAGED
    assert results[-1].staged == 1 and results[-1].staged_failing[0].key == dt.blob_key(stuck)
