"""S3 blob failures: failed pushes and pulls, the contiguous-prefix rule, residency (PROTOCOL §5, §7, §9)."""

from __future__ import annotations

import pytest

from starkeep_sync import RecordResidency
from starkeep_sync.core.constants import BLOB_RESIDENT
from tests.harness import FlakyStorage
from tests.scenarios.support import (
    BLOB_TYPES,
    DataType,
    assert_blob_resident,
    assert_converged_round,
    assert_same,
    echoed,
    events,
    synced_ids,
)

blob_types = pytest.mark.parametrize("dt", BLOB_TYPES, ids=str)


def key_of(dt: DataType, side, rid: str) -> str:
    key = dt.blob_key(dt.get(side, rid))
    assert key
    return key


# -- uploads -----------------------------------------------------------------------


@blob_types
def test_S3_001_upload_fails_persistently_record_never_ships(pair, dt: DataType):
    dt.insert(pair.local, "ok", "ok")
    dt.insert(pair.local, "bad", "bad")
    ok, bad = dt.get(pair.local, "ok"), dt.get(pair.local, "bad")
    pair.remote_storage.fail_always.add(key_of(dt, pair.local, "bad"))

    for _ in range(3):
        r = pair.sync(dt.channel)
        assert not r.has_more  # a failed blob waits for the next scheduled round
        assert r.failed_pushes == [dt.blob_key(bad)]
        assert dt.get(pair.cloud, "bad") is None
        own, peer = pair.watermarks(dt.channel)
        assert peer["local"] == dt.hlc(ok)  # stays behind the record that cannot ship
        assert own["local"] == dt.hlc(ok)
    assert assert_same(pair, dt, "ok") == ok
    assert not pair.cloud.has_blob(dt.blob_key(bad))


@blob_types
def test_S3_002_upload_fails_transiently_round_two_converges(pair, dt: DataType):
    dt.insert(pair.local, "flaky", "flaky")
    item = dt.get(pair.local, "flaky")
    pair.remote_storage.fail_once.add(dt.blob_key(item))

    r1 = pair.sync(dt.channel)
    assert (r1.shipped, r1.has_more, r1.failed_pushes) == (0, False, [dt.blob_key(item)])
    assert dt.get(pair.cloud, "flaky") is None
    assert "local" not in pair.watermarks(dt.channel)[1]

    r2 = pair.sync(dt.channel)
    assert (r2.shipped, r2.applied, r2.received, r2.has_more) == (1, 0, 0, False)
    assert not r2.errors
    assert assert_same(pair, dt, "flaky") == item
    assert_blob_resident(pair.cloud, dt, item)
    assert pair.watermarks(dt.channel)[1]["local"] == dt.hlc(item)
    assert_converged_round(pair, dt.channel)


# -- downloads ---------------------------------------------------------------------


@blob_types
def test_S3_003_download_fails_metadata_applied_blob_staged(pair, dt: DataType):
    dt.insert(pair.cloud, "first", "first")
    dt.insert(pair.cloud, "stuck", "stuck")
    first, stuck = dt.get(pair.cloud, "first"), dt.get(pair.cloud, "stuck")
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_always.add(dt.blob_key(stuck))
    synced = synced_ids(pair, dt.channel, local_storage=flaky)

    r = pair.sync(dt.channel, local_storage=flaky)

    assert r.applied == 2  # both metadata rows are newly here, the stuck one staged
    assert r.failed_pulls == [dt.blob_key(stuck)]
    assert not r.has_more  # a staged blob never asks for another round
    assert synced == [["first", "stuck"]]  # staged ids are announced too
    assert dt.get(pair.local, "stuck") == stuck
    assert pair.local.residency(dt.get(pair.local, "stuck")) == RecordResidency.STAGED
    assert pair.local.residency(dt.get(pair.local, "first")) == RecordResidency.RESIDENT
    assert (r.staged, [e.key for e in r.staged_failing]) == (1, [dt.blob_key(stuck)])
    own = pair.watermarks(dt.channel)[0]
    assert own["cloud"] == dt.hlc(stuck)  # metadata landed: the staged set owns the blob now
    assert dt.hlc(first) < dt.hlc(stuck)

    # Persistent: every later round fetches again from the staged set; no metadata is asked again.
    for attempt in (2, 3):
        r = pair.sync(dt.channel, local_storage=flaky)
        assert (r.applied, r.received, r.failed_pulls) == (0, 0, [dt.blob_key(stuck)])
        assert [e.attempts for e in r.staged_failing] == [attempt]
        assert pair.local.residency(dt.get(pair.local, "stuck")) == RecordResidency.STAGED
        assert pair.watermarks(dt.channel)[0]["cloud"] == dt.hlc(stuck)
    assert synced == [["first", "stuck"]]


@blob_types
def test_S3_004_download_fails_transiently_round_two_pulls_it_from_the_staged_set(pair, dt: DataType):
    dt.insert(pair.cloud, "flaky", "flaky")
    item = dt.get(pair.cloud, "flaky")
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_once.add(dt.blob_key(item))
    synced = synced_ids(pair, dt.channel, local_storage=flaky)
    resident = events(pair, dt.channel, BLOB_RESIDENT, local_storage=flaky)

    r1 = pair.sync(dt.channel, local_storage=flaky)
    assert (r1.applied, r1.failed_pulls, r1.has_more, r1.staged) == (1, [dt.blob_key(item)], False, 1)
    assert pair.local.residency(dt.get(pair.local, "flaky")) == RecordResidency.STAGED
    assert pair.watermarks(dt.channel)[0]["cloud"] == dt.hlc(item)

    r2 = pair.sync(dt.channel, local_storage=flaky)
    assert (r2.applied, r2.received, r2.has_more) == (0, 0, False)  # blob retry only: no metadata again
    assert not r2.errors
    assert (r2.resident, r2.staged) == (["flaky"], 0)
    assert_blob_resident(pair.local, dt, item)
    assert synced == [["flaky"]]  # announced once, when its metadata landed
    assert resident == [["flaky"]]
    assert_converged_round(pair, dt.channel, local_storage=flaky)


# -- contiguous prefix per node -----------------------------------------------------------


@blob_types
def test_S3_005_upload_failure_mid_run_blocks_only_that_node(pair, dt: DataType):
    x = pair.local.node_clock("nodeX")
    for i in range(1, 4):
        dt.insert(pair.local, f"L{i}", f"L{i}")
        dt.insert(pair.local, f"X{i}", f"X{i}", clock=x)
    pair.remote_storage.fail_once.add(key_of(dt, pair.local, "L2"))

    r1 = pair.sync(dt.channel)

    assert r1.shipped == 4 and r1.failed_pushes == [key_of(dt, pair.local, "L2")]
    assert not r1.has_more
    for rid in ("L1", "X1", "X2", "X3"):
        assert_same(pair, dt, rid)
    assert dt.get(pair.cloud, "L2") is None
    assert dt.get(pair.cloud, "L3") is None  # after the failure: held back though its blob is fine
    peer = pair.watermarks(dt.channel)[1]
    assert peer["local"] == dt.hlc(dt.get(pair.local, "L1"))
    assert peer["nodeX"] == dt.hlc(dt.get(pair.local, "X3"))

    r2 = pair.sync(dt.channel)
    assert (r2.shipped, r2.applied, r2.received, r2.has_more) == (2, 0, 0, False)
    for rid in ("L2", "L3"):
        assert_blob_resident(pair.cloud, dt, assert_same(pair, dt, rid))
    assert echoed(pair, dt.channel) == []
    assert_converged_round(pair, dt.channel)


@blob_types
def test_S3_006_download_failure_mid_run_blocks_only_that_node(pair, dt: DataType):
    y = pair.cloud.node_clock("nodeY")
    for i in range(1, 4):
        dt.insert(pair.cloud, f"C{i}", f"C{i}")
        dt.insert(pair.cloud, f"Y{i}", f"Y{i}", clock=y)
    flaky = FlakyStorage(pair.local.storage)
    flaky.fail_once.add(key_of(dt, pair.cloud, "C2"))

    r1 = pair.sync(dt.channel, local_storage=flaky)

    assert r1.failed_pulls == [key_of(dt, pair.cloud, "C2")]
    for rid in ("C1", "Y1", "Y2", "Y3"):
        assert_blob_resident(pair.local, dt, assert_same(pair, dt, rid))
    assert pair.local.residency(dt.get(pair.local, "C2")) == RecordResidency.STAGED
    assert_blob_resident(pair.local, dt, assert_same(pair, dt, "C3"))  # not held back by C2
    own = pair.watermarks(dt.channel)[0]
    assert own["cloud"] == dt.hlc(dt.get(pair.cloud, "C3"))
    assert own["nodeY"] == dt.hlc(dt.get(pair.cloud, "Y3"))
    assert r1.applied == 6  # every item's metadata applied in round 1

    r2 = pair.sync(dt.channel, local_storage=flaky)
    assert not r2.errors and not r2.has_more
    assert (r2.applied, r2.received, r2.resident) == (0, 0, ["C2"])
    assert_blob_resident(pair.local, dt, assert_same(pair, dt, "C2"))
    assert_converged_round(pair, dt.channel, local_storage=flaky)


# -- residency ---------------------------------------------------------------------


@blob_types
def test_S3_007_neither_side_has_the_blob_record_cannot_ship(pair, dt: DataType):
    if dt.name == "SR":
        pair.local.write_record("orphan", text="orphan", with_blob=False)
    else:
        pair.local.write_file_row("orphan", "orphan", with_blob=False)
    orphan = dt.get(pair.local, "orphan")
    assert pair.local.residency(orphan) == RecordResidency.STAGED

    for _ in range(2):
        r = pair.sync(dt.channel)
        assert (r.shipped, r.has_more) == (0, False)
        assert r.failed_pushes == [dt.blob_key(orphan)]
        assert dt.get(pair.cloud, "orphan") is None
        assert "local" not in pair.watermarks(dt.channel)[1]


@blob_types
def test_S3_007b_cloud_record_without_blob_arrives_staged(pair, dt: DataType):
    """The mirror: the cloud holds metadata whose blob it never got; local stages it."""
    if dt.name == "SR":
        pair.cloud.write_record("orphan", text="orphan", with_blob=False)
    else:
        pair.cloud.write_file_row("orphan", "orphan", with_blob=False)
    orphan = dt.get(pair.cloud, "orphan")

    r = pair.sync(dt.channel)

    assert (r.applied, r.failed_pulls, r.has_more) == (1, [dt.blob_key(orphan)], False)
    assert pair.local.residency(dt.get(pair.local, "orphan")) == RecordResidency.STAGED
    assert pair.watermarks(dt.channel)[0]["cloud"] == dt.hlc(orphan)
    assert r.staged == 1


@blob_types
def test_S3_008_both_resident_nothing_transferred(pair, dt: DataType):
    # Blob keys are content addressed: the same bytes written on both sides share one key.
    dt.insert(pair.local, "mine", "same bytes")
    dt.insert(pair.cloud, "twin-of-mine", "same bytes")
    dt.insert(pair.cloud, "theirs", "other bytes")
    dt.insert(pair.local, "twin-of-theirs", "other bytes")
    puts_before = list(pair.remote_storage.puts)

    r = pair.sync(dt.channel)

    assert (r.shipped, r.applied, r.has_more) == (2, 2, False)
    assert r.bytes_moved == 0
    assert pair.remote_storage.puts == puts_before
    for rid in ("mine", "twin-of-mine", "theirs", "twin-of-theirs"):
        item = assert_same(pair, dt, rid)
        assert_blob_resident(pair.local, dt, item)
        assert_blob_resident(pair.cloud, dt, item)
    assert_converged_round(pair, dt.channel)


@pytest.mark.parametrize("origin", ["L", "C"])
@blob_types
def test_S3_009_absent_to_resident_in_one_round(pair, dt: DataType, origin: str):
    writer, reader = (pair.local, pair.cloud) if origin == "L" else (pair.cloud, pair.local)
    dt.insert(writer, "new", "new")
    item = dt.get(writer, "new")
    assert reader.residency(dt.get(reader, "new")) == RecordResidency.ABSENT
    assert writer.residency(item) == RecordResidency.RESIDENT

    r = pair.sync(dt.channel)

    assert not r.errors and not r.has_more
    assert reader.residency(dt.get(reader, "new")) == RecordResidency.RESIDENT
    assert r.bytes_moved == item_size(dt, item)
    assert_converged_round(pair, dt.channel)


def item_size(dt: DataType, item) -> int:
    return item.size_bytes if dt.name == "SR" else int(item["size_bytes"])
