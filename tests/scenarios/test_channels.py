"""Channel split: each channel carries its own data only, in both directions (PROTOCOL §3)."""

from __future__ import annotations

from starkeep_sync import AppSyncableRowEntry, SyncExchangeRequest
from tests.scenarios.support import AR, AW, SR, as_sent, assert_converged_round, assert_same, converge

OTHER = "other"


def write_everything(pair, tag: str) -> None:
    """On both sides: a shared record, an AR row, an AW row and a row of another app."""
    for s in (pair.local, pair.cloud):
        p = f"{s.node_id}-{tag}"
        SR.insert(s, f"sr-{p}")
        AR.insert(s, f"ar-{p}")
        AW.insert(s, f"aw-{p}")
        s.write_row(f"ot-{p}", "other app", app_id=OTHER, table="items")


def held(side) -> dict[str, set[str]]:
    return {
        "SR": {r.id for r in side.all_records()},
        "AR": set(AR.all(side)),
        "AW": set(AW.all(side)),
        "OT": {r["id"] for r in side.rows("items", OTHER)},
    }


def test_channel_split_shared_records_never_cross_an_app_channel(pair):
    write_everything(pair, "t")
    results = converge(pair, "notes")

    assert sum(r.shipped for r in results) == 2 and sum(r.applied for r in results) == 2  # AR + AW
    for s in (pair.local, pair.cloud):
        h = held(s)
        assert h["SR"] == {f"sr-{s.node_id}-t"}, "a shared record crossed the per-app channel"
        assert h["OT"] == {f"ot-{s.node_id}-t"}, "another app's row crossed the notes channel"
        assert h["AR"] == {"ar-local-t", "ar-cloud-t"}
        assert h["AW"] == {"aw-local-t", "aw-cloud-t"}


def test_channel_split_app_rows_never_cross_the_drive_channel(pair):
    write_everything(pair, "t")
    results = converge(pair, "drive")

    assert sum(r.shipped for r in results) == 1 and sum(r.applied for r in results) == 1  # SR only
    for s in (pair.local, pair.cloud):
        h = held(s)
        assert h["SR"] == {"sr-local-t", "sr-cloud-t"}
        assert h["AR"] == {f"ar-{s.node_id}-t"}, "an app row crossed the Drive channel"
        assert h["AW"] == {f"aw-{s.node_id}-t"}, "an app row crossed the Drive channel"
        assert h["OT"] == {f"ot-{s.node_id}-t"}


def test_channel_split_one_app_channel_never_sees_another_apps_rows(pair):
    write_everything(pair, "t")
    converge(pair, OTHER)

    for s in (pair.local, pair.cloud):
        h = held(s)
        assert h["OT"] == {"ot-local-t", "ot-cloud-t"}
        assert h["AR"] == {f"ar-{s.node_id}-t"} and h["AW"] == {f"aw-{s.node_id}-t"}
        assert h["SR"] == {f"sr-{s.node_id}-t"}
    # The notes channel still has its whole job to do, untouched by the other app's round.
    assert pair.watermarks("notes") == ({}, {})
    converge(pair, "notes")
    converge(pair, "drive")
    for s in (pair.local, pair.cloud):
        h = held(s)
        assert all(len(ids) == 2 for ids in h.values()), h


def test_channel_split_watermarks_are_kept_per_channel(pair):
    write_everything(pair, "a")
    for channel in ("drive", "notes", OTHER):
        converge(pair, channel)
    vectors = {c: pair.watermarks(c) for c in ("drive", "notes", OTHER)}

    AW.insert(pair.cloud, "late")
    r = pair.sync("drive")
    assert (r.shipped, r.applied, r.received) == (0, 0, 0)
    r = pair.sync(OTHER)
    assert (r.shipped, r.applied, r.received) == (0, 0, 0)
    assert pair.watermarks("drive") == vectors["drive"]
    assert pair.watermarks(OTHER) == vectors[OTHER]
    r = pair.sync("notes")
    assert (r.shipped, r.applied, r.received) == (0, 1, 1)
    assert_same(pair, AW, "late")
    assert pair.watermarks("notes")[0]["cloud"] > vectors["notes"][0]["cloud"]
    for channel in ("drive", "notes", OTHER):
        assert_converged_round(pair, channel)


def test_channel_split_responder_ignores_foreign_items(pair):
    """Hand-made requests: a per-app responder ignores shared records and refuses other apps' rows
    (halting their node, PROTOCOL §6); the Drive responder ignores app rows. None of it is stored,
    none of it is covered."""
    z = pair.local.node_clock("nodeZ")
    w = pair.local.node_clock("nodeW")
    record = pair.local.write_record("sr-smuggled", text="smuggled", clock=z)
    other_row = pair.local.write_row("ot-smuggled", "x", app_id=OTHER, table="items", clock=z)
    note = pair.local.write_row("aw-legit", "fine", clock=w)

    response = pair.transport("notes").exchange(
        SyncExchangeRequest(watermarks={}, records=[record], app_syncable_rows=[as_sent(other_row), as_sent(note)],
                            limit=100)
    )
    assert pair.cloud.record("sr-smuggled") is None
    assert pair.cloud.rows("items", OTHER) == []
    assert pair.cloud.row("aw-legit") == pair.local.row("aw-legit")  # the legitimate row of another node lands
    assert "nodeZ" not in response.responder_watermarks
    assert response.responder_watermarks["nodeW"] == note.timestamp
    assert response.records == [] and response.app_syncable_rows == []

    entry = as_sent(AppSyncableRowEntry(z.now(), "notes", "notes", "insert", {"id": "aw-smuggled", "body": "x"}))
    response = pair.transport("drive").exchange(
        SyncExchangeRequest(watermarks={}, app_syncable_rows=[entry], limit=100)
    )
    assert pair.cloud.row("aw-smuggled") is None
    assert response.app_syncable_rows == [] and response.records == []
    assert response.responder_watermarks == {}
